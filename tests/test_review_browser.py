"""The review pages in a real browser: mosquitto, two ``edge-worker run`` daemons on the demo
pack, phantoms dropped, the dashboard in-process with a review database (SQLite, then a real
PostgreSQL from tests/review_db.py), and headless chromium driven by selenium.

Tier one confirms one image good and marks one questionable with two flags; a second browser
acting on an image someone changed meanwhile gets the 409 page and confirms against the new
version; tier two is refused "bad" without a flag, then decides bad with one, and reopens
another; the agreement page's numbers equal the store's.  Each step's screenshot is
``review-N-<step>.png`` in the test's tmp folder (and in ``$EDGE_WORKER_SCREENSHOT_DIR`` for
the SQLite run: that is how ``docs/review/*.png`` are made).

Station xr-01 has review copies on (``[verdict] review_copy``): its images are shown with the
ROI box and rule results drawn over them; xr-02's are not, and their pages say so.  One part is
played by the test: the demo pack makes no heatmaps, so the test publishes one of xr-01's
verdicts once more, under a new id, with a heatmap overlay, and the daemon's copy with it.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install -e .[dev])")
pytest.importorskip("sqlalchemy")

import cv2
import numpy as np

from edge_worker.publish.review_copy import build_review_copy
from edge_worker.subscribers.review import agreement
from edge_worker.subscribers.review.store import Status
from tests.browser import (  # noqa: F401
    NEEDS_CHROMIUM,
    Station,
    browsers,
    drop,
    screenshot,
    start_stations,
    stop_process,
)
from tests.review_db import postgres_server, review_url  # noqa: F401
from tests.review_http import PASSWORD, Running, config_for, publish, start_dashboard, until

pytestmark = [NEEDS_CHROMIUM, pytest.mark.timeout(240)]

SITE = "ward-7"
#: (station, view, grade, seed): four images, two per station; nothing assumes the decisions.
PLAN = [("xr-01", "AP", 1, 5100), ("xr-02", "LAT", 3, 5101), ("xr-01", "AP", 3, 5102), ("xr-02", "AP", 1, 5103)]
USERS = (("ann", "tier1"), ("ben", "tier1"), ("tom", "tier2"))


@pytest.fixture
def stations(tmp_path: Path, mosquitto: Any) -> Iterator[dict[str, Station]]:
    made = start_stations(tmp_path, SITE, mosquitto.url, {"xr-01": False, "xr-02": False}, review_copies={"xr-01"})
    try:
        yield made
    finally:
        for station in made.values():
            stop_process(station.proc)


class Shots:
    """Numbered screenshots: review-1-signin.png, review-2-tier1.png, ..."""

    def __init__(self, tmp_path: Path, publish_them: bool) -> None:
        self.tmp_path, self.n, self.publish_them = tmp_path, 0, publish_them

    def take(self, driver: Any, step: str) -> Path:
        self.n += 1
        name = f"review-{self.n}-{step}.png"
        shot = screenshot(driver, self.tmp_path, name, publish=self.publish_them)
        assert shot.stat().st_size > 5_000, name
        return shot


def _sign_in(driver: Any, base: str, name: str) -> None:
    driver.get(base + "review/signin?next=/review")
    driver.find_element("id", "name").send_keys(name)
    driver.find_element("id", "password").send_keys(PASSWORD)
    driver.find_element("id", "signin").click()
    until(lambda: driver.find_elements("id", "who"), 10, f"{name} signed in")


def _status(driver: Any) -> dict[str, str]:
    return dict(driver.execute_script("return Object.assign({}, document.getElementById('status').dataset);"))


def _open(driver: Any, base: str, verdict_id: str) -> None:
    driver.get(f"{base}review/verdict/{verdict_id}")
    until(lambda: driver.find_elements("id", "status"), 10, f"the page of {verdict_id}")


def _click(driver: Any, element_id: str) -> None:
    """Click a submit button and wait for the page that answers (a new document, loaded)."""
    driver.execute_script("window.__before = true;")
    driver.find_element("id", element_id).click()
    until(lambda: driver.execute_script("return window.__before !== true && document.readyState === 'complete';"),
          10, f"the page after {element_id}")  # fmt: skip


def test_review_loop_in_a_real_browser(
    mosquitto: Any, stations: dict[str, Station], browsers: Callable[[], Any], subscriber: Callable[..., Any],  # noqa: F811
    tmp_path: Path, review_url: str,  # noqa: F811
) -> None:  # fmt: skip
    t0 = time.monotonic()
    sub = subscriber(mosquitto, f"xray/{SITE}/+/verdict")
    run: Running = start_dashboard(mosquitto, config_for(tmp_path, database=review_url), users=USERS)
    shots = Shots(tmp_path, publish_them=review_url.startswith("sqlite"))
    try:
        store = run.parts.store
        base = run.dashboard.url
        for station, view, grade, seed in PLAN:
            drop(stations[station], view, grade, seed)
        one = [json.loads(m.payload) for m in sub.wait_for(f"xray/{SITE}/xr-01/verdict", 2, timeout=120)]
        two = [json.loads(m.payload) for m in sub.wait_for(f"xray/{SITE}/xr-02/verdict", 2, timeout=60)]
        ids = [v["id"] for v in (*one, *two)]
        # The test's subscriber may hear a verdict before the dashboard's does.
        until(lambda: {r.id for r in store.tier_one_queue()} == set(ids), 20, "every verdict recorded")
        (a, c), (b, d) = [v["id"] for v in one], [v["id"] for v in two]
        first = one[0]
        # xr-01 sends its copies after each verdict, through its outbox; xr-02 sends none.
        until(lambda: run.parts.copies.get(a) is not None and run.parts.copies.get(c) is not None, 30,
              "xr-01's review copies")  # fmt: skip

        ann = browsers()
        ann.get(base)  # the board needs a sign-in
        until(lambda: "/review/signin" in ann.current_url, 10, "the redirect to sign in")
        shots.take(ann, "signin")
        _sign_in(ann, base, "ann")
        ann.get(base + "review/tier1")
        rows = ann.execute_script("return Array.from(document.querySelectorAll('#queue tbody tr')).map(r => r.dataset.id);")
        assert sorted(rows) == sorted(ids)
        shots.take(ann, "tier1")

        # Tier one: A good (with the copy, its ROI box and rule marks drawn over it).
        _open(ann, base, a)
        assert ann.find_element("id", "review-image").is_displayed()
        assert bool(ann.find_elements("id", "roi-box")) == bool(first["roi"]["box"])
        shots.take(ann, "verdict")
        _click(ann, "tier1-good")
        expect_a = Status.DISPUTED if first["decision"] == "retake" else Status.GOOD
        assert _status(ann)["status"] == expect_a.value and store.get(a).status == expect_a
        # B questionable with two flags and a comment; no copy: the page says so.
        _open(ann, base, b)
        assert "no review copy" in ann.find_element("id", "no-copy").text
        for flag in ("DCM:111209", "DCM:111210"):
            ann.find_element("css selector", f'#form-tier1 input[name="flag"][value="{flag}"]').click()
        ann.find_element("id", "tier1-comment").send_keys("rotated, blurred")
        shots.take(ann, "questionable")
        _click(ann, "tier1-questionable")
        assert store.get(b).status == Status.QUESTIONABLE
        review = store.reviews_of(b)[-1]
        assert (review.user, review.flags, review.comment) == ("ann", (("DCM", "111209"), ("DCM", "111210")), "rotated, blurred")

        # A second browser on C, while ann changes C first: 409 with ann's change, then confirm.
        ben = browsers()
        _sign_in(ben, base, "ben")
        _open(ben, base, c)
        _open(ann, base, c)
        _click(ann, "tier1-questionable")
        ben.find_element("css selector", '#form-tier1 input[name="flag"][value="DCM:111211"]').click()
        _click(ben, "tier1-good")
        earlier = ben.find_element("id", "earlier")
        assert (earlier.get_attribute("data-user"), earlier.get_attribute("data-outcome")) == ("ann", "questionable")
        assert store.get(c).version == 2
        shots.take(ben, "conflict")
        _click(ben, "confirm")
        assert store.get(c).version == 3 and store.reviews_of(c)[-1].user == "ben"

        # Tier two: B bad without a flag is refused, with one it is final; A is reopened.
        _click(ann, "signout")
        assert "/review/signin" in ann.current_url
        _sign_in(ann, base, "tom")
        ann.get(base + "review/tier2")
        queued = set(ann.execute_script("return Array.from(document.querySelectorAll('#queue tbody tr')).map(r => r.dataset.id);"))
        assert queued == {r.id for r in store.tier_two_queue()} and b in queued
        shots.take(ann, "tier2")
        _open(ann, base, b)
        _click(ann, "tier2-bad")
        assert "bad needs at least one flag" in ann.find_element("id", "message").text
        assert store.get(b).status == Status.QUESTIONABLE
        shots.take(ann, "refused")
        ann.find_element("css selector", '#form-tier2 input[name="flag"][value="DCM:111209"]').click()
        _click(ann, "tier2-bad")
        assert store.get(b).status == Status.FINAL_BAD
        _open(ann, base, a)
        _click(ann, "reopen-reopen")
        assert store.get(a).status == Status.REOPENED

        # The agreement page's numbers are the store's.
        ann.get(base + "review/agreement")
        shown = ann.execute_script("return Array.from(document.querySelectorAll('table.agreement tbody tr'))"
                                   ".map(r => Object.assign({}, r.dataset));")  # fmt: skip
        expected = [{"tier": str(x.tier), "dimension": x.dimension, "key": x.key, "reviewed": str(x.reviewed),
                     "agreed": str(x.agreed)} for x in agreement.agreement(store)]  # fmt: skip
        assert sorted(sorted(x.items()) for x in shown) == sorted(sorted(x.items()) for x in expected)
        assert any(x["reviewed"] != "0" for x in shown) or not expected
        assert len(ann.find_elements("css selector", "svg.bars")) >= (1 if expected else 0)
        shots.take(ann, "agreement")

        # A heatmap overlay (a chest pack's verdicts carry one; the demo pack's do not): A's
        # verdict again under a new id with an overlay, and A's copy; the switch hides it.
        heat = np.zeros((64, 64, 4), np.uint8)
        cv2.circle(heat, (40, 24), 14, (0, 0, 255, 200), -1)
        overlay = "data:image/png;base64," + base64.b64encode(cv2.imencode(".png", heat)[1].tobytes()).decode()
        hot = dict(first, id="00000000-0000-4000-8000-00000000beef", heatmaps={"opacity": {"overlay": overlay}})
        publish(mosquitto, f"xray/{SITE}/{first['station']}/verdict", json.dumps(hot).encode())
        theirs = run.parts.copies.get(a)
        assert theirs is not None
        copy = build_review_copy(verdict_id=hot["id"], site=SITE, station=first["station"], media_type=theirs.media_type,
                                 width=theirs.width, height=theirs.height, scale=theirs.scale, data=theirs.data)  # fmt: skip
        publish(mosquitto, f"xray/{SITE}/{first['station']}/review-copy", json.dumps(copy).encode())
        until(lambda: run.parts.copies.get(hot["id"]) is not None, 10, "the second copy")
        _open(ann, base, hot["id"])
        layer = 'return document.querySelector("#review-image .heatmap").getAttribute("visibility");'
        assert ann.execute_script(layer) == "visible"
        shots.take(ann, "heatmap")
        ann.find_element("id", "heatmap-toggle").click()
        assert ann.execute_script(layer) == "hidden"
        # The board still works for a signed-in reviewer.
        ann.get(base)
        until(lambda: ann.execute_script("return document.body.dataset.server") == "live", 10, "the board live")
        assert ann.find_element("id", "review-link").is_displayed()
        _ = d  # the fourth image stays in tier one's queue
        assert d in {r.id for r in store.tier_one_queue()}
    finally:
        run.stop()
    print(f"review browser test took {time.monotonic() - t0:.1f} s on {review_url.split(':')[0]}")
