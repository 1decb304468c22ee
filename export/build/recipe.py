"""A training recipe: a small TOML file that says what pack to build and how (docs/recipes.md).

The file is strict: an unknown table or key is refused with its dotted path named, so a typo
never silently falls back to a default.  Every stage gets the papers' hyper-parameters
(:data:`PAPER`) unless the recipe overrides them, first for every preset, then per preset
(``[stages.presets.short]``); the chosen preset's values win.  A ``segment`` stage names its
classes (the mask files' pixel values); a ``rules`` stage carries its rules as tables, checked
here by the worker's own :func:`edge_worker.pipeline.measures.parse_rules`.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

#: Tasks a build stage may train (``docs/recipes.md``): the ankle-style chain, segmentation
#: with named classes from mask files, rules measured on a segmentation (paper 001), and
#: paper 004's research-only extras (:mod:`export.build.extras`): a finding classifier with
#: its heatmap, trained on the labels' ``finding`` column, and a bone suppressor trained on
#: synthetic chest phantoms.
TASKS = ("view", "roi", "quality", "orientation", "segment", "rules", "finding",
         "bone_suppression")
#: Tasks trained by their own recipe (:mod:`export.build.extras`), not by ``models.train``.
EXTRA_TASKS = ("finding", "bone_suppression")
#: Tasks with no network of their own.
NO_NETWORK = ("rules",)
PRESETS = ("short", "full")


@dataclass(frozen=True)
class Hyper:
    """How one stage trains: input size, batch, steps, optimiser rate, network width."""

    height: int
    width: int
    batch: int
    steps: int
    #: ``None``: the paper's learning rate and optimiser for the task (``models.train.optimizer``).
    lr: float | None = None
    #: Network width multiplier (1.0 = the paper's EfficientNet-B0 / ResNet-50).
    net_width: float = 1.0
    #: How the image is laid out in the input (the manifest's ``input.resize``): ``pad`` keeps
    #: the aspect ratio with zeros around (ankle paper, section 5), ``stretch`` resizes.
    resize: str = "stretch"


#: The papers' recipes.  Ankle paper (000) section 5: EfficientNet-B0 224 x 224 for view (SGD
#: 1e-3, batch 8, drop connect 0.4) and quality (SGD 1e-3, batch 16); DeepLabV3-ResNet50
#: 400 x 400 for the ROI (Adam 1e-4, batch 4).  Paper 003: ResNet-50 224 x 224 with the
#: circular loss (Adam; its batch of 256 does not fit a CPU, 8 is used).  Steps are far fewer
#: than the papers' 50k-500k iterations: a full build must finish in hours, not weeks.  The
#: ankle paper zero-pads each image to the input keeping its aspect ratio (``pad``); paper 003
#: says nothing of it, and orientation keeps the plain resize.
PAPER: dict[str, Hyper] = {
    "view": Hyper(224, 224, 8, 3000, resize="pad"),
    "roi": Hyper(400, 400, 4, 3000, resize="pad"),
    "quality": Hyper(224, 224, 16, 3000, resize="pad"),
    "orientation": Hyper(224, 224, 8, 4000),
    # Paper 001 (lumbar): a U-Net per view.  Its input size and schedule are the lumbar demo
    # pack's (models/lumbar/train.py: 160 x 128, batch 8, Adam 3e-3), the paper gives none
    # that fit a CPU.
    "segment": Hyper(160, 128, 8, 1000, 3e-3),
    # Paper 004: DenseNet-121 behind a stride-2 convolution and a max-pool, 512 px.  Its
    # schedule and the bone suppressor's (a U-Net, L1 + conditional PatchGAN) are the chest
    # extras' (models/chest/extras.py).
    "finding": Hyper(512, 512, 8, 200, 1e-3),
    "bone_suppression": Hyper(256, 256, 6, 120, 2e-3),
}
#: The short preset (a smoke run of the machinery, minutes on 2 cores): tiny inputs, narrow
#: networks, a few steps.  Its pack says so in name, version and ``training_data.preset``.
#: The input layouts are the full preset's, so a smoke build runs the same preparation.
SHORT: dict[str, Hyper] = {
    "view": Hyper(64, 64, 4, 12, None, 0.125, "pad"),
    "roi": Hyper(64, 64, 4, 12, None, 0.125, "pad"),
    "quality": Hyper(48, 80, 4, 12, None, 0.125, "pad"),
    "orientation": Hyper(64, 64, 4, 12, None, 0.125),
    "segment": Hyper(80, 64, 4, 30, 3e-3, 0.5),
    "finding": Hyper(128, 128, 2, 3, 1e-3),
    "bone_suppression": Hyper(64, 64, 2, 6, 2e-3),
}
#: A bone suppressor's phantoms (train, test) by preset, unless the recipe says ``phantoms``.
PHANTOMS = {"full": (300, 100), "short": (8, 4)}
_HYPER_KEYS = {"input", "batch", "steps", "lr", "net_width", "resize"}
RESIZE = ("stretch", "pad")
#: Keys only some tasks take (docs/recipes.md).
_TASK_KEYS = {"segment": ("classes", "mask_values", "mask_optional", "frame_crops"),
              "orientation": ("turn_any", "quarter_turns"),
              "view": ("balance_classes", "backbone", "init_from", "break_shortcuts",
                       "mirrored_look"),
              "finding": ("views",), "bone_suppression": ("views", "phantoms")}  # fmt: skip
#: Task keys that are not true/false switches.
_VALUED_KEYS = ("classes", "mask_values", "backbone", "init_from", "views", "phantoms")
#: A view stage's network: the ankle paper's EfficientNet-B0, or the orientation network's
#: ResNet layout (which can start from a trained orientation stage, ``init_from``).
BACKBONES = ("efficientnet", "resnet")


class RecipeError(ValueError):
    """The recipe file is malformed; the message names the file and the key."""


@dataclass(frozen=True)
class Stage:
    """One network of the pack."""

    name: str
    task: str
    #: roi/quality: the view label the stage is for (``when`` in the manifest).
    view: str | None
    hyper: Hyper
    #: orientation: also train on copies turned by 90, 180 and 270 degrees (paper 003).
    rotate_quarters: bool = True
    #: orientation, self-supervised (paper 003 on upright images): every training draw turned
    #: by a random angle over the full circle, the label moved with it; measured the same way.
    turn_any: bool = False
    #: orientation: the worker also reads every image turned by 90, 180 and 270 degrees and
    #: averages the four answers turned back (the manifest's ``quarter_turns``; inference only,
    #: unlike ``rotate_quarters``, which is about the training copies).
    quarter_turns: bool = False
    #: view: draw each class equally often (a rare projection is not drowned by the common).
    balance_classes: bool = False
    #: view: the worker also reads every image mirrored left-right and averages the two
    #: answers (the manifest's ``mirrored_look``; inference only: the weights are the same).
    mirrored_look: bool = False
    #: view: every training draw also given the chest shortcut breakers at random
    #: (:func:`models.chest.augment.view_augment`: burned-in text, lines, blanked borders,
    #: reframing, detector looks, a histogram drawn independently of the class), so that
    #: markers, borders and grey levels say nothing of the projection.
    break_shortcuts: bool = False
    #: view: ``efficientnet`` (paper 000) or ``resnet`` (the orientation network's layout).
    backbone: str = "efficientnet"
    #: view with the resnet backbone: an earlier orientation stage whose trained backbone it
    #: starts from (self-supervised pre-training on the site's own images).
    init_from: str | None = None
    #: segment: the class names, index = pixel value of the mask files (``background`` first).
    classes: tuple[str, ...] = ()
    #: segment: the mask files' pixel value of each class, in ``classes`` order, where they are
    #: not 0, 1, 2, ... (a site's binary lung masks: ``[0, 255]``).
    mask_values: tuple[int, ...] = ()
    #: segment: rows of the view without a mask train the other stages; the segmenter trains
    #: and is measured on the rows that have one.
    mask_optional: bool = False
    #: segment: half the training draws cut by a tighter frame (structures reach the edge, as
    #: under tight collimation: ``models.segment.frame_crop``), for edge rules.
    frame_crops: bool = False
    #: rules: the segment stage the rules measure, and the rules (the manifest's dicts,
    #: checked by :func:`edge_worker.pipeline.measures.parse_rules`).
    segments: str | None = None
    rules: tuple[dict[str, Any], ...] = ()
    #: finding, bone_suppression: the view labels the stage runs on (``when`` in the manifest).
    views: tuple[str, ...] = ()
    #: bone_suppression: synthetic chest phantoms drawn to train and to measure it.
    phantoms: tuple[int, int] = (0, 0)

    @property
    def network(self) -> bool:
        """Whether the stage trains a network (a rules stage does not)."""
        return self.task not in NO_NETWORK

    @property
    def extra(self) -> bool:
        """Whether the stage is one of paper 004's extras (:data:`EXTRA_TASKS`)."""
        return self.task in EXTRA_TASKS


