"""Read and verify a model pack: the one contract with the ML side (docs/model-pack.md).

Loading a pack checks the manifest's own sha256 (``manifest.sha256``, written by the export
tool: an edited threshold changes decisions, so an edited manifest is refused like an edited
network), the manifest's shape and every file's sha256 before any model is created; a
mismatch raises :class:`PackError` naming the file.  A loaded pack has a :attr:`Pack.digest`
over the manifest and every file of the folder: its identity in every verdict, which follows
content, never the name and version alone.  The default pack is the demo pack shipped under
``models/packs/ankle-demo``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_worker.errors import PackError

SCHEMA = "edge-worker/model-pack@1"
TASKS = ("view", "roi", "quality", "orientation")
DEMO_PACK_NAME = "ankle-demo"
#: The file beside ``manifest.json`` that holds its sha256 (``sha256sum`` format).
MANIFEST_SEAL = "manifest.sha256"
#: The file that holds the pack's signature (edge_worker.signing); it signs the digest, so it
#: is left out of the digest like the seal.
SIGNATURE_FILE = "signature.json"


@dataclass(frozen=True)
class InputSpec:
    """How to prepare the image for one network (see ``edge_worker.preprocess.to_tensor``)."""

    name: str
    height: int
    width: int
    channels: int
    mean: float
    std: float


@dataclass(frozen=True)
class StageSpec:
    """One network of the pack and what its outputs mean."""

    name: str
    task: str
    applies_to_view: str | None
    file: Path
    sha256: str
    input: InputSpec
    outputs: dict[str, str]
    labels: tuple[str, ...] = ()
    thresholds: dict[str, float] = field(default_factory=dict)
    architecture: str = ""

    def threshold(self, key: str, default: float) -> float:
        """A threshold from the manifest, or ``default`` when the pack does not set it."""
        return float(self.thresholds.get(key, default))


@dataclass(frozen=True)
class Pack:
    """A verified model pack."""

    root: Path
    name: str
    version: str
    body_parts: tuple[str, ...]
    not_for_clinical_use: bool
    training_data: dict[str, Any]
    validation: dict[str, Any]
    stages: tuple[StageSpec, ...]
    #: sha256 over the manifest and every file of the pack folder (:func:`pack_digest`).
    digest: str = ""

    def stage(self, task: str, view: str | None = None) -> StageSpec | None:
        """The stage for ``task`` that applies to ``view`` (or to every view), if any."""
        for spec in self.stages:
            if spec.task == task and spec.applies_to_view in (None, view):
                return spec
        return None

    @property
    def synthetic(self) -> bool:
        """True when the pack was trained on synthetic phantoms."""
        return str(self.training_data.get("kind", "")).startswith("synthetic")

    def describe(self) -> dict[str, Any]:
        """The pack facts every verdict carries."""
        return {
            "name": self.name,
            "version": self.version,
            "not_for_clinical_use": self.not_for_clinical_use,
            "training_data": str(self.training_data.get("kind", "unknown")),
            "digest": self.digest,
        }


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def seal_manifest(root: Path) -> str:
    """Write ``manifest.sha256`` for ``root/manifest.json``; returns the digest.

    The export tool calls this after every manifest it writes; by hand, only after checking
    what changed (``edge-export seal``).
    """
    digest = sha256_file(root / "manifest.json")
    tmp = root / (MANIFEST_SEAL + ".tmp")
    tmp.write_text(f"{digest}  manifest.json\n", encoding="ascii")
    tmp.replace(root / MANIFEST_SEAL)
    return digest


def _check_seal(root: Path) -> str:
    """The manifest's sha256, checked against ``manifest.sha256``; :class:`PackError` if not."""
    seal_path = root / MANIFEST_SEAL
    actual = sha256_file(root / "manifest.json")
    try:
        expected = seal_path.read_text(encoding="ascii").split()[0].lower()
    except (OSError, UnicodeDecodeError, IndexError):
        raise PackError(
            f"{root}: no readable {MANIFEST_SEAL}: the manifest is not sealed, so an edit to it "
            "(a threshold, a label) could not be detected; rebuild the pack with edge-export, or "
            "check the manifest and run `edge-export seal PACK`"
        ) from None
    if actual != expected:
        raise PackError(
            f"{root}: sha256 mismatch for manifest.json: {MANIFEST_SEAL} says {expected}, file is "
            f"{actual}; the manifest was edited after the pack was built (an edited threshold "
            "changes decisions) - rebuild the pack, or check the change and run `edge-export seal PACK`"
        )
    return actual


def pack_digest(root: Path, known: dict[str, str]) -> str:
    """sha256 over every file of the pack folder: ``name sha256`` lines in name order.

    ``known`` maps file names already hashed (the verified networks, the manifest) to their
    sha256, so no file is read twice.  Hidden files and the seal itself are left out.
    """
    lines = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel in (MANIFEST_SEAL, SIGNATURE_FILE) or rel.endswith(".tmp") or any(
            part.startswith(".") or part == "__pycache__" for part in rel.split("/")
        ):
            continue
        lines.append(f"{rel} {known.get(rel) or sha256_file(path)}\n")
    return hashlib.sha256("".join(lines).encode("utf-8")).hexdigest()


