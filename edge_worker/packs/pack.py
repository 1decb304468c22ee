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
from edge_worker.packs.pack_v1 import SCHEMA_V1, upgrade_manifest
from edge_worker.pipeline.preprocess import resize_mode

SCHEMA = "edge-worker/model-pack@2"
#: Keys every stage may have; each task adds its own (``KEYS`` of its module).
COMMON_KEYS = frozenset({"name", "task", "when", "reads", "file", "sha256", "input", "outputs",
                         "thresholds", "architecture", "opset", "applies_to_view",
                         "research_only", "training_data"})
NETWORK_KEYS = frozenset({"file", "sha256", "input", "outputs"})
#: What ``reads`` may name, by key: an image, or an earlier stage's result.
READS_IMAGE = ("working", "upright")
DEMO_PACK_NAME = "ankle-demo"
#: The file beside ``manifest.json`` that holds its sha256 (``sha256sum`` format).
MANIFEST_SEAL = "manifest.sha256"
#: The file that holds the pack's signature (edge_worker.packs.signing); it signs the digest, so it
#: is left out of the digest like the seal.
SIGNATURE_FILE = "signature.json"


@dataclass(frozen=True)
class InputSpec:
    """How to prepare the image for one network (see ``edge_worker.pipeline.preprocess.to_tensor``)."""

    name: str
    height: int
    width: int
    channels: int
    mean: float
    std: float
    #: Slices of a 3-D input (a tiled_volume stage's tile); 0 for a 2-D image.
    depth: int = 0
    #: How the image is laid out in the input (``preprocess.RESIZE_MODES``): ``stretch`` (the
    #: whole input, aspect ratio not kept) or ``pad`` (aspect ratio kept, zeros around).
    resize: str = "stretch"


@dataclass(frozen=True)
class StageSpec:
    """One stage of the pack: its task, what it reads, when it runs, and its network if any."""

    name: str
    task: str
    #: The one view label the stage is limited to (``when`` on the view stage), else ``None``.
    applies_to_view: str | None
    file: Path | None
    sha256: str
    input: InputSpec | None
    outputs: dict[str, str]
    labels: tuple[str, ...] = ()
    thresholds: dict[str, float] = field(default_factory=dict)
    architecture: str = ""
    #: What the stage is to the verdict: ``orientation``, ``view``, ``roi``, ``quality``, or
    #: its task's name (``classify``, ``segment``, ``rules``, ``heatmap``).
    role: str = ""
    reads: dict[str, str] = field(default_factory=dict)
    #: ``{earlier single-label classify stage: labels}``: the stage runs only for those labels.
    when: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: The task's own, checked options (labels, classes, rules, ...).
    options: dict[str, Any] = field(default_factory=dict)
    #: A research stage (manifest ``research_only: true``): its result is published marked
    #: "research only, not a diagnosis" and its reasons never reach the decision.
    research_only: bool = False
    #: What this stage alone was trained on, when it differs from the pack's (``kind`` first).
    training_data: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.role:  # a hand-built spec in the version-1 vocabulary
            object.__setattr__(self, "role", self.task)
        if self.applies_to_view is not None and not self.when:
            object.__setattr__(self, "when", {"view": (self.applies_to_view,)})

    def threshold(self, key: str, default: float) -> float:
        """A threshold from the manifest, or ``default`` when the pack does not set it."""
        return float(self.thresholds.get(key, default))

    def runs_for(self, labels: dict[str, str]) -> bool:
        """Whether the stage is due for an image whose classifiers said ``labels``."""
        return all(labels.get(stage) in allowed for stage, allowed in self.when.items())


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
    #: The single-label classify stage whose label is the image's view.
    view_stage: str = "view"
    #: The stages whose results can make an image ``ok`` (``decision.judged_by``).
    judged_by: tuple[str, ...] = ()
    #: The manifest's schema as written (a version-1 pack is read through pack_v1).
    schema: str = SCHEMA

    def stage(self, role: str, view: str | None = None) -> StageSpec | None:
        """The first stage in the ``role`` (see :attr:`StageSpec.role`) due for ``view``."""
        for spec in self.stages:
            if spec.role != role:
                continue
            allowed = spec.when.get(self.view_stage)
            if allowed is None or view in allowed:
                return spec
        return None

    @property
    def networks(self) -> tuple[StageSpec, ...]:
        """The stages that run an ONNX file (the ones a backend loads)."""
        return tuple(s for s in self.stages if s.input is not None)

    @property
    def judges_radiographs(self) -> bool:
        """False for a volume pack: one with a tiled_volume stage and no view stage."""
        return any(s.name == self.view_stage for s in self.stages)

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