@dataclass(frozen=True)
class Recipe:
    """A parsed recipe for one preset."""

    path: Path
    name: str
    version: str
    description: str
    body_part: str
    kind: str
    license: str | None
    preset: str
    views: tuple[str, ...]
    grades: tuple[int, ...]
    patient_column: str | None
    ignore_columns: tuple[str, ...]
    flags: tuple[str, ...]
    seed: int
    test_fraction: float
    min_per_class: int
    stages: tuple[Stage, ...]
    decision: dict[str, float] = field(default_factory=dict)

    @property
    def pack_name(self) -> str:
        """The pack's name; a short build never passes for the real pack."""
        return self.name if self.preset == "full" else f"{self.name}-smoke"

    @property
    def pack_version(self) -> str:
        return self.version if self.preset == "full" else f"{self.version}-smoke"


def _check_keys(where: str, table: dict[str, Any], allowed: set[str], required: set[str]) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise RecipeError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    missing = sorted(required - set(table))
    if missing:
        raise RecipeError(f"{where}: missing key(s) {missing}")


def _table(where: str, raw: dict[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise RecipeError(f"{where}.{key}: must be a table")
    return value


def _hyper(where: str, base: Hyper, table: dict[str, Any]) -> Hyper:
    _check_keys(where, table, _HYPER_KEYS, set())
    out = base
    if "input" in table:
        size = table["input"]
        if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v >= 16
                                                                  for v in size)):  # fmt: skip
            raise RecipeError(f"{where}.input: must be [height, width], integers >= 16")
        out = replace(out, height=size[0], width=size[1])
    if "resize" in table:
        if table["resize"] not in RESIZE:
            raise RecipeError(f"{where}.resize: must be \"pad\" (aspect ratio kept, zeros around) "
                              f"or \"stretch\" (plain resize), got {table['resize']!r}")  # fmt: skip
        out = replace(out, resize=str(table["resize"]))
    for key, kind in (("batch", int), ("steps", int), ("lr", float), ("net_width", float)):
        if key in table:
            value = table[key]
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise RecipeError(f"{where}.{key}: must be a positive number, got {value!r}")
            out = replace(out, **{key: kind(value)})  # type: ignore[arg-type]
    return out


