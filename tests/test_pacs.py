"""Results in a REAL Orthanc PACS: SRs per verdict, KOSs per confirmed rejection, typed failures.

The PACS desk (edge_worker.service.pacs_desk) runs in-process on real verdicts (the demo pack
judging phantom DICOM files with ONNX Runtime) and sends to Orthanc (tests/orthanc.py) by
C-STORE; what arrives is read back through Orthanc's REST API and parsed by highdicom.  The
refusals Orthanc cannot be made to give (a SOP class it does not accept, "out of resources") come
from a pynetdicom SCP in the test.  The daemon wiring and MQTT commands: tests/test_pacs_daemon.py.
"""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom
import pytest

from edge_worker.pacs.sender import PacsTarget, Sender
from edge_worker.pacs.sr import SCHEME, build_report, encode
from edge_worker.service.config import Config, PacsTlsConfig, with_overrides
from edge_worker.service.health import Health
from edge_worker.service.metrics import Registry
from edge_worker.service.pacs_desk import PacsDesk
from tests.conftest import free_port
from tests.orthanc import STATION_AE, Orthanc, orthanc_fixture  # noqa: F401  (fixture)
from tests.stations import wait_until
from tests.test_security import pki as pki_fixture  # noqa: F401  (a throw-away CA and certificates)

pytest.importorskip("onnxruntime")
ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "models" / "packs" / "ankle-demo"


@pytest.fixture(scope="module")
def judged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict[str, Any]]]:
    """Real verdicts of the demo pack: ``ok`` (grade 1), ``review``, ``retake`` (grade 3) x3."""
    from edge_worker.backends import select
    from edge_worker.ingest.types import IngestPolicy
    from edge_worker.judging.process import Judge
    from edge_worker.packs.pack import load_pack
    from edge_worker.phantoms.ankle import write_phantom
    from edge_worker.pipeline.runner import Pipeline

    folder = tmp_path_factory.mktemp("phantoms")
    judge = Judge(Pipeline(load_pack(DEMO), select(["onnxruntime-cpu"])), "site", "xr-01", IngestPolicy())
    out = {}
    for name, seed, grade in (("ok", 3, 1), ("review", 1, 2), ("retake", 4, 3), ("retake2", 5, 3), ("retake3", 6, 3)):
        path = folder / f"{name}.dcm"
        write_phantom(path, seed=seed, size=512, view="AP" if seed % 2 else "LAT", grade=grade)
        verdict = judge(path).payload
        verdict.pop("thumbnail", None)
        out[name] = (path, verdict)
    assert out["ok"][1]["decision"] == "ok" and out["retake"][1]["decision"] == "retake"
    return out


def schema(name: str) -> Any:
    """A validator for ``edge_worker/schema/<name>.schema.json``."""
    jsonschema = pytest.importorskip("jsonschema")
    return jsonschema.Draft202012Validator(json.loads((ROOT / "edge_worker" / "schema" / f"{name}.schema.json").read_text()))


def pacs_config(tmp_path: Path, port: int, **pacs: Any) -> Config:
    return with_overrides(
        Config(site="site", station="xr-01"),
        state={"folder": tmp_path / "state"},
        pacs={"enabled": True, "host": "127.0.0.1", "port": port, "called_ae": "ORTHANC", "ae_title": STATION_AE,
              "timeout_seconds": 5.0, "retry_max_seconds": 2.0, **pacs},
    )  # fmt: skip


class Desk:
    """A started PacsDesk and the results it answered (MQTT replaced by a list: the daemon test
    has the real broker)."""

    def __init__(self, config: Config) -> None:
        self.health = Health()
        self.metrics = Registry()
        self.results: list[dict[str, Any]] = []
        self.desk = PacsDesk(config, self.health, self.metrics, self._answer)
        self.desk.start()

    def _answer(self, topic: str, doc: dict[str, Any], retain: bool) -> None:
        assert topic == "xray/site/xr-01/reject/result" and not retain
        schema("reject-result").validate(doc)
        self.results.append(dict(doc))

    def command(self, verdict: dict[str, Any], action: str = "reject", **extra: Any) -> dict[str, Any]:
        doc = {"schema": "xray-qc/reject@1", "id": str(uuid.uuid4()), "action": action, "verdict_id": verdict["id"],
               "sop_instance_uid": verdict["sop_instance_uid"], "study_instance_uid": verdict["study_instance_uid"],
               "series_instance_uid": verdict["series_instance_uid"], "confirmed_by": "anna", "tier": 1,
               "confirmed_at": "2026-12-03T17:00:00+00:00", "review_version": 1}  # fmt: skip
        if action == "reject":
            doc["reason"] = {"code": "111209", "scheme": "DCM", "meaning": "Positioning"}
        doc.update(extra)
        if doc["id"] and doc["verdict_id"] != "no-such-verdict" and doc.get("reason", {}).get("code") != "999":
            schema("reject").validate(doc)
        self.desk.handle("xray/site/xr-01/reject", json.dumps(doc).encode())
        return doc

    def answers(self, command_id: str) -> list[dict[str, Any]]:
        return [r for r in self.results if r["id"] == command_id]


