"""Chest checkpoints -> ONNX through the parity gate -> the pack folder.

This reuses the ankle recipe's exporter (``export.onnx``: ``load_checkpoint``,
``export_onnx``, ``check_parity``) and pack writer (``export.pack.write_pack``) unchanged.
``export.onnx.export_stage`` itself does not fit a chest pack: it labels every view stage
with the ankle labels (AP, LAT) and checks parity on phantom ankles.  Here the labels are the
chest's and the parity batch is made of real chest inputs, prepared as the worker prepares them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_worker.pipeline.preprocess import to_tensor
from export.onnx import OPSET, OUTPUT_NAMES, check_parity, export_onnx, load_checkpoint
from export.pack import StageFile, write_pack
from models.chest.augment import rotate
from models.chest.data import LABELS

NAME = "chest-views"
DESCRIPTION = ("Chest AP/PA view and orientation, trained on 142 real radiographs of 39 "
               "patients (small research set). NOT FOR CLINICAL USE.")  # fmt: skip
ATTRIBUTION = (
    "189 images: COVID-19 Image Repository, Institute for Diagnostic and Interventional "
    "Radiology, Hannover Medical School, Hannover, Germany. DOI: 10.6084/m9.figshare.12275009 "
    "(https://github.com/ml-workgroup/covid-19-image-repository, commit ad7ab099), licensed "
    "under CC BY 3.0 (https://creativecommons.org/licenses/by/3.0/); downscaled to at most "
    "512 px. 1 image: covid-chestxray-dataset (J. P. Cohen, P. Morrison, L. Dao, 'COVID-19 "
    "image data collection', arXiv:2003.11597, 2020; "
    "https://github.com/ieee8023/covid-chestxray-dataset, fork hida6 commit 584034aa), "
    "images/thnov10p5641g006-c.png, panel c of Figure 6 of Theranostics 2020;10(12):5641, "
    "doi:10.7150/thno.46465, (c) the article's authors, CC BY 4.0 "
    "(https://creativecommons.org/licenses/by/4.0/); converted to grayscale PNG."
)


def parity_inputs(task: str, images: list[np.ndarray], size: int, n: int = 4) -> np.ndarray:
    """``(n, 1, size, size)`` real chest inputs (turned by 0/90/200/300 deg for orientation)."""
    chosen = images[:n]
    if task == "orientation":
        angles = (0.0, 90.0, 200.0, 300.0)
        chosen = [rotate(img, angles[i % 4], "same") for i, img in enumerate(chosen)]
    return np.concatenate([to_tensor(img, size, size, 1, 0.5, 0.25) for img in chosen])


def export_chest_stage(
    checkpoint: Path, out_dir: Path, images: list[np.ndarray], thresholds: dict[str, float]
) -> tuple[StageFile, dict[str, float]]:
    """One checkpoint -> ``<out_dir>/<stem>.onnx`` through the parity gate, as a pack stage.

    ``images`` are working images for the parity batch; raises ``export.onnx.ExportError``
    when ONNX Runtime and torch disagree beyond the gate's tolerance.
    """
    loaded = load_checkpoint(checkpoint)
    spec = loaded.input
    size = int(spec["height"])
    if (float(spec["mean"]), float(spec["std"])) != (0.5, 0.25):
        raise ValueError(f"{checkpoint}: unexpected normalisation {spec}")
    onnx_path = export_onnx(loaded.net, out_dir / f"{checkpoint.stem}.onnx", loaded.task,
                            int(spec["channels"]), size, int(spec["width"]))  # fmt: skip
    errors = check_parity(loaded.net, onnx_path, parity_inputs(loaded.task, images, size))
    arch = loaded.arch.describe()
    recipe = dict(loaded.meta.get("recipe") or {})  # type: ignore[call-overload]
    if loaded.task == "view" and loaded.arch.task == "orientation":
        arch = (
            f"ResNet-50 layout (bottleneck), width {loaded.arch.width}, 2-class linear head"
            + (", backbone initialised from the self-supervised orientation stage"
               if recipe.get("init") else "")
        )  # fmt: skip
    if loaded.task == "orientation":
        arch += f"; input {size} px, trained on rotations over the full circle"
    else:
        arch += f"; input {size} px, outlier exposure"
    stage = StageFile(
        name=checkpoint.stem,
        task=loaded.task,
        onnx_path=onnx_path,
        output_name=OUTPUT_NAMES[loaded.task],
        input=spec,
        architecture=arch,
        opset=OPSET,
        applies_to_view=None,
        labels=list(LABELS) if loaded.task == "view" else None,
        thresholds=thresholds,
    )
    return stage, errors


def write_chest_pack(
    folder: Path, stages: list[StageFile], version: str, training_data: dict[str, object],
    validation: dict[str, object],
) -> Path:  # fmt: skip
    """Write the chest pack (``body_parts: ["CHEST"]``, not for clinical use)."""
    return write_pack(
        folder, stages, name=NAME, version=version, description=DESCRIPTION,
        training_data=training_data, validation=validation, body_parts=("CHEST",),
        not_for_clinical_use=True,
    )  # fmt: skip


def pack_size_bytes(folder: Path) -> int:
    """Total size of the pack's files."""
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
