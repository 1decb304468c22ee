"""A research-only finding classifier with CAM heatmaps (paper 004) on the real chest sets.

What the labels support (``finding`` of ``chest-multisite``; ``chest-views`` has none):

* ``COVID-19`` (with ``COVID-19, ARDS``): 357 images; every other named finding (SARS,
  Pneumocystis, bacterial and viral pneumonias, ARDS, lipoid pneumonia, ... ): 101;
  ``No Finding``: 11; ``todo`` (unlabelled): 39.
* So abnormal-finding vs no-finding is not supported: 11 normal images of a handful of
  patients cannot give an AUC with a useful interval.  The largest classes are COVID-19 and
  "another finding", so the stage is **COVID-19 vs other finding** (``No Finding`` joins the
  other side; ``todo`` is left out), on frontal images only (the laterals are too few).
* Caveat that a reader must see: in this collection the label and the source (hospital,
  journal figure) go together, so an AUC here can partly measure where an image came from.
  The stage is research-only; it never changes the decision and is not a diagnosis.

The network is paper 004's: DenseNet-121 (MONAI's) behind an extra stride-2 convolution and
max-pool at the input, so a 512 px image reaches the dense blocks at 128 px.  Its head is
global average pooling + one linear layer (:class:`export.cam.CamClassifier`), so the
exported ``features`` and the head ``.npz`` give the worker its class activation maps.
Trained on train patients with class-balanced batches; measured by AUC on unseen patients
with a patient-level bootstrap 95 % interval.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.nets import DenseNet121
from torch import nn

from edge_worker.pipeline.preprocess import to_tensor, working_image
from export.cam import CamClassifier
from models.chest.multisite import Record
from models.chest.resume import load_state, run_steps, same_recipe
from models.data import read_image

#: The stage's labels, in output order.
LABELS: tuple[str, ...] = ("other_finding", "COVID-19")
MEAN, STD = 0.5, 0.25
FEATURES = 1024


def finding_class(finding: str, view: str) -> int | None:
    """1 for COVID-19, 0 for another named finding (or No Finding), None when unusable.

    Unusable: no finding (chest-views), ``todo``, or a lateral view.
    """
    finding = finding.strip()
    if not finding or finding.lower() == "todo" or view == "LATERAL":
        return None
    return 1 if finding.startswith("COVID-19") else 0


def finding_label(record: Record) -> int | None:
    """:func:`finding_class` of a record."""
    return finding_class(record.finding, record.view)


def finding_counts(records: Sequence[Record]) -> dict[str, Any]:
    """Images per raw finding and per stage label, and the patients behind each label."""
    usable = [(r, finding_label(r)) for r in records]
    return {
        "raw": dict(Counter(r.finding or "(none)" for r in records).most_common()),
        "images": {LABELS[k]: sum(1 for _, y in usable if y == k) for k in (0, 1)},
        "patients": {LABELS[k]: len({r.patient for r, y in usable if y == k}) for k in (0, 1)},
        "left_out": sum(1 for _, y in usable if y is None),
    }


class _Stem(nn.Module):
    """Paper 004's extra input layers: a stride-2 convolution and a 2x2 max-pool."""

    def __init__(self, out_channels: int = 16) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, out_channels, 3, stride=2, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(out_channels)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(F.relu(self.norm(self.conv(x))))


def build_classifier() -> CamClassifier:
    """Stem + DenseNet-121's dense blocks (ReLU after its last norm) + GAP + linear head."""
    densenet = DenseNet121(spatial_dims=2, in_channels=16, out_channels=len(LABELS))
    backbone = nn.Sequential(_Stem(16), densenet.features, nn.ReLU())
    return CamClassifier(backbone, FEATURES, len(LABELS))


@dataclass(frozen=True)
class ClassifierConfig:
    """One classifier recipe."""

    size: int
    steps: int
    batch: int
    lr: float = 1e-3
    seed: int = 16
    bootstrap: int = 2000
    #: What the training images are (``edge-export build``: a digest of its labels file and
    #: split), so that a checkpoint never resumes on other data; empty: not recorded.
    train_key: str = ""


def _image(record: Record) -> np.ndarray:
    pixels, _ = read_image(record.path)
    return working_image(pixels)[0]