@pytest.fixture
def desks() -> Iterator[Any]:
    made: list[Desk] = []

    def make(config: Config) -> Desk:
        d = Desk(config)
        made.append(d)
        return d

    yield make
    for d in made:
        d.desk.stop()


def texts(ds: pydicom.Dataset) -> list[str]:
    """Every TEXT content item's value in an SR tree (the algorithm name, version, parameters)."""
    out = [str(ds.TextValue)] if "TextValue" in ds else []
    for item in ds.get("ContentSequence") or []:
        out += texts(item)
    return out


def stored(server: Orthanc) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(io.BytesIO(server.file(i))) for i in server.instances()]


def test_sr_of_a_real_verdict_arrives_in_orthanc(orthanc: Orthanc, judged: Any, desks: Any, tmp_path: Path) -> None:
    path, verdict = judged["ok"]
    d = desks(pacs_config(tmp_path, orthanc.dicom_port))
    d.desk.submit(path, verdict)
    wait_until("the SR in Orthanc", lambda: len(orthanc.instances()) == 1)
    data = orthanc.file(orthanc.instances()[0])
    sr = hd.sr.srread(io.BytesIO(data))
    src = pydicom.dcmread(path, stop_before_pixels=True)
    assert str(sr.SOPClassUID) == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert sr.StudyInstanceUID == src.StudyInstanceUID and sr.PatientID == src.PatientID
    assert sr.SeriesInstanceUID != src.SeriesInstanceUID
    assert sr.ConceptNameCodeSequence[0].CodeValue == "126000"  # Imaging Measurement Report (TID 1500)
    group = sr.content.get_image_measurement_groups()[0]
    evals = {e.name.meaning: e.value for e in group.get_qualitative_evaluations()}
    assert (evals["Quality control decision"].value, evals["Quality control decision"].scheme_designator) == ("ok", SCHEME)
    assert evals["Quality control reason"].value == "quality_criteria_met"
    assert evals["Image View"].value == "VIEW-AP"
    assert evals["Image quality grade"].value == "GRADE-1"
    assert evals["Model training data"].value == "DATA-synthetic-phantom"  # the demo pack is synthetic
    measures = {m.name.meaning: m.value for m in group.get_measurements()}
    assert measures["Image quality score"] == pytest.approx(verdict["quality"]["score"])
    assert measures["Orientation angle"] == pytest.approx(verdict["orientation"]["angle_deg"])
    text = texts(sr)
    assert f"pack digest sha256:{verdict['pack']['digest']}" in text and verdict["pack"]["version"] in text
    assert group.source_images[0].referenced_sop_instance_uid == src.SOPInstanceUID
    assert sr.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == SCHEME
    # Same verdict -> identical bytes; submitting again sends nothing new.
    rebuilt = encode(build_report(verdict, src, station="xr-01"))
    assert pydicom.dcmread(io.BytesIO(rebuilt)).SOPInstanceUID == sr.SOPInstanceUID
    assert rebuilt == encode(build_report(verdict, src, station="xr-01"))
    d.desk.submit(path, verdict)
    time.sleep(1.0)
    assert len(orthanc.instances()) == 1
    assert d.metrics.value("edge_worker_pacs_sent_total", kind="sr") == 1
    assert "pacs" not in d.health.snapshot()
    exposed = d.metrics.render()
    assert "edge_worker_pacs_outbox_depth 0" in exposed and 'edge_worker_pacs_sent_total{kind="sr"} 1' in exposed


