"""Review copies on the box: made after the verdict, sent through the outbox, kept and pruned.

The pure parts (reduce and encode, the kept copies' pruning) run on values and a tmp folder;
then the real daemon (a subprocess, tests/stations.py) on a real mosquitto judges demo-pack
phantoms with ``[verdict] review_copy`` on: the copy arrives after its verdict, valid, with the
verdict's box inside it at ``* scale``, is kept beside its archived source and deleted with it;
it survives a broker outage and a daemon restart in the outbox; and it is off by default.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from conftest import Mosquitto, Subscriber, find_mosquitto
from stations import PhantomStock, Station, wait_until

from edge_worker.ingest import read_radiograph
from edge_worker.judging.review_copy import make_review_copy, reduce_to
from edge_worker.phantoms.ankle import write_phantom
from edge_worker.publish.review_copy import REVIEW_COPY_SCHEMA, parse_review_copy
from edge_worker.service.config import Config, parse
from edge_worker.watching.copy_keep import KeptCopies
from edge_worker.watching.retention import DAY_S

VID = "00000000-0000-0000-0000-0000000000{:02d}"


class OrderedSubscriber(Subscriber):
    """A subscriber that also records the order of arrival across topics."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.order: list[tuple[str, bytes]] = []
        super().__init__(*args, **kwargs)

    def _on_message(self, client: object, userdata: object, msg: object) -> None:
        self.order.append((msg.topic, bytes(msg.payload)))  # type: ignore[attr-defined]
        super()._on_message(client, userdata, msg)


# -- pure parts ------------------------------------------------------------------------------


def test_reduce_never_enlarges_and_reports_the_factor() -> None:
    grey, factor = reduce_to(np.linspace(0, 1, 600 * 400, dtype=np.float32).reshape(400, 600), 300)
    assert grey.dtype == np.uint8 and grey.shape == (200, 300) and factor == 0.5
    grey, factor = reduce_to(np.zeros((100, 80), np.float32), 1024)
    assert grey.shape == (100, 80) and factor == 1.0
    with pytest.raises(ValueError):
        reduce_to(np.zeros((2, 2, 2), np.float32), 256)


