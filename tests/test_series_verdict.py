"""One series, one verdict: the payload, its schema, the decision rule and the desk's bookkeeping.

``judge_volume`` is a stand-in returning a fixed judgement (a real
:class:`~edge_worker.pipeline.volume.VolumeJudgement`), so that each decision rule is reached on
purpose: the only stand-in (the real network on a real series is in test_mri_series_daemon.py).  Everything else is real: phantom DICOM files, the assembly, a real journal on
disk, the bundled ankle pack for identity (digest, describe), the schema validator.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_worker.judging.process import Outcome
from edge_worker.packs.pack import load_pack
from edge_worker.phantoms.mri_dicom import write_series
from edge_worker.pipeline.volume import TileBox, VolumeJudgement
from edge_worker.publish.journal import Journal
from edge_worker.publish.series_verdict import series_reasons, unjudged_flags
from edge_worker.service.config import parse
from edge_worker.service.series_desk import SeriesDesk
from edge_worker.subscribers.dashboard.state import entry_from_verdict
from edge_worker.subscribers.summary import summary_line
from tests.stations import ROOT

jsonschema = pytest.importorskip("jsonschema")
SCHEMA = json.loads((ROOT / "edge_worker" / "schema" / "verdict.schema.json").read_text())


def Judgement(
    score: float = 7.5, flags: dict[str, float] | None = None, synthetic: bool = True
) -> VolumeJudgement:
    """A fixed judgement: ghosting 0.8 (its top tile), wraparound 0.1, the default thresholds."""
    return VolumeJudgement(
        score=score,
        flags={"ghosting": 0.8, "wraparound": 0.1} if flags is None else flags,
        flag_tiles={"ghosting": [TileBox(0, 0, 0, 12, 40, 48, 0.8)]},
        tiles=1,
        thresholds={"score_review_below": 6.0, "score_retake_below": 3.0, "flag_review_above": 0.5},
        synthetic=synthetic,
        timings_ms={"infer": 1.0},
    )


class _Backend:
    name = "onnxruntime-cpu"


class StandIn:
    """A pipeline whose judge_volume returns ``judgement`` and records what it was given."""

    judges_volumes = True

    def __init__(self, judgement: VolumeJudgement) -> None:
        # The ankle pack's files for identity, with a volume pack's figures: ghosting is judged
        # (AUC 0.9 on unseen volumes), wraparound is not (0.55), flow was never measured.
        flags = {"ghosting": {"auc": 0.9}, "wraparound": {"auc": 0.55}}
        self.pack = dataclasses.replace(load_pack(), validation={"flags": flags})
        self.backend = _Backend()
        self.judgement = judgement
        self.seen: list[tuple[tuple[int, ...], tuple[float, float, float]]] = []

    def judge_volume(self, volume: np.ndarray, spacing_mm: tuple[float, float, float]) -> VolumeJudgement:
        self.seen.append((volume.shape, spacing_mm))
        return self.judgement


def _desk(
    tmp_path: Path, pipeline: StandIn
) -> tuple[SeriesDesk, list[Outcome], list[Path], Journal]:
    config = parse(f'[watch]\nfolder = "{tmp_path / "in"}"\n[series]\nenabled = true\n')
    journal = Journal(tmp_path / "journal.sqlite3")
    sent: list[Outcome] = []
    disposed: list[Path] = []

    def send(outcome: Outcome, key: str | None) -> None:
        payload = journal.remember(outcome.id, outcome.kind, outcome.payload)
        sent.append(Outcome(outcome.kind, payload, outcome.rejection))
        journal.mark_queued(key, outcome.id, outcome.kind)

    def key(path: Path) -> str | None:
        return (
            Journal.key(path, path.stat().st_size, path.stat().st_mtime_ns)
            if path.exists()
            else None
        )

    desk = SeriesDesk(config, pipeline, journal, send=send, quarantine=lambda p, r: None,
                      dispose=disposed.append, journal_key=key, retry=lambda k: None)  # fmt: skip
    return desk, sent, disposed, journal


def _volume() -> np.ndarray:
    return (np.random.default_rng(0).random((12, 40, 48)) * 100).astype(np.float32)


def test_one_verdict_per_series_with_the_schema_and_a_stable_id(tmp_path: Path) -> None:
    paths = write_series(_volume(), tmp_path / "in")
    pipeline = StandIn(Judgement())
    desk, sent, disposed, journal = _desk(tmp_path, pipeline)
    for p in paths:
        assert desk.offer(p)
    assert len(desk.watch.tick(now=10**10)) == 1
    (outcome,) = sent
    assert outcome.kind == "verdict"
    payload: dict[str, Any] = outcome.payload
    jsonschema.validate(payload, SCHEMA)
    s = payload["series"]
    assert s["slices"] == 12 and s["shape"] == [12, 40, 48] and s["spacing_mm"] == [1.0, 1.0, 1.0]
    assert s["flagged"] == ["ghosting"] and s["flag_tiles"]["ghosting"][0]["z1"] == 12
    assert pipeline.seen == [((12, 40, 48), (1.0, 1.0, 1.0))]
    # Synthetic pack: review, whatever the score; the flag is still a reason of its own.
    assert payload["decision"] == "review" and payload["diagnostic"] is None
    assert [r["code"] for r in payload["reasons"]] == [
        "mri_flagged",
        "mri_flags_not_judged",
        "mri_quality_ok",
        "mri_synthetic_pack",
    ]
    assert s["not_judged"] == ["wraparound"]
    assert sorted(disposed) == sorted(paths)
    assert all(
        journal.seen(Journal.key(p, p.stat().st_size, p.stat().st_mtime_ns)) == outcome.id
        for p in paths
    )
    # Judged files offered again (a restart's reconcile) are not collected a second time.
    assert all(desk.offer(p) for p in paths) and desk.watch.waiting() == {}
    # The same content judged again (a fresh journal) gets the same id.
    desk2, sent2, _, _ = _desk(tmp_path / "again", pipeline)
    for p in paths:
        desk2.offer(p)
    desk2.watch.tick(now=10**10)
    assert sent2[0].id == outcome.id
    assert "series of 12 slices" in summary_line("verdict", payload)
    entry = entry_from_verdict(payload, 0.0)
    assert entry["series"] == {
        "slices": 12,
        "score": 7.5,
        "flagged": [{"flag": "ghosting", "probability": 0.8}],
    }


@pytest.mark.parametrize(
    ("judgement", "decision", "codes"),
    [
        (Judgement(score=8.0, flags={"ghosting": 0.1}, synthetic=False), "ok", ["mri_quality_ok"]),
        (
            Judgement(score=5.0, flags={"ghosting": 0.1}, synthetic=False),
            "review",
            ["mri_quality_low"],
        ),
        (
            Judgement(score=2.0, flags={"ghosting": 0.1}, synthetic=False),
            "retake",
            ["mri_quality_not_diagnostic"],
        ),
        (
            Judgement(score=2.0, flags={"ghosting": 0.1}, synthetic=True),
            "review",
            ["mri_quality_not_diagnostic", "mri_synthetic_pack"],
        ),
        (
            Judgement(score=8.0, flags={"flow": 0.9}, synthetic=False),
            "review",
            ["mri_flagged", "mri_quality_ok"],
        ),
    ],
)
def test_decision_rule(judgement: VolumeJudgement, decision: str, codes: list[str]) -> None:
    from edge_worker.judging.decision import decision_of

    reasons = series_reasons(judgement)
    assert [r.code for r in reasons] == codes
    assert decision_of(r.severity for r in reasons) == decision


def test_flags_the_pack_cannot_be_trusted_on_never_raise_or_clear_a_series() -> None:
    validation = {"flags": {"ghosting": {"auc": 0.94}, "lesion": {"auc": 0.46}, "flow": {"auc": None}}}
    assert unjudged_flags(validation, ["ghosting", "lesion", "flow", "spike"]) == ["flow", "lesion", "spike"]
    assert unjudged_flags({}, ["ghosting"]) == ["ghosting"]  # no figures: nothing is judged
    # A lesion probability of 0.9 from a flag at chance is not a finding; the series is not
    # "ok" either: a person looks for what the pack cannot see.
    j = Judgement(score=8.0, flags={"ghosting": 0.1, "lesion": 0.9}, synthetic=False)
    reasons = series_reasons(j, unjudged_flags(validation, j.flags))
    assert [r.code for r in reasons] == ["mri_flags_not_judged", "mri_quality_ok"]
    assert "lesion" in reasons[0].text
    from edge_worker.judging.decision import decision_of

    assert decision_of(r.severity for r in reasons) == "review"


def test_radiograph_verdicts_still_need_their_fields() -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"schema": "xray-qc/verdict@2", "id": "00000000-0000-0000-0000-000000000000",
                             "site": "s", "station": "t", "times": {"file_seen": "x", "verdict_made": "y"},
                             "decision": "ok", "reasons": [], "timings_ms": {}, "pack": {},
                             "not_for_clinical_use": True, "backend": "b", "worker_version": "1"}, SCHEMA)  # fmt: skip


class _Recorder:
    """Records what the desk publishes (the outbox-to-broker path is tested in test_review_copy_daemon)."""

    outbox_depth = 0

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any], str]] = []

    def publish(self, kind: str, payload: dict[str, Any], key: str) -> None:
        self.sent.append((kind, payload, key))


def test_a_series_review_copy_is_a_montage_of_a_few_slices(tmp_path: Path) -> None:
    import cv2

    from edge_worker.judging.series_montage import montage_slices, series_montage
    from edge_worker.publish.review_copy import parse_review_copy

    assert montage_slices(12) == [2, 4, 7, 9] and montage_slices(3) == [0, 1, 2]
    volume = _volume()
    copy, picked = series_montage(volume, 256)
    grey = cv2.imdecode(np.frombuffer(copy.data, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert grey.shape == (80, 96) and (copy.width, copy.height) == (
        96,
        80,
    )  # 2 x 2 slices, never enlarged
    assert picked == [2, 4, 7, 9]
    # Through the desk: after the verdict, one review-copy message for its id.
    paths = write_series(volume, tmp_path / "in")
    desk, sent, _, _ = _desk(tmp_path, StandIn(Judgement()))
    recorder = _Recorder()
    desk.publisher = recorder
    for p in paths:
        desk.offer(p)
    desk.watch.tick(now=10**10)
    ((kind, payload, key),) = recorder.sent
    assert kind == "review-copy" and key == f"review-copy:{sent[0].id}"
    parsed = parse_review_copy(json.dumps(payload))
    assert parsed.verdict_id == sent[0].id


def test_a_pack_without_a_volume_stage_is_refused_at_start(tmp_path: Path) -> None:
    from edge_worker.errors import ConfigError

    radiograph_pack = StandIn(Judgement())
    radiograph_pack.judges_volumes = False  # type: ignore[misc]
    with pytest.raises(ConfigError, match="series.pack"):
        _desk(tmp_path, radiograph_pack)