def test_pacs_down_queued_then_sent_after_restart_once(tmp_path: Path, judged: Any, desks: Any) -> None:
    server = Orthanc(tmp_path / "orthanc")
    config = pacs_config(tmp_path, server.dicom_port)
    first = desks(config)
    for name in ("ok", "retake"):
        first.desk.submit(*judged[name])
    wait_until("a health problem", lambda: "pacs" in first.health.snapshot())
    assert "unreachable" in first.health.snapshot()["pacs"] and "2 object(s) wait" in first.health.snapshot()["pacs"]
    assert first.desk.outbox.depth() == 2
    assert first.metrics.value("edge_worker_pacs_failures_total", reason="unreachable") >= 1
    first.desk.stop()  # the daemon stops with the PACS still down
    server.start()
    try:
        second = desks(config)  # the next start, same state folder
        wait_until("both SRs in Orthanc", lambda: len(server.instances()) == 2, timeout=20)
        wait_until("health clear", lambda: "pacs" not in second.health.snapshot())
        for name in ("ok", "retake"):  # the same verdicts again (the image judged again)
            second.desk.submit(*judged[name])
        time.sleep(1.5)
        assert len(server.instances()) == 2 and second.desk.outbox.depth() == 0
    finally:
        server.stop()


class RefusingScp:
    """A pynetdicom storage SCP that accepts only CT images (no SR), or answers a status."""

    def __init__(self, status: int | None = None) -> None:
        from pynetdicom import AE, evt
        from pynetdicom.sop_class import ComprehensiveSRStorage, CTImageStorage, Verification  # type: ignore[attr-defined]

        self.port = free_port()
        ae = AE(ae_title="SCP")
        ae.add_supported_context(Verification)
        ae.add_supported_context(CTImageStorage)
        if status is not None:
            ae.add_supported_context("1.2.840.10008.5.1.4.1.1.88.34")
            ae.add_supported_context(ComprehensiveSRStorage)
        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, lambda event: status)])  # fmt: skip

    def close(self) -> None:
        self.server.shutdown()


def test_refused_sop_class_and_full_pacs_are_typed(tmp_path: Path, judged: Any, desks: Any) -> None:
    path, verdict = judged["ok"]
    data = encode(build_report(verdict, pydicom.dcmread(path, stop_before_pixels=True), station="xr-01"))
    for status, reason in ((None, "sop_class_refused"), (0xA700, "pacs_full"), (0xC001, "failed_status"),
                           (0xB000, "sent")):  # fmt: skip
        scp = RefusingScp(status)
        try:
            [result] = Sender(PacsTarget("127.0.0.1", scp.port, "SCP")).store([data])
            assert result.reason == reason, result
            if status is not None:
                assert result.status == status
        finally:
            scp.close()
    scp = RefusingScp(None)
    try:  # through the desk: retried, counted, reported
        d = desks(pacs_config(tmp_path, scp.port, called_ae="SCP"))
        d.desk.submit(path, verdict)
        wait_until("a health problem", lambda: "sop_class_refused" in d.health.snapshot().get("pacs", ""))
        assert d.metrics.value("edge_worker_pacs_failures_total", reason="sop_class_refused") >= 1
        assert d.desk.outbox.depth() == 1  # kept: nothing lost
    finally:
        d.desk.stop()
        scp.close()


