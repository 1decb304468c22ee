"""``edge-export``: turn training checkpoints into ONNX files and model packs.

    edge-export onnx CKPT --out FILE.onnx          # one stage, through the parity gate
    edge-export pack CKPT... --out DIR --training-data DATA.json [--validation VAL.json]
    edge-export engines --cache DIR [--pack DIR] [--precision fp16]  # TensorRT, on the GPU box
    edge-export quantize PACK --out DIR --precision int8|fp16  # gated on the FP32 verdicts
    edge-export keygen --out DIR                   # Ed25519 key pair for signing packs
    edge-export sign PACK --key DIR/pack-signing.key  # writes PACK/signature.json
    edge-export build --recipe R.toml --data DIR --labels CSV --out PACK [--preset short|full]
                      [--resume]                 # train, evaluate and package (docs/recipes.md)

Both commands refuse (exit status 1, message on stderr) when the ONNX file does not match the
torch model within the tolerance (``--atol``, ``--rtol``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# export.onnx imports torch: it is imported inside the commands that need it, so that
# `edge-export engines` runs on a GPU box that has the worker's packages only.


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("onnx", "pack"):
        cmd = sub.add_parser(name, help=f"export {'one checkpoint' if name == 'onnx' else 'a pack'}")
        cmd.add_argument("checkpoints", nargs="+" if name == "pack" else 1, type=Path,
                         metavar="CKPT", help="checkpoint(s) written by models.train")
        cmd.add_argument("--out", type=Path, required=True,
                         help="ONNX file" if name == "onnx" else "pack folder")
        cmd.add_argument("--atol", type=float, help="parity gate absolute tolerance (default 1e-4)")
        cmd.add_argument("--rtol", type=float, help="parity gate relative tolerance (default 1e-4)")
    pack = sub.choices["pack"]
    pack.add_argument("--name", default="ankle-demo")
    pack.add_argument("--version", default="1.0.0")
    pack.add_argument("--description", default="Ankle AP/LAT quality pipeline.")
    pack.add_argument("--training-data", type=Path, required=True,
                      help="JSON object for the manifest's training_data (kind, description...)")
    pack.add_argument("--validation", type=Path, help="JSON object for the manifest's validation")
    pack.add_argument("--clinical", action="store_true",
                      help="omit the not-for-clinical-use flag (refused for synthetic data)")
    seal = sub.add_parser("seal", help="record the sha256 of a pack's checked manifest")
    seal.add_argument("pack", type=Path, help="pack folder whose manifest.json you checked")
    upgrade = sub.add_parser("upgrade", help="rewrite a version-1 pack's manifest as version 2")
    upgrade.add_argument("pack", type=Path, help="pack folder with a version-1 manifest.json")
    from export.build.command import add_parser as add_build
    from export.engines import add_parser
    from export.quantize import add_parser as add_quantize
    from export.sign import add_parser as add_sign

    add_parser(sub)
    add_quantize(sub)
    add_sign(sub)
    add_build(sub)
    return parser


def _tolerances(args: argparse.Namespace) -> tuple[float, float]:
    from export.onnx import ATOL, RTOL

    return (ATOL if args.atol is None else args.atol, RTOL if args.rtol is None else args.rtol)


def _onnx(args: argparse.Namespace) -> None:
    from export.onnx import OPSET, export_stage

    ckpt: Path = args.checkpoints[0]
    stage, errors = export_stage(ckpt, args.out.parent, *_tolerances(args))
    if stage.onnx_path.resolve() != args.out.resolve():
        stage.onnx_path.replace(args.out)
    print(f"{args.out}: opset {OPSET}, parity max abs error {errors}")


def _pack(args: argparse.Namespace) -> None:
    from export.onnx import ExportError, export_stage
    from export.pack import write_pack

    training = json.loads(args.training_data.read_text())
    validation = json.loads(args.validation.read_text()) if args.validation else {}
    if args.clinical and training.get("kind") == "synthetic-phantom":
        raise ExportError("a pack trained on synthetic phantoms is never for clinical use")
    stages = []
    for ckpt in args.checkpoints:
        stage, errors = export_stage(ckpt, args.out, *_tolerances(args))
        print(f"{stage.name}: parity max abs error {errors}")
        stages.append(stage)
    manifest = write_pack(args.out, stages, name=args.name, version=args.version,
                          description=args.description, training_data=training,
                          validation=validation, not_for_clinical_use=not args.clinical)
    print(f"wrote {manifest}")


def _seal(folder: Path) -> int:
    """Seal an edited manifest after a person checked it; the networks must still verify."""
    from edge_worker.errors import PackError
    from edge_worker.packs.pack import load_pack, seal_manifest

    if not (folder / "manifest.json").is_file():
        print(f"edge-export: no manifest.json in {folder}", file=sys.stderr)
        return 1
    digest = seal_manifest(folder)
    try:
        pack = load_pack(folder)
    except PackError as exc:
        print(f"edge-export: sealed, but the pack does not load: {exc}", file=sys.stderr)
        return 1
    print(f"{folder}: manifest sha256 {digest}; pack {pack.name} {pack.version} digest {pack.digest}")
    return 0


def _upgrade(folder: Path) -> int:
    """Rewrite a verified version-1 manifest as version 2 (same decisions), sealed."""
    from edge_worker.errors import PackError
    from edge_worker.packs.pack import SCHEMA, load_pack, seal_manifest
    from edge_worker.packs.pack_v1 import SCHEMA_V1, upgrade_manifest

    try:
        before = load_pack(folder)  # the version-1 pack must verify first (seal, every file)
    except PackError as exc:
        print(f"edge-export: {exc}", file=sys.stderr)
        return 1
    if before.schema != SCHEMA_V1:
        print(f"edge-export: {folder} is already {before.schema}; nothing to do")
        return 0
    path = folder / "manifest.json"
    raw = json.loads(path.read_text(encoding="utf-8"))
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(upgrade_manifest(raw), indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    seal_manifest(folder)
    after = load_pack(folder)
    print(f"{folder}: {SCHEMA_V1} -> {SCHEMA}; {len(after.stages)} stages, digest {after.digest}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``edge-export`` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "engines":
        from export.engines import run

        return run(args)
    if args.command == "quantize":
        from export.quantize import run as quantize

        return quantize(args)
    if args.command in ("keygen", "sign"):
        from export.sign import run_keygen, run_sign

        return run_keygen(args) if args.command == "keygen" else run_sign(args)
    if args.command == "build":
        from export.build.command import run as build

        return build(args)
    if args.command == "seal":
        return _seal(args.pack)
    if args.command == "upgrade":
        return _upgrade(args.pack)
    from export.onnx import ExportError

    try:
        _onnx(args) if args.command == "onnx" else _pack(args)
    except (ExportError, FileNotFoundError, json.JSONDecodeError) as exc:
        print(f"edge-export: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