def _classes(where: str, raw: Any) -> tuple[str, ...]:
    if not (isinstance(raw, list) and len(raw) >= 2 and all(isinstance(c, str) and c for c in raw)):
        raise RecipeError(f"{where}.classes: a list of at least two class names, the mask files' "
                          "pixel values in order (0 first, normally 'background')")  # fmt: skip
    if len(set(raw)) != len(raw):
        raise RecipeError(f"{where}.classes: class names must be unique, got {raw}")
    return tuple(raw)


def _rules_stage(where: str, raw: dict[str, Any], views: tuple[str, ...],
                 earlier: dict[str, Stage]) -> Stage:  # fmt: skip
    """A rules stage: its view, the segment stage it reads and rules valid for its classes."""
    from edge_worker.errors import PackError
    from edge_worker.pipeline.measures import parse_rules

    _check_keys(where, raw, {"name", "task", "view", "segments", "rules"},
                {"name", "task", "view", "segments", "rules"})  # fmt: skip
    source = earlier.get(str(raw["segments"]))
    if source is None or source.task != "segment":
        raise RecipeError(f"{where}.segments: must name an earlier segment stage, got "
                          f"{raw['segments']!r}")  # fmt: skip
    if raw["view"] != source.view:
        raise RecipeError(f"{where}.view: must be its segment stage's view {source.view!r}")
    rules = raw["rules"]
    if not isinstance(rules, list) or not rules or not all(isinstance(r, dict) for r in rules):
        raise RecipeError(f"{where}.rules: must be a non-empty array of tables ([[stages.rules]])")
    try:
        parse_rules(rules, source.classes, where)
    except PackError as exc:
        raise RecipeError(str(exc)) from exc
    return Stage(str(raw["name"]), "rules", source.view, Hyper(1, 1, 1, 0), False,
                 segments=source.name, rules=tuple(dict(r) for r in rules))  # fmt: skip