def test_reject_command_makes_a_kos_in_orthanc(orthanc: Orthanc, judged: Any, desks: Any, tmp_path: Path) -> None:
    path, verdict = judged["retake"]
    d = desks(pacs_config(tmp_path, orthanc.dicom_port))
    d.desk.submit(path, verdict)
    wait_until("the SR", lambda: len(orthanc.instances()) == 1)
    cmd = d.command(verdict)
    wait_until("the KOS", lambda: len(orthanc.instances()) == 2)
    answers = wait_until("queued and sent", lambda: len(d.answers(cmd["id"])) == 2 and d.answers(cmd["id"]))
    assert [a["outcome"] for a in answers] == ["queued", "sent"]
    uid = answers[0]["document_sop_instance_uid"]
    assert answers[1]["document_sop_instance_uid"] == uid and answers[1]["verdict_id"] == verdict["id"]
    kos = next(ds for ds in stored(orthanc) if ds.Modality == "KO")
    parsed = hd.ko.KeyObjectSelectionDocument.from_dataset(kos)  # highdicom's own reading of TID 2010
    assert parsed.resolve_reference(verdict["sop_instance_uid"]) == (
        verdict["study_instance_uid"], verdict["series_instance_uid"], verdict["sop_instance_uid"])
    assert kos.SOPInstanceUID == uid and kos.StudyInstanceUID == verdict["study_instance_uid"]
    title = kos.ConceptNameCodeSequence[0]
    assert (title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning) == ("113001", "DCM", "Rejected for Quality Reasons")
    mod = kos.ContentSequence[0]
    assert (mod.RelationshipType, mod.ConceptNameCodeSequence[0].CodeValue) == ("HAS CONCEPT MOD", "113011")
    assert (mod.ConceptCodeSequence[0].CodeValue, mod.ConceptCodeSequence[0].CodeMeaning) == ("111209", "Positioning")
    refs = kos.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence
    assert refs[0].ReferencedSOPInstanceUID == verdict["sop_instance_uid"]
    # The same command again: the same answer, nothing new made; another reject: already_done.
    d.desk.handle("xray/site/xr-01/reject", json.dumps(cmd).encode())
    assert d.answers(cmd["id"])[-1]["outcome"] == "sent" and d.answers(cmd["id"])[-1]["document_sop_instance_uid"] == uid
    again = d.command(verdict)
    assert d.answers(again["id"])[-1]["reason"] == "already_done"
    # Withdraw with no revoke code: nothing sent, a person must restore the image.
    w = d.command(verdict, action="withdraw")
    assert (d.answers(w["id"])[-1]["outcome"], d.answers(w["id"])[-1]["reason"]) == ("refused", "revoke_unsupported")
    assert verdict["sop_instance_uid"] in d.health.snapshot()["pacs_restore"]
    time.sleep(1.0)
    assert len(orthanc.instances()) == 2


def test_withdraw_with_revoke_code_and_refusals(orthanc: Orthanc, judged: Any, desks: Any, tmp_path: Path) -> None:
    path, verdict = judged["retake2"]
    d = desks(pacs_config(tmp_path, orthanc.dicom_port, send_reports=False,
                          revoke_code="REVOKE_REJECTION^99DCM4CHEE^Restore rejected Instances"))  # fmt: skip
    copy = tmp_path / "judged.dcm"
    copy.write_bytes(path.read_bytes())
    d.desk.submit(copy, verdict)
    wait_until("the header kept", lambda: d.desk.outbox.source(verdict["id"]) is not None)
    copy.unlink()  # archived or deleted by retention: the confirmation must still work
    nothing = d.command(verdict, action="withdraw")
    assert d.answers(nothing["id"])[-1]["reason"] == "nothing_to_withdraw"
    reject = d.command(verdict)
    wait_until("the KOS", lambda: len(orthanc.instances()) == 1)  # no SR: send_reports is off
    withdraw = d.command(verdict, action="withdraw")
    wait_until("the revocation", lambda: len(orthanc.instances()) == 2)
    titles = sorted(ds.ConceptNameCodeSequence[0].CodeValue for ds in stored(orthanc))
    assert titles == ["113001", "REVOKE_REJECTION"]
    wait_until("withdraw sent", lambda: d.answers(withdraw["id"])[-1]["outcome"] == "sent")
    unknown = d.command({**verdict, "id": "no-such-verdict"})
    assert d.answers(unknown["id"])[-1]["reason"] == "source_gone"
    bad = d.command(verdict, reason={"code": "999", "scheme": "DCM", "meaning": "x"})
    assert d.answers(bad["id"])[-1]["reason"] in ("invalid_command", "already_done")
    d.desk.handle("xray/site/xr-01/reject", b"not json")
    assert d.results[-1]["outcome"] == "refused" and d.results[-1]["reason"] == "invalid_command"
    assert reject["id"] != withdraw["id"]


def test_no_reject_command_no_kos(orthanc: Orthanc, judged: Any, desks: Any, tmp_path: Path) -> None:
    d = desks(pacs_config(tmp_path, orthanc.dicom_port))
    retakes = [judged[n] for n in ("retake", "retake2", "retake3")]
    for path, verdict in retakes:
        assert verdict["decision"] == "retake"
        d.desk.submit(path, verdict)
    wait_until("three SRs", lambda: len(orthanc.instances()) == 3)
    time.sleep(1.0)
    assert sorted(ds.Modality for ds in stored(orthanc)) == ["SR", "SR", "SR"]
    assert d.results == []


