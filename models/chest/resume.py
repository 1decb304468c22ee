"""Resumable training loops: a progress bar with the time left, and an atomic checkpoint.

A training that is killed (a deadline, a shared machine) restarts from its last checkpoint
instead of from step 0: :func:`run_steps` saves the state every ``every`` steps and at the
end, to a temporary file renamed over the old one, so a kill mid-write leaves the previous
checkpoint whole.  The state is whatever the caller's ``state()`` returns (weights, optimiser,
scheduler, step and the random generators), read back by :func:`load_state`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm


def load_state(path: Path) -> dict[str, Any] | None:
    """The state saved at ``path``, or ``None`` when there is none yet."""
    if not path.exists():
        return None
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    return state


def same_recipe(saved: dict[str, Any], config: dict[str, Any]) -> bool:
    """Whether a checkpoint of recipe ``saved`` may continue as ``config``: equal but for
    ``steps`` (a run may be lengthened, or shortened to stop where it is; the learning-rate
    schedule follows the new length from the step it resumes at)."""
    return {k: v for k, v in saved.items() if k != "steps"} == {
        k: v for k, v in config.items() if k != "steps"}


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def run_steps(
    start: int,
    steps: int,
    step: Callable[[int], float],
    state: Callable[[int], dict[str, Any]],
    path: Path,
    desc: str,
    every: int = 50,
) -> float | None:
    """Run ``step(i)`` for ``i`` in ``start..steps-1``, saving ``state(i + 1)`` to ``path``.

    ``step`` returns the batch's loss; the bar shows its running average, the rate and the
    time left (tqdm).  Saves every ``every`` steps and after the last.  Returns the running
    loss (``None`` when no step was left to run).
    """
    running: float | None = None
    start = min(start, steps)
    bar = tqdm(range(start, steps), desc=desc, initial=start, total=steps, mininterval=2.0)
    for i in bar:
        loss = step(i)
        running = loss if running is None else 0.95 * running + 0.05 * loss
        bar.set_postfix(loss=f"{running:.4f}", refresh=False)
        if (i + 1) % every == 0 or i + 1 == steps:
            save_state(path, state(i + 1))
    return running
