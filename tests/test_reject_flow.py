"""A rejection from a person's click to the PACS: both halves of issue 19 together, no stand-ins.

The real daemon (demo pack, ``[pacs]`` on) judges a phantom the pack calls a retake; its SR
reaches a real Orthanc.  The verdict, taken off the real mosquitto, is recorded in a real review
store (SQLite); a tier-one and a tier-two reviewer confirm the retake with a CID 7011 reason; the
dashboard's :class:`RejectionSender` publishes the command; the daemon's PACS desk makes the KOS,
Orthanc stores it, and the station's answers bring the store's row to ``sent`` with the KOS's
SOP Instance UID.  Before the confirmation, nothing but the SR is in the PACS.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import pydicom
import pytest
from conftest import Mosquitto

from edge_worker.publish.settings import MqttSettings
from tests.orthanc import Orthanc, orthanc_fixture  # noqa: F401  (fixture)
from tests.stations import wait_until
from tests.test_pacs_daemon import drop_retake, modalities, pacs_table

pytest.importorskip("onnxruntime")
pytest.importorskip("sqlalchemy")

from edge_worker.subscribers.dashboard.rejection_sender import RejectionSender  # noqa: E402
from edge_worker.subscribers.review.rejections import Rejections, RejectPolicy  # noqa: E402
from edge_worker.subscribers.review.store import ReviewStore  # noqa: E402
from tests.test_review_store import add_user  # noqa: E402

OVER_EXPOSED = ("DCM", "111212")


def test_a_confirmed_retake_becomes_a_kos_in_the_pacs_and_nothing_before(
    tmp_path: Path, mosquitto: Mosquitto, orthanc: Orthanc, stations: Any, subscriber: Any
) -> None:
    station = stations(tmp_path / "st", mosquitto.url, tables={"pacs": pacs_table(orthanc)})
    sub = subscriber(mosquitto, f"{station.base}/verdict", f"{station.base}/reject/result")
    policy = RejectPolicy(retry_s=2.0, retry_max_s=2.0)
    store = ReviewStore(f"sqlite:///{tmp_path / 'review.sqlite3'}", rejections=policy)
    add_user(store, "ann", "tier1")
    add_user(store, "tom", "tier2")
    rejections = Rejections(store, policy)
    settings = MqttSettings(host=mosquitto.host, port=mosquitto.port, username="review")
    sender = RejectionSender(rejections, settings, "xray", tick_s=0.1, client_id="test-reject-flow")
    station.start()
    sender.start()
    try:
        drop_retake(station.watch, "a.dcm")
        [msg] = sub.wait_for(f"{station.base}/verdict", 1, timeout=60)
        verdict = json.loads(msg.payload)
        assert verdict["decision"] == "retake"
        wait_until("the SR in Orthanc", lambda: modalities(orthanc) == ["SR"], timeout=30, station=station)

        # Recorded and looked at by tier one, but not yet confirmed: nothing leaves the store.
        v, _ = store.record_verdict(verdict)
        v = store.review_tier_one(v.id, "ann", v.version, "questionable")
        time.sleep(3.0)
        assert rejections.of_verdict(verdict["id"]) == []
        assert modalities(orthanc) == ["SR"]
        assert sub.messages(f"{station.base}/reject/result") == []

        # Tier two's final bad with a CID 7011 reason: the command, the KOS, the answers.
        store.decide_tier_two(v.id, "tom", v.version, "bad", [OVER_EXPOSED])
        sender.wake()
        wait_until("the KOS in Orthanc", lambda: modalities(orthanc) == ["KO", "SR"], timeout=30, station=station)
        wait_until("the row answered sent", lambda: rejections.of_verdict(verdict["id"])[0].state == "sent",
                   timeout=30, station=station)  # fmt: skip
        [row] = rejections.of_verdict(verdict["id"])
        kos = next(pydicom.dcmread(io.BytesIO(orthanc.file(i))) for i in orthanc.instances()
                   if pydicom.dcmread(io.BytesIO(orthanc.file(i)), stop_before_pixels=True).Modality == "KO")  # fmt: skip
        assert row.document_uid == kos.SOPInstanceUID
        assert kos.StudyInstanceUID == verdict["study_instance_uid"]
        assert kos.ContentSequence[0].ConceptCodeSequence[0].CodeValue == OVER_EXPOSED[1]
        referenced = {
            inst.ReferencedSOPInstanceUID
            for series in kos.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
            for inst in series.ReferencedSOPSequence
        }
        assert referenced == {verdict["sop_instance_uid"]}
        answers = [json.loads(m.payload) for m in sub.messages(f"{station.base}/reject/result")]
        assert {a["outcome"] for a in answers} >= {"queued", "sent"} and {a["id"] for a in answers} == {row.id}

        # The command is not published again once answered, and the PACS holds one KOS.
        time.sleep(3.0)
        assert modalities(orthanc) == ["KO", "SR"]
    finally:
        sender.stop()
        store.close()
