"""The flag list (CID 7011 and the pack's own codes), and the worker never importing review."""

from __future__ import annotations

import subprocess
import sys

import pytest

from edge_worker.subscribers.review.errors import InvalidFlags
from edge_worker.subscribers.review.flags import (
    CID_7011,
    meaning,
    validate_flags,
    verdict_reason_codes,
)


def test_cid_7011_codes() -> None:
    by_value = {c.value: c.meaning for c in CID_7011}
    assert len(by_value) == 16
    assert by_value["111209"] == "Positioning" and by_value["111210"] == "Motion blur"
    assert by_value["111211"] == "Under exposed" and by_value["111212"] == "Over exposed"
    assert by_value["111208"] == "Grid artifact(s)" and by_value["111214"] == "Detector artifact(s)"
    assert by_value["113026"] == "Double exposure" and by_value["111213"] == "No image"
    assert meaning(("DCM", "111207")) == "Image artifact(s)"


def test_validate_sorts_dedups_and_names_every_problem() -> None:
    got = validate_flags([["PACK", "rule_failed"], ("DCM", "111209"), ("DCM", "111209")], pack_codes=[])
    assert got == (("DCM", "111209"), ("PACK", "rule_failed"))
    assert validate_flags([("PACK", "lat_endplates")], pack_codes=["lat_endplates"])
    with pytest.raises(InvalidFlags) as caught:
        validate_flags([("DCM", "1"), ("XYZ", "a"), "oops", ("PACK", "bad code"), ("PACK", "other")],
                       pack_codes=["mine"])  # fmt: skip
    assert len(caught.value.problems) == 5
    assert "rule_failed" in verdict_reason_codes()


def test_worker_does_not_import_review() -> None:
    code = (
        "import sys, edge_worker.cli, edge_worker.service, edge_worker.publish.verdict, "
        "edge_worker.subscribers.dashboard.server\n"
        "bad = [m for m in sys.modules if m.startswith(('sqlalchemy', 'alembic', 'psycopg', 'argon2',"
        " 'edge_worker.subscribers.review'))]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