def _augment(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A small zoom, shift and turn, and a contrast change (no flips: the heart has a side)."""
    h, w = image.shape
    matrix: np.ndarray = np.asarray(
        cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-7, 7), rng.uniform(0.9, 1.1)), np.float64)
    matrix[:, 2] += rng.uniform(-0.05, 0.05, 2) * np.array([w, h], np.float64)
    out = cv2.warpAffine(image, matrix, (w, h), borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
    return np.clip(out ** np.float32(rng.uniform(0.8, 1.25)), 0.0, 1.0)


def _tensor(image: np.ndarray, size: int) -> np.ndarray:
    return to_tensor(image, size, size, 1, MEAN, STD)[0]


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties count half); NaN without both classes."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def bootstrap_auc(scores: np.ndarray, labels: np.ndarray, patients: Sequence[str],
                  n: int, seed: int) -> tuple[float, float]:  # fmt: skip
    """95 % percentile interval of the AUC, resampling patients (their images go together)."""
    rng = np.random.default_rng(seed)
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(patients):
        groups.setdefault(p, []).append(i)
    keys = list(groups)
    values = []
    for _ in range(n):
        picks = np.concatenate([groups[keys[k]] for k in rng.integers(0, len(keys), len(keys))])
        value = auc(scores[picks], labels[picks])
        if not math.isnan(value):
            values.append(value)
    if not values:
        return float("nan"), float("nan")
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def predict(net: CamClassifier, tensors: np.ndarray, batch: int = 8) -> np.ndarray:
    """P(COVID-19) of each ``(N, 1, H, W)`` input."""
    net.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(tensors), batch):
            logits, _ = net(torch.from_numpy(tensors[i:i + batch]))
            out.append(torch.softmax(logits, 1)[:, 1].numpy())
    return np.concatenate(out)


def train_classifier(
    train: Sequence[Record], test: Sequence[Record], config: ClassifierConfig, workdir: Path
) -> tuple[CamClassifier, dict[str, Any]]:
    """Train on ``train``'s usable images (resuming from ``workdir/classifier_state.pt``),
    measure on ``test``'s; returns the network and its figures (AUC, its interval, counts)."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    started = time.perf_counter()
    train_rows = [(r, y) for r in train if (y := finding_label(r)) is not None]
    test_rows = [(r, y) for r in test if (y := finding_label(r)) is not None]
    images = [_image(r) for r, _ in train_rows]
    labels = np.array([y for _, y in train_rows])
    by_class = [np.flatnonzero(labels == k) for k in (0, 1)]
    net = build_classifier()
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (
        1 + math.cos(math.pi * min(s, config.steps) / config.steps)))  # fmt: skip
    path = workdir / "classifier_state.pt"
    saved = load_state(path)
    start = 0
    if saved is not None and same_recipe(saved["config"], asdict(config)):
        net.load_state_dict(saved["net"])
        opt.load_state_dict(saved["opt"])
        sched.load_state_dict(saved["sched"])
        rng.bit_generator.state = saved["rng"]
        start = int(saved["step"])

    def step(_: int) -> float:
        net.train()
        # Class-balanced batches: COVID-19 outnumbers the other findings about three to one.
        picks = [int(rng.choice(by_class[k % 2])) for k in range(config.batch)]
        x = np.stack([_tensor(_augment(images[i], rng), config.size) for i in picks])
        logits, _ = net(torch.from_numpy(x))
        loss = F.cross_entropy(logits, torch.from_numpy(labels[picks]))
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        opt.step()
        sched.step()
        return float(loss.item())

    def state(done: int) -> dict[str, Any]:
        return {"config": asdict(config), "step": done, "net": net.state_dict(),
                "opt": opt.state_dict(), "sched": sched.state_dict(),
                "rng": rng.bit_generator.state}  # fmt: skip

    run_steps(start, config.steps, step, state, path, "finding classifier", every=25)
    test_y = np.array([y for _, y in test_rows], np.int64)
    scores = (predict(net, np.stack([_tensor(_image(r), config.size) for r, _ in test_rows]))
              if test_rows else np.zeros(0))  # fmt: skip
    patients = [r.patient for r, _ in test_rows]
    value = auc(scores, test_y)
    low, high = bootstrap_auc(scores, test_y, patients, config.bootstrap, config.seed)
    measured = not math.isnan(value)  # both classes among the held-out images
    figures = {
        "task": "COVID-19 vs other finding (frontal images; 'todo' left out, 'No Finding' with other)",
        "auc_unseen_patients": round(value, 4) if measured else None,
        "auc_95ci_patient_bootstrap": [round(low, 4), round(high, 4)] if measured else None,
        # The pack builder reads this: a classifier whose interval holds 0.5 has shown nothing.
        "better_than_chance": bool(measured and low > 0.5),
        "bootstrap_resamples": config.bootstrap,
        "test": {"images": len(test_rows), "patients": len(set(patients)),
                 **{LABELS[k]: int((test_y == k).sum()) for k in (0, 1)}},  # fmt: skip
        "train": {"images": len(train_rows), "patients": len({r.patient for r, _ in train_rows}),
                  **{LABELS[k]: int((labels == k).sum()) for k in (0, 1)}},  # fmt: skip
        "counts_all": finding_counts(list(train) + list(test)),
        "architecture": f"paper 004 stem (stride-2 conv + max-pool) + MONAI DenseNet-121, "
                        f"{config.size} px input, GAP + linear head (CAM)",
        "recipe": asdict(config),
        "resumed_at_step": start,
        "train_seconds": round(time.perf_counter() - started, 1),
        "caveat": "label and source site go together in this collection: the AUC can partly "
                  "measure the site; research only, not a diagnosis",
    }
    return net, figures
