"""The parity gate: a faster backend's outputs must match the reference's, output by output.

Used by ``edge-export engines`` to refuse a TensorRT engine (FP32, FP16 or INT8) whose outputs
stray from ONNX Runtime's on a golden set of real and phantom inputs.  The report names the
output and its error.  Numpy only, so the gate's logic is tested without a GPU.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from edge_worker.backends import Session


@dataclass(frozen=True)
class Tolerance:
    """``max |candidate - reference| <= atol + rtol * max |reference|`` for every output."""

    atol: float
    rtol: float

    def allowed(self, reference: np.ndarray) -> float:
        return self.atol + self.rtol * float(np.max(np.abs(reference))) if reference.size else self.atol


#: Per precision.  FP16 keeps ~3 significant digits; INT8 is judged mostly by agreement.
TOLERANCES = {
    "fp32": Tolerance(atol=1e-3, rtol=1e-3),
    "fp16": Tolerance(atol=2e-2, rtol=2e-2),
    "int8": Tolerance(atol=1e-1, rtol=1e-1),
}


@dataclass(frozen=True)
class OutputError:
    """How far one output strayed over the golden set."""

    output: str
    max_abs_error: float
    allowed: float
    argmax_agreement: float | None = None

    @property
    def passed(self) -> bool:
        agree = self.argmax_agreement is None or self.argmax_agreement == 1.0
        return bool(self.max_abs_error <= self.allowed) and agree

    def describe(self) -> str:
        text = f"{self.output}: max abs error {self.max_abs_error:.3g} (allowed {self.allowed:.3g})"
        if self.argmax_agreement is not None:
            text += f", argmax agreement {self.argmax_agreement:.1%}"
        return text


@dataclass
class GateReport:
    """The gate's verdict on one stage."""

    stage: str
    precision: str
    n_inputs: int
    outputs: list[OutputError] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.outputs) and all(o.passed for o in self.outputs)

    def describe(self) -> str:
        state = "passed" if self.passed else "REFUSED"
        detail = "; ".join(o.describe() for o in self.outputs) or "no outputs compared"
        return f"{self.stage} [{self.precision}] parity {state} on {self.n_inputs} inputs: {detail}"

    def as_dict(self) -> dict[str, object]:
        return {
            "stage": self.stage,
            "precision": self.precision,
            "n_inputs": self.n_inputs,
            "passed": self.passed,
            "outputs": {
                o.output: {"max_abs_error": o.max_abs_error, "allowed": o.allowed, "argmax_agreement": o.argmax_agreement}
                for o in self.outputs
            },
        }


def compare(
    reference: dict[str, np.ndarray],
    candidate: dict[str, np.ndarray],
    tolerance: Tolerance,
    classification_outputs: Iterable[str] = ("logits",),
) -> list[OutputError]:
    """Per-output errors of ``candidate`` against ``reference`` (same batch of inputs)."""
    classify = set(classification_outputs)
    errors: list[OutputError] = []
    for name, ref in reference.items():
        if name not in candidate:
            errors.append(OutputError(name, float("inf"), tolerance.allowed(ref)))
            continue
        cand = candidate[name]
        if cand.shape != ref.shape:
            errors.append(OutputError(name, float("inf"), tolerance.allowed(ref)))
            continue
        diff = np.abs(cand.astype(np.float64) - ref.astype(np.float64))
        # A NaN anywhere (FP16 overflow, say) is an infinite error, never a silent pass.
        worst = float("inf") if np.isnan(diff).any() else float(diff.max()) if diff.size else 0.0
        agreement = None
        if name in classify and ref.ndim == 2:
            agreement = float(np.mean(np.argmax(ref, axis=1) == np.argmax(cand, axis=1)))
        errors.append(OutputError(name, worst, tolerance.allowed(ref), agreement))
    return errors


def gate(
    stage: str,
    precision: str,
    reference: Session,
    candidate: Session,
    inputs: list[np.ndarray],
    tolerance: Tolerance | None = None,
) -> GateReport:
    """Run both sessions on every golden input and keep each output's worst error."""
    tol = tolerance or TOLERANCES[precision]
    report = GateReport(stage=stage, precision=precision, n_inputs=len(inputs))
    worst: dict[str, OutputError] = {}
    for batch in inputs:
        for err in compare(reference.run(batch), candidate.run(batch), tol):
            prev = worst.get(err.output)
            if prev is None:
                worst[err.output] = err
                continue
            agree = [a for a in (prev.argmax_agreement, err.argmax_agreement) if a is not None]
            worst[err.output] = OutputError(
                err.output,
                max(prev.max_abs_error, err.max_abs_error),
                min(prev.allowed, err.allowed),
                min(agree) if agree else None,
            )
    report.outputs = list(worst.values())
    return report
