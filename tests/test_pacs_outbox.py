"""The PACS outbox (edge_worker/pacs/outbox.py) and the [pacs] config, without a PACS.

Keys are never sent twice (a sent row stays, without its bytes), back-off is stored, a damaged
file is healed like the other state files (the damage helper of tests/test_state_heal.py), and
the config refuses what a PACS would refuse.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import FileMetaDataset

from edge_worker.errors import ConfigError
from edge_worker.pacs.outbox import PacsOutbox
from edge_worker.service.config import parse
from tests.test_state_heal import _damage, _damaged_copies


def part10(i: int) -> bytes:
    """A small valid DICOM Part 10 object with some padding (so the file spans many pages)."""
    ds = pydicom.Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.88.34", f"2.25.{i}"
    ds.PatientComments = "x" * 2000
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_a_key_is_stored_once_sent_once_and_backed_off(tmp_path: Path) -> None:
    with_path = tmp_path / "pacs.sqlite3"
    box = PacsOutbox(with_path)
    try:
        assert box.put("sr:v1", "sr", "v1", "2.25.1", part10(1))
        assert not box.put("sr:v1", "sr", "v1", "2.25.1", part10(99))  # the first bytes win
        [entry] = box.due(time.time())
        assert entry.data == part10(1) and entry.attempts == 0
        box.mark_failed(entry.row_id, "unreachable: refused", time.time() + 60)
        assert box.due(time.time()) == [] and box.depth() == 1
        assert box.oldest_error() == "unreachable: refused"
        assert box.next_due() is not None and box.next_due() > time.time() + 50  # type: ignore[operator]
        box.mark_sent(entry.row_id)
        assert box.depth() == 0 and box.state("sr:v1") == ("sent", "2.25.1")
        assert not box.put("sr:v1", "sr", "v1", "2.25.1", part10(1))  # sent: never again
        box.keep_source("v1", json.dumps({"a": 1}))
        box.keep_source("v1", json.dumps({"a": 2}))
        assert json.loads(box.source("v1") or "") == {"a": 1} and box.source("v2") is None
        box.put("kos:c1", "kos", "v1", "2.25.2", part10(2))
        assert box.latest_for("v1", ("kos", "revoke")) == ("kos:c1", "kos", "pending", "2.25.2")
        assert box.cancel("kos:c1") and box.state("kos:c1") == ("cancelled", "2.25.2")
        box.put("sr:v9", "sr", "v9", "2.25.9", part10(9))
        assert box.prune(time.time() + 1) == 3  # the header, the sent SR, the cancelled KOS
        assert box.source("v1") is None and box.state("sr:v1") is None and box.state("sr:v9") == ("pending", "2.25.9")
        assert box.put("sr:v1", "sr", "v1", "2.25.1", part10(1))  # forgotten: it may be sent again (same UIDs)
    finally:
        box.close()
    again = PacsOutbox(with_path)  # a restart keeps all of it
    try:
        assert again.damage is None and again.state("sr:v9") == ("pending", "2.25.9")
    finally:
        again.close()


def test_damaged_pacs_outbox_is_healed_and_keeps_whole_objects(tmp_path: Path) -> None:
    path = tmp_path / "pacs.sqlite3"
    box = PacsOutbox(path)
    for i in range(200):
        box.put(f"sr:v{i}", "sr", f"v{i}", f"2.25.{i}", part10(i))
    box.close()
    _damage(path, "garbage")
    healed = PacsOutbox(path)
    try:
        assert healed.damage is not None and len(_damaged_copies(tmp_path, "pacs.sqlite3")) == 1
        due = healed.due(time.time(), limit=1000)
        assert len(due) >= 150 and healed.damage.recovered.get("objects") == len(due)
        for entry in due:  # every object kept is whole: it parses, and is the one put
            assert pydicom.dcmread(io.BytesIO(entry.data)).SOPInstanceUID == entry.sop_uid
    finally:
        healed.close()


def test_pacs_config_is_strict() -> None:
    ok = parse('[pacs]\nenabled = true\nhost = "pacs"\ncalled_ae = "PACS"\n'
               'revoke_code = "REVOKE_REJECTION^99DCM4CHEE^Restore rejected Instances"\n')  # fmt: skip
    assert ok.pacs.enabled and ok.pacs.port == 104 and ok.pacs.ae_title == "EDGEWORKER"
    assert not parse("").pacs.enabled  # off by default
    for text, key in (
        ('[pacs]\nenabled = true\ncalled_ae = "PACS"\n', "pacs.host"),
        ('[pacs]\nenabled = true\nhost = "h"\n', "pacs.called_ae"),
        ('[pacs]\nenabled = true\nhost = "h"\ncalled_ae = "SEVENTEEN-CHARS-X"\n', "pacs.called_ae"),
        ('[pacs]\nae_title = "BACK\\\\SLASH"\n', "pacs.ae_title"),
        ('[pacs]\nport = 0\n', "pacs.port"),
        ('[pacs]\ntimeout_seconds = 0.1\n', "pacs.timeout_seconds"),
        ('[pacs]\nrevoke_code = "CODE^SCHEME"\n', "pacs.revoke_code"),
        ('[pacs.tls_files]\nca_file = "/ca"\n', "pacs.tls"),
        ('[pacs]\ntls = true\n[pacs.tls_files]\ncert_file = "/c"\n', "pacs.tls_files.cert_file"),
        ('[pacs]\nsend_reprots = true\n', "pacs.send_reprots"),
    ):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            parse(text)


def test_withdrawing_a_rejection_not_yet_sent_cancels_it(tmp_path: Path) -> None:
    """The rejection never reached the PACS: it is cancelled, never sent, and nothing else is
    made (no revocation needed); a second withdrawal finds nothing to withdraw."""
    from edge_worker.pacs import commands
    from edge_worker.pacs.sr import source_header
    from edge_worker.phantoms.ankle import write_phantom

    write_phantom(tmp_path / "a.dcm", seed=4, size=256, grade=3)
    header = source_header(pydicom.dcmread(tmp_path / "a.dcm", stop_before_pixels=True))
    box = PacsOutbox(tmp_path / "pacs.sqlite3")
    try:
        box.keep_source("v1", header.to_json())
        base = {"schema": "xray-qc/reject@1", "verdict_id": "v1", "sop_instance_uid": str(header.SOPInstanceUID),
                "study_instance_uid": str(header.StudyInstanceUID), "series_instance_uid": str(header.SeriesInstanceUID),
                "confirmed_by": "anna", "tier": 2, "confirmed_at": "2026-12-03T17:00:00+00:00", "review_version": 1}  # fmt: skip
        reject = {**base, "id": "r1", "action": "reject", "reason": {"code": "111211", "scheme": "DCM", "meaning": "Under exposed"}}
        queued = commands.act(box, reject, None)
        assert queued["outcome"] == "queued" and box.depth() == 1
        withdraw = {**base, "id": "w1", "action": "withdraw"}
        done = commands.act(box, withdraw, None)
        assert (done["outcome"], done["reason"]) == ("sent", "cancelled")
        assert box.depth() == 0 and box.due(time.time()) == []  # never sent
        assert commands.act(box, withdraw, None) == done  # the same id: the same answer
        again = commands.act(box, {**withdraw, "id": "w2"}, None)
        assert (again["outcome"], again["reason"]) == ("refused", "nothing_to_withdraw")
        repeated = commands.act(box, reject, None)  # r1 again: its KOS was withdrawn, never sent
        assert (repeated["outcome"], repeated["reason"]) == ("refused", "withdrawn")
    finally:
        box.close()
