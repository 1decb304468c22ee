"""Verdicts and their review copies -> the review store -> two tiers -> export -> a short training.

The judging code runs for real on demo-pack phantoms (ONNX Runtime); the copies are made by the
daemon's own function (``copy_for_verdict``) and received by ``ReviewCopies``; the export runs
through the ``edge-worker review export`` command; ``models.train`` then trains a few steps on
the exported CSV and writes a checkpoint.  The CSV is checked against the store row by row.
"""

from __future__ import annotations

import csv
import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import pytest

pytest.importorskip("sqlalchemy")

import sqlalchemy as sa

from edge_worker import cli
from edge_worker.ingest import read_radiograph
from edge_worker.subscribers.review import db
from edge_worker.subscribers.review.copies import ReviewCopies
from edge_worker.subscribers.review.export import COLUMNS, ExportError, export, grade_and_score
from edge_worker.subscribers.review.store import ReviewStore, Status
from tests.review_db import postgres_server, review_url  # noqa: F401

POSITIONING = ("DCM", "111209")
SIZE = 512


def add_user(store: ReviewStore, name: str, role: str) -> None:
    with store.engine.begin() as c:
        c.execute(sa.insert(db.users).values(name=name, role=role, password_hash="-",
                                             created_at=datetime.now(UTC), disabled=False))  # fmt: skip


@pytest.fixture(scope="module")
def judged(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[dict[str, Any], bytes]]:
    """Six phantoms judged by the demo pack: (verdict, review-copy payload) each."""
    from edge_worker.backends import select
    from edge_worker.ingest.types import IngestPolicy
    from edge_worker.judging.process import Judge
    from edge_worker.packs.pack import load_pack
    from edge_worker.phantoms.ankle import write_phantom
    from edge_worker.pipeline.runner import Pipeline
    from edge_worker.service.review_copier import copy_for_verdict

    folder = tmp_path_factory.mktemp("phantoms")
    judge = Judge(Pipeline(load_pack(None), select(["onnxruntime-cpu"])), "ward-3", "xr-01", IngestPolicy())
    out = []
    for seed in range(6):
        path = folder / f"p{seed}.dcm"
        write_phantom(path, seed=40 + seed, view="AP" if seed % 2 else "LAT", grade=1 + seed % 3, size=768)
        outcome = judge(path)
        assert outcome.kind == "verdict", outcome.payload
        made = copy_for_verdict(read_radiograph(path, max_side=SIZE), outcome.payload, SIZE)
        assert made is not None
        out.append((outcome.payload, json.dumps(made[1]).encode()))
    return out


def review(store: ReviewStore, vid: str, tier_one: str, tier_two: str | None) -> None:
    """Tier one says ``tier_one``; where the image then waits for tier two, it decides."""
    v = store.review_tier_one(vid, "ann", store.get(vid).version, tier_one,
                              [POSITIONING] if tier_one == "questionable" else [])  # fmt: skip
    if tier_two is not None and v.status in (Status.QUESTIONABLE, Status.DISPUTED):
        store.decide_tier_two(vid, "tom", v.version, tier_two, [POSITIONING] if tier_two == "bad" else [])
    elif tier_two is not None:  # tier one's good stood: tier two takes it back to decide
        v = store.reopen(vid, "tom", v.version, "spot check")
        store.decide_tier_two(vid, "tom", v.version, tier_two, [POSITIONING] if tier_two == "bad" else [])


