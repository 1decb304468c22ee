"""The typed stages judge as the version-1 pipeline did, file by file.

``tests/data/verdicts_v1_pipeline.json`` was written by ``python -m tests.stage_reference``
with the version-1 code (four fixed tasks, the packs' version-1 manifests), before the typed
stages replaced it.  The same phantoms (and the real dev files, where ``../shared`` is) are
judged here through ``edge-worker analyze`` with the version-2 manifests of the same networks:
every decision, reason sentence, view, angle, box and score must be the same, except for the
files of a pack that is no longer bundled (``chest-views``), which must reach its successor.

The ankle networks of that day are kept as ``tests/data/packs/ankle-demo-1.1`` (the bundled
``ankle-demo`` 2.x is a rebuild by ``models/recipes/ankle.toml``, other weights, other figures):
the comparison is of the code, so it runs on the networks the reference was written with.
"""

from __future__ import annotations

import json
from pathlib import Path

from edge_worker.packs.pack import bundled_pack_dirs
from tests.stage_reference import analyze, fingerprint, reference_set

REFERENCE = Path(__file__).parent / "data" / "verdicts_v1_pipeline.json"
#: The ankle-demo pack the reference was judged with (1.1.0: version-2 manifest, 1.0 networks).
ANKLE_V1 = Path(__file__).parent / "data" / "packs" / "ankle-demo-1.1"


def test_bundled_packs_judge_as_the_version_one_pipeline_did(tmp_path: Path) -> None:
    before = json.loads(REFERENCE.read_text())
    paths = reference_set(tmp_path)
    now = {p.name: fingerprint(v) for p, v in zip(paths, analyze(paths, [ANKLE_V1, *bundled_pack_dirs()]))}
    assert len(now) >= 18 and set(now) <= set(before)
    judged = [name for name, v in now.items() if v["kind"] == "verdict"]
    assert {now[n]["pack"] for n in judged} >= {"ankle-demo"}
    # A file the version-1 pipeline judged with a pack that is no longer bundled (chest-views,
    # replaced by the chest recipe's build, a pack version 1 never had) has nothing to equal;
    # it must still go to the pack for its body part.
    bundled = {d.name for d in bundled_pack_dirs()} | {"ankle-demo"}
    gone = {n for n, v in before.items() if v.get("pack") and v["pack"] not in bundled}
    assert gone <= {n for n, v in before.items() if v.get("pack") == "chest-views"}
    for name, fingerprint_now in now.items():
        if name in gone:
            assert fingerprint_now["pack"] == "chest", name
            continue
        assert fingerprint_now == before[name], name
