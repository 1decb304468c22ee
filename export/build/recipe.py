"""A training recipe: a small TOML file that says what pack to build and how (docs/recipes.md).

The file is strict: an unknown table or key is refused with its dotted path named, so a typo
never silently falls back to a default.  Every stage gets the papers' hyper-parameters
(:data:`PAPER`) unless the recipe overrides them, first for every preset, then per preset
(``[stages.presets.short]``); the chosen preset's values win.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

#: Tasks a build stage may train (the ankle-style chain; ``docs/recipes.md``).
TASKS = ("view", "roi", "quality", "orientation")
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


#: The papers' recipes.  Ankle paper (000) section 5: EfficientNet-B0 224 x 224 for view (SGD
#: 1e-3, batch 8, drop connect 0.4) and quality (SGD 1e-3, batch 16); DeepLabV3-ResNet50
#: 400 x 400 for the ROI (Adam 1e-4, batch 4).  Paper 003: ResNet-50 224 x 224 with the
#: circular loss (Adam; its batch of 256 does not fit a CPU, 8 is used).  Steps are far fewer
#: than the papers' 50k-500k iterations: a full build must finish in hours, not weeks.
PAPER: dict[str, Hyper] = {
    "view": Hyper(224, 224, 8, 3000),
    "roi": Hyper(400, 400, 4, 3000),
    "quality": Hyper(224, 224, 16, 3000),
    "orientation": Hyper(224, 224, 8, 4000),
}
#: The short preset (a smoke run of the machinery, minutes on 2 cores): tiny inputs, narrow
#: networks, a few steps.  Its pack says so in name, version and ``training_data.preset``.
SHORT: dict[str, Hyper] = {
    "view": Hyper(64, 64, 4, 12, None, 0.125),
    "roi": Hyper(64, 64, 4, 12, None, 0.125),
    "quality": Hyper(48, 80, 4, 12, None, 0.125),
    "orientation": Hyper(64, 64, 4, 12, None, 0.125),
}
_HYPER_KEYS = {"input", "batch", "steps", "lr", "net_width"}


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
    for key, kind in (("batch", int), ("steps", int), ("lr", float), ("net_width", float)):
        if key in table:
            value = table[key]
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise RecipeError(f"{where}.{key}: must be a positive number, got {value!r}")
            out = replace(out, **{key: kind(value)})  # type: ignore[arg-type]
    return out


def _stage(where: str, raw: dict[str, Any], preset: str, views: tuple[str, ...]) -> Stage:
    _check_keys(where, raw, {"name", "task", "view", "rotate_quarters", "presets", *_HYPER_KEYS},
                {"name", "task"})  # fmt: skip
    task = raw["task"]
    if task not in TASKS:
        raise RecipeError(f"{where}.task: must be one of {TASKS}, got {task!r}")
    view = raw.get("view")
    if task in ("roi", "quality") and view not in views:
        raise RecipeError(f"{where}.view: {task} trains one network per view; must be one of "
                          f"{list(views)}, got {view!r}")  # fmt: skip
    if task in ("view", "orientation") and view is not None:
        raise RecipeError(f"{where}.view: a {task} stage sees every view; remove the key")
    base = PAPER[task] if preset == "full" else SHORT[task]
    hyper = _hyper(where, base, {k: v for k, v in raw.items() if k in _HYPER_KEYS})
    presets = _table(where, raw, "presets")
    _check_keys(f"{where}.presets", presets, set(PRESETS), set())
    hyper = _hyper(f"{where}.presets.{preset}", hyper, _table(f"{where}.presets", presets, preset))
    return Stage(str(raw["name"]), task, view, hyper, bool(raw.get("rotate_quarters", True)))


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
    if not isinstance(stages_raw, list) or not stages_raw:
        raise RecipeError(f"{where}.stages: must be a non-empty array of tables ([[stages]])")
    stages = tuple(_stage(f"{where}.stages[{i}]", s, preset, views) for i, s in enumerate(stages_raw))
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
