"""An orientation stage with ``quarter_turns``: four looks (0, 90, 180, 270 degrees), each
answer turned back, averaged.

Run on the committed chest pack's real orientation network (ONNX Runtime) and on real chest
radiographs of its held-out set: the averaged answer must equal the one computed here from four
separate single-look runs, its confidence is the averaged vector's norm (never above the looks'
own), and a manifest that says anything but true or false is refused.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from edge_worker.errors import PackError
from edge_worker.packs.pack import load_pack
from edge_worker.pipeline.stages import run_orientation_batch
from tests.pack_copies import with_option

REPO = Path(__file__).resolve().parents[1]
PACK = REPO / "models" / "packs" / "chest"
SHARED = REPO.parent / "shared" / "data" / "training" / "chest-multisite"
pytestmark = [
    pytest.mark.skipif(not (PACK / "manifest.json").is_file(), reason=f"{PACK} is absent"),
    pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data/training is absent"),
]


def _pack_with(tmp_path: Path, value: object) -> Path:
    return with_option(PACK, tmp_path / f"chest-{value}", "orientation", "quarter_turns", value)


def _held_out_images(n: int) -> list[np.ndarray]:
    from export.build.label_gate import test_rows
    from models.chest.augment import rotate

    rows = (test_rows(load_pack(PACK)) or [])[:n]
    assert rows, "the chest pack records its held-out set"
    rng = np.random.default_rng(5)
    return [rotate(r.sample.working.astype(np.float32), float(rng.uniform(0, 360)), "same")
            for r in rows]  # fmt: skip


def test_four_looks_are_averaged_turned_back(tmp_path: Path) -> None:
    from export.build.chain import worker_pipeline

    plain = worker_pipeline(_pack_with(tmp_path, False))
    turned = worker_pipeline(_pack_with(tmp_path, True))
    single = next(s for s in plain.pack.stages if s.task == "orientation")
    four = next(s for s in turned.pack.stages if s.task == "orientation")
    assert four.options["quarter_turns"] is True and single.options["quarter_turns"] is False
    assert load_pack(PACK).stage("orientation").options["quarter_turns"] is True  # type: ignore[union-attr]
    images = _held_out_images(6)
    averaged = run_orientation_batch(turned.session(four.name), four, images)
    for image, result in zip(images, averaged):
        looks = [run_orientation_batch(plain.session(single.name), single,
                                       [np.rot90(image, k)])[0] for k in range(4)]  # fmt: skip
        # look k saw the anatomy turned a further 90k degrees counter-clockwise
        vectors = [(look.norm * math.cos(math.radians(look.angle_deg - 90 * k)),
                    look.norm * math.sin(math.radians(look.angle_deg - 90 * k)))
                   for k, look in enumerate(looks)]  # fmt: skip
        c, s = np.mean(vectors, axis=0)
        expected = math.degrees(math.atan2(s, c)) % 360.0
        assert abs((result.angle_deg - expected + 180) % 360 - 180) < 1e-3
        assert result.norm == pytest.approx(math.hypot(c, s), abs=1e-5)
        assert result.norm <= max(look.norm for look in looks) + 1e-6  # type: ignore[operator]
        assert result.confidence == pytest.approx(min(1.0, result.norm), abs=1e-9)


def test_quarter_turns_must_be_true_or_false(tmp_path: Path) -> None:
    with pytest.raises(PackError, match="quarter_turns"):
        load_pack(_pack_with(tmp_path, "yes"))
