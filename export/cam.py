"""Classifiers that export their last feature map, so the worker can draw class activation maps.

:class:`CamClassifier` is the shape CAM needs (Zhou et al. 2016): a backbone that returns a
feature map, global average pooling, one ``nn.Linear``.  :func:`export_cam_classifier` writes
the ONNX file (input ``image``; outputs ``logits`` and ``features``; batch dynamic) and the
head's weight and bias as ``.npz``, which ``edge_worker.pipeline.cam`` combines without torch.
Both files pass two gates before their digests are returned: ONNX Runtime against torch
(:func:`export.onnx.check_parity`), and the worker's own reading of them, where the pooled
``features`` through the ``.npz`` head must give the ONNX ``logits``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from export.onnx import ATOL, OPSET, RTOL, ExportError, check_parity, strip_build_metadata
from export.pack import sha256_of

OUTPUT_NAMES = ("logits", "features")


class CamClassifier(nn.Module):
    """``backbone`` (image -> ``(N, channels, h, w)``) + global average pooling + linear head.

    ``forward`` returns ``(logits (N, num_classes), features (N, channels, h, w))``.
    """

    def __init__(self, backbone: nn.Module, channels: int, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.backbone(x)
        if features.dim() != 4:
            raise ValueError(f"the backbone must return (N, C, h, w), got {tuple(features.shape)}")
        return self.head(features.mean(dim=(2, 3))), features


def _export_onnx(net: CamClassifier, path: Path, channels: int, height: int, width: int) -> None:
    # Batch 2 in the example: torch.export specialises sizes 0 and 1.
    example = torch.zeros(2, channels, height, width)
    batch = torch.export.Dim("batch", min=1, max=256)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            net, (example,), dynamo=True, opset_version=OPSET, input_names=["image"],
            output_names=list(OUTPUT_NAMES), dynamic_shapes=({0: batch},),
            external_data=False, verbose=False,
        )  # fmt: skip
    if program is None:
        raise ExportError("torch.onnx.export returned nothing for the CAM classifier")
    program.save(str(path))
    strip_build_metadata(path)  # no file paths of the exporting machine in a pack


def _check_head(onnx_path: Path, weights_path: Path, batch: np.ndarray) -> float:
    """Largest |ONNX logits - head(mean(ONNX features))|, the head read as the worker reads it."""
    import onnxruntime as ort

    from edge_worker.pipeline.cam import load_head

    weight, bias = load_head(weights_path)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    logits, features = session.run(list(OUTPUT_NAMES), {"image": batch})
    pooled = features.astype(np.float64).mean(axis=(2, 3))
    error = float(np.abs(pooled @ weight.T.astype(np.float64) + bias - logits).max())
    bound = ATOL + RTOL * float(np.abs(logits).max())
    if not error <= bound:
        raise ExportError(
            f"{weights_path.name} does not reproduce the logits of {onnx_path.name} from its "
            f"features: max abs error {error:.3g} > tolerance {bound:.3g}; is the head "
            "global average pooling + one linear layer?"
        )
    return error


def export_cam_classifier(
    net: CamClassifier,
    input_hw: tuple[int, int],
    onnx_path: str | Path,
    weights_path: str | Path,
    in_channels: int = 1,
    seed: int = 2016,
) -> tuple[str, str]:
    """Write ``net`` as ONNX at ``onnx_path`` and its head as ``.npz`` at ``weights_path``.

    ``input_hw``: the network's input ``(H, W)``; ``in_channels``: its channels.  The ONNX
    file has input ``image`` ``(N, in_channels, H, W)`` and outputs ``logits`` ``(N, K)`` and
    ``features`` ``(N, C, h, w)`` at opset :data:`export.onnx.OPSET`, ``N`` dynamic; the
    ``.npz`` holds ``weight`` ``(K, C)`` and ``bias`` ``(K,)``, float32.  Both are checked on a
    random batch drawn from ``seed`` (see the module docstring).  Returns the sha256 of the
    ONNX file and of the ``.npz``.  Raises :class:`export.onnx.ExportError` when a gate fails
    or the head is not float32 (it is never silently converted).
    """
    if not isinstance(net, CamClassifier):
        raise ExportError(f"expected a CamClassifier, got {type(net).__name__}")
    head = net.head
    if head.weight.dtype != torch.float32 or head.bias is None:
        state = "absent" if head.bias is None else "set"
        raise ExportError(f"the head must be a float32 nn.Linear with a bias, got weight "
                          f"{head.weight.dtype}, bias {state}")  # fmt: skip
    height, width = int(input_hw[0]), int(input_hw[1])
    onnx_path, weights_path = Path(onnx_path), Path(weights_path)
    if weights_path.suffix != ".npz":
        # np.savez appends ".npz" to any other name, so the digest would be of a missing file.
        raise ExportError(f"the head file must end in .npz, got {weights_path.name}")
    for path in (onnx_path, weights_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    net.eval()
    _export_onnx(net, onnx_path, in_channels, height, width)
    weight = head.weight.detach().cpu().numpy()
    bias = head.bias.detach().cpu().numpy()
    np.savez(weights_path, weight=weight, bias=bias)
    rng = np.random.default_rng(seed)
    batch = rng.standard_normal((3, in_channels, height, width)).astype(np.float32)
    check_parity(net, onnx_path, batch)
    _check_head(onnx_path, weights_path, batch)
    return sha256_of(onnx_path), sha256_of(weights_path)