def test_copy_of_a_phantom_is_the_stored_image_reduced_in_display_polarity(tmp_path: Path) -> None:
    path = tmp_path / "p.dcm"
    write_phantom(path, seed=3, size=1200, view="AP", grade=1)
    image = read_radiograph(path, max_side=512)
    copy = make_review_copy(image, 512)
    decoded = cv2.imdecode(np.frombuffer(copy.data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert copy.media_type == "image/png" and decoded.dtype == np.uint8
    assert max(decoded.shape) == 512 and decoded.shape == (copy.height, copy.width)
    rows, cols = image.header.rows, image.header.columns
    assert copy.scale == pytest.approx(512 / max(rows, cols), rel=1e-3)
    # Lossless: the copy is exactly the reduced 8-bit image (no upright turn, no drawing).
    expected, _ = reduce_to(image.pixels, 512)
    assert np.array_equal(decoded, expected)
    with pytest.raises(ValueError):
        make_review_copy(image, 100)


def test_kept_copies_go_with_their_source_then_by_age_and_size(tmp_path: Path) -> None:
    kept = KeptCopies(tmp_path / "copies", max_age_days=10, max_total_mib=2500 / (1 << 20))
    sources = [tmp_path / f"src{n}.dcm" for n in range(5)]
    now = time.time()
    for n, src in enumerate(sources):
        src.write_bytes(b"x")
        path = kept.keep(VID.format(n), "png", b"p" * 1000, src)
        age = (20 if n == 0 else 5 - n) * DAY_S  # 0 is 20 days old; then 4 d, 3 d, 2 d, 1 d
        os.utime(path, (now - age, now - age))
    sources[4].unlink()  # retention deleted the newest copy's source
    assert kept.prune(now) == 3  # 4 (source gone), 0 (age), then 1 (oldest, over 2500 bytes)
    assert [n for n in range(5) if kept.path_of(VID.format(n))] == [2, 3]
    assert not (tmp_path / "copies" / f"{VID.format(4)}.png.source").exists()
    with pytest.raises(ValueError):
        kept.keep("../x", "png", b"", sources[0])
    lone = tmp_path / "copies" / f"{VID.format(9)}.png.source"  # a write cut short after the sidecar
    lone.write_bytes(b"/nowhere")
    assert kept.prune(now) == 1 and not lone.exists()


def test_config_defaults_and_ranges() -> None:
    v = Config().verdict
    assert (v.review_copy, v.review_copy_size) == (False, 1024)
    with pytest.raises(Exception, match="review_copy_size"):
        parse("[verdict]\nreview_copy_size = 4096\n")


# -- the real daemon -------------------------------------------------------------------------


def _station(tmp_path: Path, url: str, name: str, archive_mib: float = 10_240.0, **verdict: Any) -> Station:
    return Station(tmp_path / name, url, site="rc", station=name, tables={
        "verdict": verdict,
        "retention": {"judged": "archive", "archive_folder": str(tmp_path / name / "archive"),
                      "max_total_mib": archive_mib, "interval_seconds": 1.0},
    })  # fmt: skip


def test_copy_follows_its_verdict_is_kept_and_goes_with_the_source(tmp_path: Path, mosquitto: Mosquitto) -> None:
    stock = PhantomStock(tmp_path / "stock")
    # Room in the archive for one and a half phantoms: the second archived file makes retention
    # delete the first, and its copy must go with it.
    bound = 1.5 * stock.path(1).stat().st_size / (1 << 20)
    station = _station(tmp_path, mosquitto.url, "xr-c", bound, review_copy=True, review_copy_size=256)
    folder = station.state / "review-copies"
    sub = OrderedSubscriber(mosquitto.host, mosquitto.port, (f"{station.base}/#",))
    try:
        station.start()
        stock.drop(1, station.watch)
        first = sub.wait_for(f"{station.base}/review-copy", 1, timeout=60)[0]
        first_id = parse_review_copy(first.payload).verdict_id
        wait_until("the first copy kept on the box", (folder / f"{first_id}.png").exists, 10, station)
        source = Path(os.fsdecode((folder / f"{first_id}.png.source").read_bytes()))
        assert source.parent.parent == tmp_path / "xr-c" / "archive" and source.exists()
        assert (folder / f"{first_id}.png").read_bytes() == parse_review_copy(first.payload).data
        stock.drop(2, station.watch)
        copies = sub.wait_for(f"{station.base}/review-copy", 2, timeout=60)
        verdicts = {json.loads(m.payload)["id"]: json.loads(m.payload) for m in sub.messages(f"{station.base}/verdict")}
        for m in copies:
            copy = parse_review_copy(m.payload)
            verdict = verdicts[copy.verdict_id]
            order = [t for t, p in sub.order if copy.verdict_id.encode() in p and t.endswith(("/verdict", "/review-copy"))]
            assert order == [f"{station.base}/verdict", f"{station.base}/review-copy"]
            assert (copy.site, copy.station, copy.media_type) == ("rc", "xr-c", "image/png")
            assert max(copy.width, copy.height) == 256 and copy.scale == pytest.approx(0.5, rel=1e-3)
            x0, y0, x1, y1 = (v * copy.scale for v in verdict["roi"]["box"])
            assert 0 <= x0 < x1 <= copy.width + 1 and 0 <= y0 < y1 <= copy.height + 1
            assert json.loads(m.payload)["schema"] == REVIEW_COPY_SCHEMA and not m.retain
        second_id = parse_review_copy(copies[1].payload).verdict_id
        wait_until("retention deleting the first source, and the copy with it",
                   lambda: not source.exists() and not (folder / f"{first_id}.png").exists(), 15, station)  # fmt: skip
        wait_until("the second copy kept", (folder / f"{second_id}.png").exists, 10, station)
        assert sorted(p.name for p in folder.iterdir()) == [f"{second_id}.png", f"{second_id}.png.source"]
        assert not list(station.watch.glob("*.dcm"))  # disposed of after the copy
    finally:
        sub.close()
        station.close()


def test_copies_are_off_by_default(tmp_path: Path, mosquitto: Mosquitto) -> None:
    stock = PhantomStock(tmp_path / "stock")
    station = _station(tmp_path, mosquitto.url, "xr-off")
    sub = OrderedSubscriber(mosquitto.host, mosquitto.port, (f"{station.base}/#",))
    try:
        station.start()
        stock.drop(1, station.watch)
        sub.wait_for(f"{station.base}/verdict", 1, timeout=60)
        wait_until("the file archived", lambda: not list(station.watch.glob("*.dcm")), 10, station)
        time.sleep(1.0)
        assert sub.messages(f"{station.base}/review-copy") == []
        assert not (station.state / "review-copies").exists()
    finally:
        sub.close()
        station.close()


def test_copy_survives_a_broker_outage_and_a_daemon_restart(tmp_path: Path) -> None:
    binary = find_mosquitto()
    if binary is None:
        pytest.skip("mosquitto binary not found in PATH or /usr/sbin (apt install mosquitto)")
    (tmp_path / "broker").mkdir()
    broker = Mosquitto(binary, tmp_path / "broker", persistence=True)
    broker.start()
    stock = PhantomStock(tmp_path / "stock")
    station = _station(tmp_path, broker.url, "xr-o", review_copy=True, review_copy_size=256)
    sub = OrderedSubscriber(broker.host, broker.port, (f"{station.base}/verdict", f"{station.base}/review-copy"),
                            persistent=True)  # fmt: skip
    try:
        station.start()
        broker.stop()  # the persistent session and its subscription are saved
        stock.drop(5, station.watch)
        wait_until("verdict and copy in the outbox", lambda: station.outbox_depth() >= 2, 60, station)
        station.terminate()
        station.start()  # the outbox is reopened with both rows
        assert station.outbox_depth() >= 2
        broker.start()
        copy = sub.wait_for(f"{station.base}/review-copy", 1, timeout=30)[0]
        verdict = sub.wait_for(f"{station.base}/verdict", 1, timeout=5)[0]
        assert parse_review_copy(copy.payload).verdict_id == json.loads(verdict.payload)["id"]
        topics = [t.rsplit("/", 1)[1] for t, _ in sub.order]
        assert topics.index("verdict") < topics.index("review-copy")
    finally:
        sub.close()
        station.close()
        broker.stop()


def test_payload_matches_its_json_schema() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    from edge_worker.publish.review_copy import build_review_copy

    schema = json.loads((Path(__file__).parents[1] / "edge_worker/schema/review-copy.schema.json").read_text())
    doc = build_review_copy(verdict_id=VID.format(1), site="s", station="t", media_type="image/png",
                            width=10, height=20, scale=0.5, data=b"png")  # fmt: skip
    jsonschema.validate(doc, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(dict(doc, extra=1), schema)


def test_no_copy_for_a_file_that_is_not_the_verdicts_image(tmp_path: Path) -> None:
    from edge_worker.publish.verdict import verdict_id
    from edge_worker.service.review_copier import copy_for_verdict

    path = tmp_path / "p.dcm"
    write_phantom(path, seed=4, size=600, view="LAT", grade=2)
    image = read_radiograph(path, max_side=256)
    verdict = {"id": verdict_id(image.header.sop_instance_uid, image.pixel_digest, "d" * 64),
               "site": "s", "station": "t", "pack": {"digest": "d" * 64}}  # fmt: skip
    made = copy_for_verdict(image, verdict, 256)
    assert made is not None and parse_review_copy(json.dumps(made[1])).verdict_id == verdict["id"]
    # The modality overwrote the file (or a rebuilt pack judged it): the id no longer matches.
    assert copy_for_verdict(image, dict(verdict, pack={"digest": "e" * 64}), 256) is None