def _stage(where: str, raw: dict[str, Any], preset: str, views: tuple[str, ...],
           earlier: dict[str, Stage]) -> Stage:  # fmt: skip
    task = raw.get("task")
    if task not in TASKS:
        raise RecipeError(f"{where}.task: must be one of {TASKS}, got {task!r}")
    if task == "rules":
        return _rules_stage(where, raw, views, earlier)
    allowed = {"name", "task", "view", "rotate_quarters", "presets", *_HYPER_KEYS,
               *_TASK_KEYS.get(task, ())}  # fmt: skip
    _check_keys(where, raw, allowed,
                {"name", "task", *({"view", "classes"} if task == "segment" else set())})
    for key in _TASK_KEYS.get(task, ()):
        if key not in _VALUED_KEYS and not isinstance(raw.get(key, False), bool):
            raise RecipeError(f"{where}.{key}: must be true or false, got {raw[key]!r}")
    view = raw.get("view")
    if task in ("roi", "quality", "segment") and view not in views:
        raise RecipeError(f"{where}.view: {task} trains one network per view; must be one of "
                          f"{list(views)}, got {view!r}")  # fmt: skip
    if task in ("view", "orientation", *EXTRA_TASKS) and view is not None:
        raise RecipeError(f"{where}.view: a {task} stage "
                          f"{'names its views in `views`' if task in EXTRA_TASKS else 'sees every view'}"
                          "; remove the key")  # fmt: skip
    base = PAPER[task] if preset == "full" else SHORT[task]
    hyper = _hyper(where, base, {k: v for k, v in raw.items() if k in _HYPER_KEYS})
    presets = _table(where, raw, "presets")
    _check_keys(f"{where}.presets", presets, set(PRESETS), set())
    hyper = _hyper(f"{where}.presets.{preset}", hyper, _table(f"{where}.presets", presets, preset))
    classes: tuple[str, ...] = ()
    values: tuple[int, ...] = ()
    if task == "segment":
        classes = _classes(where, raw["classes"])
        values = _mask_values(where, raw.get("mask_values"), classes)
        if hyper.height % 8 or hyper.width % 8:
            raise RecipeError(f"{where}.input: a U-Net halves the image three times; height and "
                              f"width must be multiples of 8, got {hyper.height}x{hyper.width}")
    if task in EXTRA_TASKS:
        return _extra_stage(where, raw, task, hyper, preset, views)
    backbone, init_from = _view_network(where, raw, hyper, earlier)
    return Stage(str(raw["name"]), task, view, hyper, bool(raw.get("rotate_quarters", True)),
                 turn_any=bool(raw.get("turn_any", False)),
                 quarter_turns=bool(raw.get("quarter_turns", False)), backbone=backbone, init_from=init_from,
                 balance_classes=bool(raw.get("balance_classes", False)),
                 mirrored_look=bool(raw.get("mirrored_look", False)),
                 break_shortcuts=bool(raw.get("break_shortcuts", False)),
                 classes=classes, mask_values=values,
                 mask_optional=bool(raw.get("mask_optional", False)),
                 frame_crops=bool(raw.get("frame_crops", False)))  # fmt: skip