def _is_volume_pack(root: Path) -> bool:
    """Whether ``root``'s manifest has a tiled_volume stage (read unverified: only to sort)."""
    try:
        raw = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False  # load_pack says why, when the pack is loaded
    stages = raw.get("stages") if isinstance(raw, dict) else None
    return isinstance(stages, list) and any(
        isinstance(s, dict) and s.get("task") == "tiled_volume" for s in stages
    )


def bundled_pack_dirs() -> list[Path]:
    """The radiograph packs shipped under ``models/packs`` other than the demo pack, by name.

    Volume packs (``mri-demo``: a tiled_volume stage) are left out: they judge MR series, and
    only where ``[series] pack`` names one."""
    root = default_pack_dir().parent
    return sorted(
        d for d in root.iterdir() if d.name != DEMO_PACK_NAME and (d / "manifest.json").is_file()
        and not _is_volume_pack(d)
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
            depth=int(raw.get("depth", 0)),
            resize=_resize(raw, where),
        )
    except (TypeError, ValueError) as exc:
        raise PackError(f"{where}: bad input spec: {exc}") from exc


def _resize(raw: dict[str, Any], where: str) -> str:
    try:
        return resize_mode(raw.get("resize", "stretch"))
    except ValueError as exc:
        raise PackError(f"{where}: input.resize: {exc}") from None


def _verified_file(root: Path, raw: dict[str, Any], where: str) -> tuple[Path, str]:
    file = root / str(_require(raw, "file", where))
    if not file.is_file():
        raise PackError(f"{where}: file {file.name} is missing from {root}")
    expected = str(_require(raw, "sha256", where)).lower()
    actual = sha256_file(file)
    if actual != expected:
        raise PackError(
            f"{where}: sha256 mismatch for {file.name}: manifest says {expected}, file is {actual}; "
            "the pack is corrupt or was modified - rebuild it with edge-export"
        )
    return file, actual


def _when(raw: Any, where: str, earlier: dict[str, StageSpec]) -> dict[str, tuple[str, ...]]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise PackError(f"{where}: when: must be an object {{stage: [labels]}}")
    out = {}
    for stage, labels in raw.items():
        source = earlier.get(stage)
        if source is None or source.task != "classify" or source.options.get("multi_label"):
            raise PackError(
                f"{where}: when: '{stage}' is not an earlier single-label classify stage "
                f"(earlier stages: {', '.join(earlier) or 'none'})"
            )
        wanted = (labels,) if isinstance(labels, str) else labels
        if not isinstance(wanted, (list, tuple)) or not wanted:
            raise PackError(f"{where}: when.{stage}: must be a label or a list of labels")
        unknown = [x for x in wanted if x not in source.labels]
        if unknown:
            raise PackError(f"{where}: when.{stage}: {unknown} are not labels of '{stage}' "
                            f"{list(source.labels)}")  # fmt: skip
        out[str(stage)] = tuple(str(x) for x in wanted)
    return out


def _reads(raw: Any, where: str, network: bool) -> dict[str, str]:
    reads = raw if raw is not None else ({"image": "upright"} if network else {})
    if not isinstance(reads, dict) or not all(isinstance(v, str) for v in reads.values()):
        raise PackError(f"{where}: reads: must be an object of names")
    if network and reads.get("image", "upright") not in READS_IMAGE:
        raise PackError(f"{where}: reads.image: must be one of {', '.join(READS_IMAGE)}, "
                        f"got {reads.get('image')!r}")  # fmt: skip
    if network:
        reads = {"image": "upright", **reads}
    return dict(reads)