def test_image_without_study_uid_is_a_typed_outcome(tmp_path: Path, judged: Any, desks: Any) -> None:
    path, verdict = judged["ok"]
    ds = pydicom.dcmread(path)
    del ds.StudyInstanceUID
    bare = tmp_path / "bare.dcm"
    ds.save_as(bare)
    d = desks(pacs_config(tmp_path, free_port()))
    d.desk.submit(bare, verdict)
    wait_until("the refusal counted", lambda: d.metrics.value("edge_worker_pacs_failures_total", reason="no_study_uid") == 1)
    assert d.desk.outbox.depth() == 0 and d.desk.outbox.source(verdict["id"]) is None
    cmd = d.command(verdict)
    assert d.answers(cmd["id"])[-1]["reason"] == "source_gone"


@pytest.fixture
def certs(request: pytest.FixtureRequest) -> Any:
    """tests/test_security.py's throw-away CA, server and client certificates."""
    return request.getfixturevalue("pki_fixture")


def test_dicom_tls_to_orthanc(tmp_path: Path, judged: Any, desks: Any, certs: Any) -> None:
    """Orthanc with DICOM TLS and client certificates required: our certificate gets in, the SR
    is stored; without a client certificate (or with a foreign CA) the outcome is typed."""
    server = Orthanc(tmp_path / "orthanc", tls={"cert": certs["server.crt"], "key": certs["server.key"], "ca": certs["ca.crt"]})
    server.start()
    try:
        tls = {"ca_file": certs["ca.crt"], "cert_file": certs["xr-01.crt"], "key_file": certs["xr-01.key"]}
        d = desks(pacs_config(tmp_path, server.dicom_port, tls=True, tls_files=PacsTlsConfig(**tls)))
        assert d.desk.sender.echo().ok
        d.desk.submit(*judged["ok"])
        wait_until("the SR over TLS", lambda: len(server.instances()) == 1)
        target = d.desk.sender.target
        bare = Sender(PacsTarget(target.host, target.port, "ORTHANC", STATION_AE, 5.0, tls_ca=certs["ca.crt"], tls=True))
        assert bare.echo().reason in ("association_aborted", "tls_failed", "unreachable")
        foreign = Sender(PacsTarget(target.host, target.port, "ORTHANC", STATION_AE, 5.0, tls_ca=certs["other-ca.crt"], tls=True))
        assert foreign.echo().reason == "tls_failed"
        plain = Sender(PacsTarget(target.host, target.port, "ORTHANC", STATION_AE, 3.0))
        assert not plain.echo().ok
    finally:
        server.stop()


def test_sr_carries_every_rule_of_a_rules_pack(tmp_path: Path) -> None:
    """The lumbar demo pack (segmentation + rules): each rule's result and measured value is in
    the SR's measurement group, read back by highdicom."""
    import csv

    from edge_worker.backends import select
    from edge_worker.ingest.types import IngestPolicy
    from edge_worker.judging.process import Judge
    from edge_worker.packs.pack import load_pack
    from edge_worker.phantoms.lumbar import write_lumbar_dataset
    from edge_worker.pipeline.runner import Pipeline

    labels = write_lumbar_dataset(tmp_path, 4, 555)
    path = tmp_path / next(csv.DictReader(labels.open()))["file"]
    judge = Judge(Pipeline(load_pack(ROOT / "models" / "packs" / "lumbar-demo"), select(["onnxruntime-cpu"])),
                  "site", "xr-01", IngestPolicy())  # fmt: skip
    verdict = judge(path).payload
    assert verdict["rules"], "the lumbar pack lists its rules"
    sr = hd.sr.srread(io.BytesIO(encode(build_report(verdict, pydicom.dcmread(path, stop_before_pixels=True),
                                                      station="xr-01"))))  # fmt: skip
    group = sr.content.get_image_measurement_groups()[0]
    results = {e.name.value: e.value.value for e in group.get_qualitative_evaluations()}
    measures = {m.name.value: m.value for m in group.get_measurements()}
    for rule in verdict["rules"]:
        assert results[f"RULE-{rule['code']}"] == f"RULE-{rule['status']}"
        if rule["value"] is not None:
            assert measures[f"MEASURE-{rule['code']}"] == pytest.approx(rule["value"])