def _extra_stage(where: str, raw: dict[str, Any], task: str, hyper: Hyper, preset: str,
                 views: tuple[str, ...]) -> Stage:  # fmt: skip
    """A ``finding`` or ``bone_suppression`` stage: square input, the views it runs on, and
    the bone suppressor's phantom counts."""
    if hyper.height != hyper.width:
        raise RecipeError(f"{where}.input: a {task} stage's input is square, got "
                          f"{hyper.height}x{hyper.width}")  # fmt: skip
    # finding: the stem and DenseNet-121 divide by 128 (the CAM grid); bone: the U-Net by 16.
    step = 128 if task == "finding" else 16
    if hyper.height % step:
        raise RecipeError(f"{where}.input: must be a multiple of {step}, got {hyper.height}")
    on = raw.get("views")
    if not (isinstance(on, list) and on and all(isinstance(v, str) for v in on)
            and {v.upper() for v in on} <= set(views)):  # fmt: skip
        raise RecipeError(f"{where}.views: the view labels the stage runs on, a non-empty list "
                          f"from {list(views)}, got {on!r}")  # fmt: skip
    phantoms = PHANTOMS[preset]
    if task == "bone_suppression" and "phantoms" in raw and preset == "full":
        value = raw["phantoms"]
        if not (isinstance(value, list) and len(value) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) and v >= 2 for v in value)):
            raise RecipeError(f"{where}.phantoms: [train, test] phantom counts, integers >= 2, "
                              f"got {value!r}")  # fmt: skip
        phantoms = (value[0], value[1])
    return Stage(str(raw["name"]), task, None, hyper, False,
                 views=tuple(v.upper() for v in on),
                 phantoms=phantoms if task == "bone_suppression" else (0, 0))  # fmt: skip


def _view_network(where: str, raw: dict[str, Any], hyper: Hyper,
                  earlier: dict[str, Stage]) -> tuple[str, str | None]:  # fmt: skip
    """A view stage's ``backbone`` and ``init_from`` keys, checked against the earlier stages."""
    backbone = raw.get("backbone", "efficientnet")
    if backbone not in BACKBONES:
        raise RecipeError(f"{where}.backbone: must be one of {BACKBONES}, got {backbone!r}")
    source = raw.get("init_from")
    if source is None:
        return backbone, None
    first = earlier.get(source)
    if backbone != "resnet" or first is None or first.task != "orientation":
        raise RecipeError(f"{where}.init_from: a resnet view stage starts from an earlier "
                          f"orientation stage; got {source!r} with backbone {backbone!r}")
    if first.hyper.net_width != hyper.net_width:
        raise RecipeError(f"{where}.init_from: {source!r} has net_width {first.hyper.net_width}, "
                          f"this stage {hyper.net_width}: the backbones must be the same")
    return backbone, str(source)


def _mask_values(where: str, raw: Any, classes: tuple[str, ...]) -> tuple[int, ...]:
    """The ``mask_values`` key: one distinct pixel value per class; absent: 0, 1, 2, ..."""
    if raw is None:
        return tuple(range(len(classes)))
    if (not isinstance(raw, list) or len(raw) != len(classes)
            or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 65535
                       for v in raw) or len(set(raw)) != len(raw)):  # fmt: skip
        raise RecipeError(f"{where}.mask_values: one distinct pixel value (0-65535) per class of "
                          f"{list(classes)}, got {raw!r}")  # fmt: skip
    return tuple(raw)


def _check_chain(where: str, stages: tuple[Stage, ...]) -> None:
    """Combinations the build cannot make yet, refused rather than built wrong."""
    tasks = {s.task for s in stages}
    if "segment" in tasks and tasks & {"roi", "quality"}:
        # A segmented pack is judged by its rules; an ROI box and a quality grade beside them
        # would be a second judge the pack format has no way to combine yet.
        raise RecipeError(f"{where}.stages: a recipe with segment stages may have orientation, "
                          "view and rules stages only (no roi or quality)")
    if tasks & set(EXTRA_TASKS) and "view" not in tasks:
        raise RecipeError(f"{where}.stages: a finding or bone_suppression stage runs on the views "
                          "its `views` key names: the recipe needs a view stage")
    segmented = [s.view for s in stages if s.task == "segment"]
    if len(set(segmented)) != len(segmented):
        raise RecipeError(f"{where}.stages: one segment stage per view, got {segmented}")