def _stage_spec(
    root: Path, raw: Any, index: int, earlier: dict[str, StageSpec], view_stage: str
) -> StageSpec:
    from edge_worker.pipeline.tasks import TASKS

    where = f"manifest stage #{index}"
    if not isinstance(raw, dict):
        raise PackError(f"{where}: must be an object")
    name = str(_require(raw, "name", where))
    where = f"manifest stage '{name}'"
    task = str(_require(raw, "task", where))
    module = TASKS.get(task)
    if module is None:
        raise PackError(f"{where}: task: unknown task '{task}' (expected one of {', '.join(TASKS)})")
    unknown = set(raw) - COMMON_KEYS - module.KEYS
    if unknown:
        raise PackError(f"{where}: unknown key(s) {sorted(unknown)} for a {task} stage")
    network = bool(module.NETWORK)
    file: Path | None = None
    sha = ""
    if network or "file" in raw:
        file, sha = _verified_file(root, raw, where)
    reads = _reads(raw.get("reads"), where, network)
    checked = {**raw, "reads": reads, "file_path": file}
    options = module.parse(checked, where, earlier)
    when = _when(raw.get("when"), where, earlier)
    single = when.get(view_stage)
    outputs = _require(raw, "outputs", where) if network else raw.get("outputs", {})
    if isinstance(outputs, list):  # a tiled_volume stage names its output columns, in order
        outputs = {str(n): f"column {i}" for i, n in enumerate(outputs)}
    research_only = raw.get("research_only", False)
    if not isinstance(research_only, bool):
        raise PackError(f"{where}: research_only: must be true or false")
    if research_only and name == view_stage:
        raise PackError(f"{where}: research_only: the view stage routes every image; it cannot "
                        "be a research stage")  # fmt: skip
    training_data = raw.get("training_data", {})
    if not isinstance(training_data, dict) or (training_data and not isinstance(
            training_data.get("kind"), str)):  # fmt: skip
        raise PackError(f"{where}: training_data: must be an object with a 'kind' string")
    return StageSpec(
        name=name,
        task=task,
        applies_to_view=single[0] if single is not None and len(single) == 1 else None,
        file=file,
        sha256=sha,
        input=_input_spec(_require(raw, "input", where), where) if network else None,
        outputs={str(k): str(v) for k, v in outputs.items()},
        labels=tuple(options.get("labels", ())),
        thresholds={str(k): float(v) for k, v in raw.get("thresholds", {}).items()},
        architecture=str(raw.get("architecture", "")),
        role=module.role(options, name == view_stage),
        reads=reads,
        when=when,
        options=options,
        research_only=research_only,
        training_data=dict(training_data),
    )


def _stages(root: Path, raw: dict[str, Any], view_stage: str) -> tuple[StageSpec, ...]:
    """Every stage, each checked against those before it (what it reads must exist by then)."""
    entries = _require(raw, "stages", "manifest")
    if not isinstance(entries, list):
        raise PackError("manifest: 'stages' must be a list")
    earlier: dict[str, StageSpec] = {}
    for i, entry in enumerate(entries):
        spec = _stage_spec(root, entry, i, earlier, view_stage)
        if spec.name in earlier:
            raise PackError(f"manifest stage '{spec.name}': name: used by an earlier stage too")
        earlier[spec.name] = spec
    return tuple(earlier.values())


def _judged_by(raw: dict[str, Any], stages: tuple[StageSpec, ...]) -> tuple[str, ...]:
    decision = raw.get("decision", {})
    if not isinstance(decision, dict) or set(decision) - {"judged_by"}:
        raise PackError("manifest: decision: must be {\"judged_by\": [stage names]}")
    names = decision.get("judged_by", [])
    if not isinstance(names, list):
        raise PackError("manifest: decision.judged_by: must be a list of stage names")
    judging = {s.name: s for s in stages if s.task in ("regress", "rules")}
    for name in names:
        if name in judging and judging[name].research_only:
            raise PackError(f"manifest: decision.judged_by: '{name}' is research-only; a "
                            "research stage never makes an image ok")  # fmt: skip
        if name not in judging:
            raise PackError(
                f"manifest: decision.judged_by: '{name}' is not a regress or rules stage of the "
                f"pack ({', '.join(judging) or 'it has none'})"
            )
    return tuple(str(n) for n in names)


def load_pack(root: Path | None = None) -> Pack:
    """Read ``root/manifest.json``, verify every file's sha256 and return the :class:`Pack`.

    ``None`` loads the demo pack.  Raises :class:`PackError` with the reason on any problem.
    A pack needs a view stage, except a volume pack (a ``tiled_volume`` stage, for MR series).
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
    if schema == SCHEMA_V1:
        raw = upgrade_manifest(raw)
    elif schema != SCHEMA:
        raise PackError(
            f"{manifest_path}: schema is {schema!r}, this worker reads {SCHEMA!r} (and "
            f"{SCHEMA_V1!r} through its adapter; `edge-export upgrade PACK` rewrites one)"
        )
    view_stage = str(raw.get("view_stage", "view"))
    stages = _stages(root, raw, view_stage)
    view = next((s for s in stages if s.name == view_stage), None)
    volume_only = view is None and any(s.task == "tiled_volume" for s in stages)
    if not volume_only and (view is None or view.task != "classify" or view.options.get("multi_label")):
        raise PackError(f"{manifest_path}: view_stage: '{view_stage}' is not a single-label "
                        "classify stage of the pack")  # fmt: skip
    known = {"manifest.json": manifest_sha}
    known.update({s.file.relative_to(root).as_posix(): s.sha256 for s in stages if s.file})
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
        view_stage=view_stage,
        judged_by=_judged_by(raw, stages),
        schema=str(schema),
    )