def test_exported_labels_round_trip_into_a_short_training(judged: list[tuple[dict[str, Any], bytes]],
                                                          tmp_path: Path) -> None:  # fmt: skip
    torch = pytest.importorskip("torch")
    from models import train
    from models.data import read_csv

    url = f"sqlite:///{tmp_path / 'review.sqlite3'}"
    store = ReviewStore(url)
    copies = ReviewCopies(store, max_age_days=30, max_bytes=1 << 30)
    add_user(store, "ann", "tier1")
    add_user(store, "tom", "tier2")
    ids = [v["id"] for v, _ in judged]
    for n, (verdict, payload) in enumerate(judged):
        store.record_verdict(verdict)
        if n != 4:  # verdict 4's copy never arrived
            assert copies.accept(payload) == verdict["id"]
    plan = {0: ("questionable", "bad"), 1: ("questionable", "good"), 2: ("good", "bad"), 3: ("good", None),
            4: ("questionable", "good")}  # 5: nobody looked  # fmt: skip
    for n, (one, two) in plan.items():
        review(store, ids[n], one, two)
    store.close()

    out = tmp_path / "export"
    salt = tmp_path / "salt"
    salt.write_bytes(b"s3cret")
    assert cli.main(["review", "export", "--database", url, "--out", str(out), "--salt-file", str(salt)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    labels = (out / "labels.csv").read_bytes()
    assert manifest["labels_csv_sha256"] == hashlib.sha256(labels).hexdigest()
    assert manifest["command"] == ["edge-worker", "review", "export", "--database", url, "--out", str(out),
                                   "--tier", "2", "--salt-file", str(salt)]  # fmt: skip
    skipped = {s["verdict_id"]: s["reason"] for s in manifest["skipped"]}
    assert set(skipped) == {ids[3], ids[4], ids[5]}
    assert "no review copy" in skipped[ids[4]] and "no final label" in skipped[ids[5]]
    status_3 = ReviewStore(url).get(ids[3]).status
    assert "no final label" in skipped[ids[3]] and status_3 in (Status.GOOD, Status.DISPUTED)

    rows = list(csv.DictReader(labels.decode().splitlines()))
    records = read_csv(out / "labels.csv")  # the training recipe's reader, unchanged
    assert [r["verdict_id"] for r in rows] == [ids[0], ids[1], ids[2]]
    assert manifest["counts"] == {"exported": 3, "good": 1, "bad": 2, "skipped": 3}
    by_id = {v["id"]: v for v, _ in judged}
    for row, record in zip(rows, records):
        verdict = by_id[row["verdict_id"]]
        assert record.path == out / "images" / f"{row['verdict_id']}.png" and record.path.exists()
        image = cv2.imread(str(record.path), cv2.IMREAD_UNCHANGED)
        assert max(image.shape) == SIZE
        assert record.view == row["view"] == verdict["view"]["label"]
        final = {ids[0]: "bad", ids[1]: "good", ids[2]: "bad"}[row["verdict_id"]]
        assert row["final"] == final and row["reviewer_tier"] == "2"
        assert (record.grade, record.score) == grade_and_score(final, verdict["quality"])
        assert row["flags"] == ("DCM:111209" if final == "bad" else "")
        study = verdict["study_instance_uid"].encode()
        assert row["patient_key"] == hashlib.sha256(b"s3cret" + study).hexdigest()
        assert (row["station"], row["pack_digest"]) == ("xr-01", verdict["pack"]["digest"])
        scale = SIZE / 768
        assert record.roi is not None
        assert record.roi.cx == pytest.approx(verdict["roi"]["rotated"]["cx"] * scale, abs=0.02)
        assert 0 <= record.roi.cx <= image.shape[1] and 0 <= record.roi.cy <= image.shape[0]

    # --tier any adds tier one's undisputed good (if verdict 3 ended there).
    out_any = tmp_path / "export-any"
    store = ReviewStore(url)
    copies = ReviewCopies(store, max_age_days=30, max_bytes=1 << 30)
    with pytest.raises(ExportError, match="not empty"):
        export(store, copies, out)
    result = export(store, copies, out_any, tier="any")
    store.close()
    tier_one_rows = [r for r in result.rows if r["reviewer_tier"] == "1"]
    assert len(tier_one_rows) == (1 if status_3 == Status.GOOD else 0)

    torch.set_num_threads(1)
    argv = ["view", "--csv", str(out / "labels.csv"), "--val-csv", str(out / "labels.csv"), "--out",
            str(tmp_path / "ckpt"), "--steps", "2", "--batch", "2", "--size", "64", "--width", "0.25"]  # fmt: skip
    assert train.main(argv) == 0
    saved = torch.load(tmp_path / "ckpt" / "view.pt", weights_only=False)
    assert saved["steps"] == 2 and saved["n_train"] == 3


def test_grade_rule() -> None:
    assert grade_and_score("bad", {"grade": 1, "score": 1.2}) == (3, 2.5)
    assert grade_and_score("bad", None) == (3, 3.0)
    assert grade_and_score("good", {"grade": 1, "score": 1.2}) == (1, 1.2)
    assert grade_and_score("good", {"grade": 3, "score": 2.8}) == (2, 2.499)
    assert grade_and_score("good", None) == (None, None)


def test_export_of_a_store_with_nothing_final_lists_why_and_hides_the_password(
    review_url: str, tmp_path: Path  # noqa: F811
) -> None:
    url = review_url.replace("postgres@", "postgres:hunter2@")  # trust auth ignores it
    store = ReviewStore(url)
    store.record_verdict({"id": "00000000-0000-0000-0000-000000000001", "site": "s", "station": "t",
                          "decision": "ok", "pack": {"name": "p", "version": "1", "digest": "a" * 64},
                          "view": {"label": "AP"}, "reasons": []})  # fmt: skip
    store.close()
    out = tmp_path / "out"
    assert cli.main(["review", "export", "--database", url, "--out", str(out), "--since", "2000-01-01"]) == 1
    text = (out / "manifest.json").read_text()
    assert "hunter2" not in text
    manifest = json.loads(text)
    assert manifest["counts"] == {"exported": 0, "good": 0, "bad": 0, "skipped": 1}
    assert manifest["skipped"][0]["reason"] == "no final label (status new, tier 2)"
    assert (out / "labels.csv").read_text().splitlines() == [",".join(COLUMNS)]
    assert cli.main(["review", "export", "--database", url, "--out", str(tmp_path / "o2"),
                     "--since", "2026-02-01", "--until", "2026-01-01"]) == 2  # fmt: skip