def default_pack_dir() -> Path:
    """The demo pack shipped with the distribution (``models/packs/ankle-demo``)."""
    spec = importlib.util.find_spec("models")
    if spec is None or not spec.submodule_search_locations:
        raise PackError("the demo pack is not installed (package 'models' not found); pass --pack")
    return Path(list(spec.submodule_search_locations)[0]) / "packs" / DEMO_PACK_NAME


def bundled_pack_dirs() -> list[Path]:
    """The packs shipped under ``models/packs`` other than the demo pack, by name."""
    root = default_pack_dir().parent
    return sorted(
        d for d in root.iterdir() if d.name != DEMO_PACK_NAME and (d / "manifest.json").is_file()
    )


def _require(obj: dict[str, Any], key: str, where: str) -> Any:
    if key not in obj:
        raise PackError(f"{where}: missing key '{key}'")
    return obj[key]


def _input_spec(raw: dict[str, Any], where: str) -> InputSpec:
    try:
        return InputSpec(
            name=str(raw.get("name", "image")),
            height=int(_require(raw, "height", where)),
            width=int(_require(raw, "width", where)),
            channels=int(_require(raw, "channels", where)),
            mean=float(raw.get("mean", 0.0)),
            std=float(raw.get("std", 1.0)),
        )
    except (TypeError, ValueError) as exc:
        raise PackError(f"{where}: bad input spec: {exc}") from exc


def _stage_spec(root: Path, raw: dict[str, Any], index: int) -> StageSpec:
    where = f"manifest stage #{index}"
    name = str(_require(raw, "name", where))
    where = f"manifest stage '{name}'"
    task = str(_require(raw, "task", where))
    if task not in TASKS:
        raise PackError(f"{where}: unknown task '{task}' (expected one of {', '.join(TASKS)})")
    file = root / str(_require(raw, "file", where))
    if not file.is_file():
        raise PackError(f"{where}: model file {file.name} is missing from {root}")
    expected = str(_require(raw, "sha256", where)).lower()
    actual = sha256_file(file)
    if actual != expected:
        raise PackError(
            f"{where}: sha256 mismatch for {file.name}: manifest says {expected}, file is {actual}; "
            "the pack is corrupt or was modified - rebuild it with edge-export"
        )
    labels = tuple(str(x) for x in raw.get("labels", ()))
    if task == "view" and len(labels) < 2:
        raise PackError(f"{where}: a view stage needs at least two labels")
    return StageSpec(
        name=name,
        task=task,
        applies_to_view=raw.get("applies_to_view"),
        file=file,
        sha256=actual,
        input=_input_spec(_require(raw, "input", where), where),
        outputs={str(k): str(v) for k, v in _require(raw, "outputs", where).items()},
        labels=labels,
        thresholds={str(k): float(v) for k, v in raw.get("thresholds", {}).items()},
        architecture=str(raw.get("architecture", "")),
    )


def load_pack(root: Path | None = None) -> Pack:
    """Read ``root/manifest.json``, verify every file's sha256 and return the :class:`Pack`.

    ``None`` loads the demo pack.  Raises :class:`PackError` with the reason on any problem.
    """
    root = Path(root) if root is not None else default_pack_dir()
    manifest_path = root / "manifest.json"
    if not manifest_path.is_file():
        raise PackError(f"no manifest.json in {root}: not a model pack")
    manifest_sha = _check_seal(root)
    try:
        raw = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise PackError(f"{manifest_path}: unreadable manifest: {exc}") from exc
    if not isinstance(raw, dict):
        raise PackError(f"{manifest_path}: the manifest must be a JSON object")
    schema = raw.get("schema")
    if schema != SCHEMA:
        raise PackError(f"{manifest_path}: schema is {schema!r}, this worker reads {SCHEMA!r}")
    stages = tuple(
        _stage_spec(root, stage, i) for i, stage in enumerate(_require(raw, "stages", "manifest"))
    )
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise PackError(f"{manifest_path}: duplicate stage names in {names}")
    if not any(s.task == "view" for s in stages):
        raise PackError(f"{manifest_path}: a pack needs a view stage")
    known = {"manifest.json": manifest_sha}
    known.update({s.file.relative_to(root).as_posix(): s.sha256 for s in stages})
    return Pack(
        root=root,
        name=str(_require(raw, "name", "manifest")),
        version=str(_require(raw, "version", "manifest")),
        body_parts=tuple(str(b).upper() for b in raw.get("body_parts", ())),
        not_for_clinical_use=bool(raw.get("not_for_clinical_use", True)),
        training_data=dict(raw.get("training_data", {})),
        validation=dict(raw.get("validation", {})),
        stages=stages,
        digest=pack_digest(root, known),
    )