def load_recipe(path: str | Path, preset: str = "full") -> Recipe:
    """Parse the recipe at ``path`` for ``preset`` (``short`` or ``full``).

    Raises :class:`RecipeError` naming the key for anything unknown, missing or malformed.
    """
    path = Path(path)
    if preset not in PRESETS:
        raise RecipeError(f"preset must be one of {PRESETS}, got {preset!r}")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise RecipeError(f"{path}: {exc}") from exc
    where = path.name
    _check_keys(where, raw, {"pack", "labels", "split", "stages", "decision", "presets"},
                {"pack", "labels", "stages"})  # fmt: skip
    pack = _table(where, raw, "pack")
    _check_keys(f"{where}.pack", pack, {"name", "version", "description", "body_part", "kind",
                                         "license"}, {"name", "version", "body_part"})  # fmt: skip
    labels = _table(where, raw, "labels")
    _check_keys(f"{where}.labels", labels, {"views", "grades", "patient_column", "ignore_columns",
                                             "flags"}, {"views"})  # fmt: skip
    split = _table(where, raw, "split")
    _check_keys(f"{where}.split", split, {"seed", "test_fraction", "min_per_class"}, set())
    presets = _table(where, raw, "presets")
    _check_keys(f"{where}.presets", presets, set(PRESETS), set())
    chosen = _table(f"{where}.presets", presets, preset)
    _check_keys(f"{where}.presets.{preset}", chosen, {"min_per_class"}, set())
    views = tuple(str(v).upper() for v in labels["views"])
    if len(views) < 2 or len(set(views)) != len(views):
        raise RecipeError(f"{where}.labels.views: at least two distinct labels, got {views}")
    stages_raw = raw["stages"]
    stages_list: list[Stage] = []
    if not isinstance(stages_raw, list) or not stages_raw:
        raise RecipeError(f"{where}.stages: must be a non-empty array of tables ([[stages]])")
    built: dict[str, Stage] = {}
    for i, raw_stage in enumerate(stages_raw):
        if not isinstance(raw_stage, dict):
            raise RecipeError(f"{where}.stages[{i}]: must be a table")
        stage = _stage(f"{where}.stages[{i}]", raw_stage, preset, views, built)
        built.setdefault(stage.name, stage)
        stages_list.append(stage)
    stages = tuple(stages_list)
    _check_chain(where, stages)
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise RecipeError(f"{where}.stages: stage names must be unique, got {names}")
    fraction = float(split.get("test_fraction", 0.2))
    if not 0.05 <= fraction <= 0.5:
        raise RecipeError(f"{where}.split.test_fraction: must be in [0.05, 0.5], got {fraction}")
    decision = _table(where, raw, "decision")
    _check_keys(f"{where}.decision", decision, {"view_min_confidence", "quality_review_margin",
                                                 "orientation_min_norm"}, set())  # fmt: skip
    return Recipe(
        path=path, name=str(pack["name"]), version=str(pack["version"]),
        description=str(pack.get("description", "")), body_part=str(pack["body_part"]).upper(),
        kind=str(pack.get("kind", "clinical")), license=pack.get("license"), preset=preset,
        views=views, grades=tuple(int(g) for g in labels.get("grades", (1, 2, 3))),
        patient_column=labels.get("patient_column", "patient_key"),
        ignore_columns=tuple(labels.get("ignore_columns", ())),
        flags=tuple(labels.get("flags", ())), seed=int(split.get("seed", 0)),
        test_fraction=fraction,
        min_per_class=int(chosen.get("min_per_class", split.get("min_per_class", 2))),
        stages=stages,
        decision={k: float(v) for k, v in decision.items()},
    )  # fmt: skip
