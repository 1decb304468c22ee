"""Self-supervised orientation targets (paper 003): an image turned by a random angle.

Radiographs are stored upright (or with a labelled rotation); the orientation network learns
the angle of copies turned by random angles over the full circle, the label moved with the
turn.  A turn is rendered three ways because an image can arrive turned by any of them: on the
same canvas (corners cut), on a grown canvas (nothing lost), or by an exact quarter turn plus a
small residue (a cassette put in sideways, then a slight tilt).  Angles are counter-clockwise
as displayed, the pack contract's sense (``models.chest.augment.rotate``).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from models.chest.augment import rotate
from models.data import Sample

#: Residue (deg) added to a quarter turn, at most.
QUARTER_RESIDUE_DEG = 10.0


def turned(rng: np.random.Generator, image: np.ndarray) -> tuple[np.ndarray, float]:
    """``image`` turned by a random angle and that angle (degrees in [0, 360))."""
    choice = rng.random()
    if choice < 0.4:
        angle = float(rng.uniform(0.0, 360.0))
        return rotate(image, angle, "same"), angle
    if choice < 0.7:
        angle = float(rng.uniform(0.0, 360.0))
        return rotate(image, angle, "expand"), angle
    turns = int(rng.integers(4))
    residue = float(rng.uniform(-QUARTER_RESIDUE_DEG, QUARTER_RESIDUE_DEG))
    out = rotate(rotate(image, 90.0 * turns, "quarter"), residue, "same")
    return out, (90.0 * turns + residue) % 360.0


def turned_sample(rng: np.random.Generator, sample: Sample) -> Sample:
    """``sample`` turned by a random angle, its ``rotation_deg`` moved by the same angle."""
    image, angle = turned(rng, sample.working.astype(np.float32))
    rotation = ((sample.record.rotation_deg or 0.0) + angle) % 360.0
    return Sample(replace(sample.record, rotation_deg=rotation), image, None)


def seeded_turns(seed: int, n: int) -> list[float]:
    """``n`` angles in [0, 360) for measuring on held-out images (same-canvas turns)."""
    return [float(a) for a in np.random.default_rng(seed).uniform(0.0, 360.0, size=n)]
