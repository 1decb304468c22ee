"""The head phantom: deterministic per seed, shaped as asked, anatomically ordered."""

from __future__ import annotations

import numpy as np
import pytest

from edge_worker.phantoms.mri import T1, make_head, make_head_with_truth


def test_same_seed_same_volume_other_seed_other_volume() -> None:
    a = make_head(11, shape=(40, 48, 44), spacing_mm=(3.0, 3.0, 3.0))
    b = make_head(11, shape=(40, 48, 44), spacing_mm=(3.0, 3.0, 3.0))
    c = make_head(12, shape=(40, 48, 44), spacing_mm=(3.0, 3.0, 3.0))
    assert a.shape == (40, 48, 44) and a.dtype == np.float32
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    # A generator works as well as a seed, and draws the same head.
    assert np.array_equal(make_head(np.random.default_rng(11), (40, 48, 44), (3.0, 3.0, 3.0)), a)


def test_head_is_t1_like_and_centred() -> None:
    vol, truth = make_head_with_truth(3, (64, 64, 64), (3.0, 3.0, 3.0), lesion=False, normal_variant=False)
    assert not truth.lesion and truth.lesion_centre is None
    # Corners are air, the centre is brain; white matter is brighter than grey, CSF darker.
    assert vol[:3, :3, :3].mean() < 20.0
    centre = vol[24:40, 24:40, 24:40]
    assert centre.mean() > T1["csf"]
    values = vol[vol > 50.0]
    hist = np.histogram(values, bins=[100, 250, 420, 650, 900])[0]
    assert hist[0] > 0 and hist[2] > 0 and hist[3] > 0  # skull/CSF, grey, white all present
    assert vol.min() >= 0.0


@pytest.mark.parametrize("seed", [1, 2])
def test_lesion_and_variant_options(seed: int) -> None:
    base, _ = make_head_with_truth(seed, (48, 56, 48), (3.0, 3.0, 3.0), lesion=False, normal_variant=False)
    with_lesion, truth = make_head_with_truth(seed, (48, 56, 48), (3.0, 3.0, 3.0), lesion=True,
                                              normal_variant=False)  # fmt: skip
    assert truth.lesion and truth.lesion_centre is not None
    z, y, x = truth.lesion_centre
    assert abs(float(with_lesion[z, y, x]) - float(base[z, y, x])) > 150.0
    variant, vt = make_head_with_truth(seed, (48, 56, 48), (3.0, 3.0, 3.0), lesion=False,
                                       normal_variant=True)  # fmt: skip
    assert vt.normal_variant
    csf = lambda v: int(((v > 100) & (v < 260)).sum())
    assert csf(variant) > csf(base)  # enlarged ventricles
