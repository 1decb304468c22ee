"""The review pages over HTTP (no browser): a real broker, the dashboard in-process, the review
database on SQLite (and PostgreSQL where the tests say so, tests/review_db.py).

Sign-in gate, CSRF refusals with their audit rows, an expired session, the 409 conflict page,
404 for a verdict never received, 422 for bad without a flag, 503 with the database stopped
while the board keeps working and the verdicts received meanwhile are recorded afterwards,
/metrics, the config file and ``edge-worker review adduser``.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("sqlalchemy")
pytest.importorskip("argon2")

from edge_worker.cli import main
from edge_worker.errors import ConfigError
from edge_worker.subscribers.dashboard.config import parse
from edge_worker.subscribers.review.store import ReviewStore, Status
from tests.review_db import PostgresServer, find_pg_bin, postgres_server, review_url  # noqa: F401
from tests.review_http import Client, Running, config_for, publish, start_dashboard, until, verdict

V1 = verdict(1)["id"]


def _record(run: Running, broker: Any, *payloads: dict[str, Any]) -> None:
    """Publish verdicts on the broker and wait for the dashboard to record them."""
    for p in payloads:
        publish(broker, f"xray/{p['site']}/{p['station']}/verdict", json.dumps(p).encode())
    ids = {p["id"] for p in payloads}
    until(lambda: ids <= {r.id for r in run.parts.store.queue(list(Status), 1000)}, 10, "verdicts recorded")


@pytest.fixture
def running(mosquitto: Any, tmp_path: Path) -> Iterator[Running]:
    run = start_dashboard(mosquitto, config_for(tmp_path))
    yield run
    run.stop()


def _client(run: Running, **extra: str) -> Client:
    host, port = run.dashboard.address
    return Client(host, port, extra=dict(extra))


def test_board_needs_sign_in_and_proxy_header_is_off_by_default(running: Running, mosquitto: Any) -> None:
    c = _client(running, **{"X-Remote-User": "ann"})  # no proxy is configured: the header means nothing
    status, headers, _ = c.get("/")
    assert status == 303 and headers["location"] == "/review/signin?next=/"
    assert c.get("/api/stations")[0] == 401
    assert c.get("/events")[0] == 401
    assert c.get("/review/tier1")[0] == 303
    assert c.get("/app.js")[0] == 200  # the script carries no data
    c.sign_in("ann")
    assert "HttpOnly; SameSite=Strict" in c.post("/review/signin", {"name": "ann", "password": "correct horse battery",
                                                                     "next": "/"})[1]["set-cookie"]  # fmt: skip
    assert "Secure" not in c.post("/review/signin", {"name": "ann", "password": "correct horse battery"})[1]["set-cookie"]
    status, _, body = c.get("/api/stations")
    assert status == 200 and "stations" in json.loads(body)
    assert c.get("/")[0] == 200
    wrong = _client(running)
    status, _, text = wrong.post("/review/signin", {"name": "ann", "password": "nope", "next": "/"})
    assert status == 401 and "wrong user name or password" in text
    assert running.parts.store.audit_log()[-1]["outcome"] == "refused:auth"


def test_public_board_and_trusted_proxy_header(mosquitto: Any, tmp_path: Path) -> None:
    run = start_dashboard(mosquitto, config_for(tmp_path, public_board=True, proxy_user_header="X-Remote-User",
                                                secure_cookie=True))  # fmt: skip
    try:
        assert _client(run).get("/")[0] == 200  # public board: no sign-in
        assert _client(run).get("/review/tier1")[0] == 303  # the review pages still need one
        c = _client(run, **{"X-Remote-User": "tom"})
        status, headers, text = c.get("/review/tier2")
        assert status == 200 and 'data-user="tom"' in text
        assert headers["set-cookie"].endswith("Secure")
        assert _client(run, **{"X-Remote-User": "nobody"}).get("/review/tier2")[0] == 303
    finally:
        run.stop()


def test_csrf_missing_forged_or_replayed_is_403_and_audited(running: Running, mosquitto: Any) -> None:
    _record(running, mosquitto, verdict(1))
    c = _client(running)
    old = c.sign_in("ann")
    c.post("/review/signout", {"csrf": old})
    token = c.sign_in("ann")
    assert token != old
    path = f"/review/verdict/{V1}/tier1"
    for given in (None, "forged-token", old):
        form = {"version": 1, "outcome": "good"} | ({"csrf": given} if given else {})
        status, _, text = c.post(path, form)
        assert status == 403 and "nothing was changed" in text, (given, status)
    refusals = [a for a in running.parts.store.audit_log(V1) if a["action"] == "csrf"]
    assert [a["outcome"] for a in refusals] == ["refused:csrf"] * 3
    assert [a["detail"]["token"] for a in refusals] == ["missing"] + ["does not match this session"] * 2
    assert running.parts.store.get(V1).version == 1
    assert c.post(path, {"csrf": token, "version": 1, "outcome": "good"})[0] == 303
    assert running.parts.store.get(V1).status == Status.GOOD


def test_expired_session_redirects_to_sign_in_and_changes_nothing(running: Running, mosquitto: Any) -> None:
    _record(running, mosquitto, verdict(1))
    c = _client(running)
    token = c.sign_in("ann")
    running.clock.t += 8 * 3600 + 1  # session_minutes defaults to 480
    status, headers, _ = c.post(f"/review/verdict/{V1}/tier1", {"csrf": token, "version": 1, "outcome": "good"})
    assert status == 303 and headers["location"].startswith("/review/signin?expired=1&next=")
    assert running.parts.store.get(V1).version == 1 and running.parts.store.reviews_of(V1) == []
    status, _, text = c.get(headers["location"])
    assert status == 200 and "Your session ended" in text


def test_conflict_page_shows_the_earlier_change_and_confirms_against_it(running: Running, mosquitto: Any) -> None:
    _record(running, mosquitto, verdict(1))
    ann, ben = _client(running), _client(running)
    t_ann, t_ben = ann.sign_in("ann"), ben.sign_in("ben")
    assert ann.post(f"/review/verdict/{V1}/tier1", {"csrf": t_ann, "version": 1, "outcome": "good"})[0] == 303
    form = {"csrf": t_ben, "version": 1, "outcome": "questionable", "flag": ["DCM:111209", "PACK:ap_spinous_centred"],
            "comment": "off centre"}  # fmt: skip
    status, _, text = ben.post(f"/review/verdict/{V1}/tier1", form)
    assert status == 409
    assert 'id="earlier" data-user="ann" data-outcome="good"' in text
    assert 'name="version" value="2"' in text and 'id="confirm"' in text
    assert running.parts.store.get(V1).status == Status.GOOD
    confirm = dict(form, version=2)
    assert ben.post(f"/review/verdict/{V1}/tier1", confirm)[0] == 303
    record = running.parts.store.get(V1)
    assert (record.status, record.version) == (Status.QUESTIONABLE, 3)
    assert running.parts.store.reviews_of(V1)[-1].flags == (("DCM", "111209"), ("PACK", "ap_spinous_centred"))


def test_unknown_verdict_404_and_bad_without_flag_422(running: Running, mosquitto: Any) -> None:
    _record(running, mosquitto, verdict(1, "retake"))
    tom = _client(running)
    token = tom.sign_in("tom")
    missing = "ffffffff-0000-0000-0000-000000000000"
    status, _, text = tom.post(f"/review/verdict/{missing}/tier2", {"csrf": token, "version": 1, "outcome": "bad"})
    assert status == 404 and f"no verdict {missing} was received" in text
    assert tom.get(f"/review/verdict/{missing}")[0] == 404
    assert tom.post(f"/review/verdict/{V1}/tier1", {"csrf": token, "version": 1, "outcome": "questionable"})[0] == 303
    status, _, text = tom.post(f"/review/verdict/{V1}/tier2", {"csrf": token, "version": 2, "outcome": "bad"})
    assert status == 422 and "bad needs at least one flag" in text
    assert running.parts.store.get(V1).status == Status.QUESTIONABLE
    form = {"csrf": token, "version": 2, "outcome": "bad", "flag": "DCM:111210"}
    assert tom.post(f"/review/verdict/{V1}/tier2", form)[0] == 303
    assert running.parts.store.get(V1).status == Status.FINAL_BAD
    # The verdict page without a copy store says so and still offers the reopen form.
    status, _, text = tom.get(f"/review/verdict/{V1}")
    assert status == 200 and "no review copy (station has review copies off, or it expired)" in text
    assert 'id="form-reopen"' in text and 'id="rules"' in text
    assert tom.get(f"/review/copy/{V1}")[0] == 404
    assert _client(running).get(f"/review/copy/{V1}")[0] == 303  # sign-in required


def test_metrics_serve_agreement_and_the_alert_gauge(running: Running, mosquitto: Any) -> None:
    _record(running, mosquitto, verdict(1, "ok"), verdict(2, "retake"))
    ann = _client(running)
    token = ann.sign_in("ann")
    for vid in (verdict(1)["id"], verdict(2)["id"]):  # good on ok agrees; good on retake does not
        assert ann.post(f"/review/verdict/{vid}/tier1", {"csrf": token, "version": 1, "outcome": "good"})[0] == 303
    status, headers, text = _client(running).get("/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    assert 'review_agreement_reviews{tier="1",dimension="station",key="xr-01"} 2' in text
    assert 'review_agreement_agreed{tier="1",dimension="station",key="xr-01"} 1' in text
    assert 'review_agreement_alert{tier="1"} 1' in text and "review_agreement_alert_active 1" in text
    assert "review_database_up 1" in text and "review_recorder_pending 0" in text
    status, _, page = ann.get("/review/agreement")
    assert 'id="agreement-alert"' in page and "under 80%" in page
    assert 'data-tier="1" data-dimension="view" data-key="AP" data-reviewed="2" data-agreed="1"' in page


def test_database_down_503_board_live_and_nothing_lost(mosquitto: Any, tmp_path: Path) -> None:
    pytest.importorskip("psycopg")
    bindir = find_pg_bin()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl)")
    server = PostgresServer(bindir)  # its own server: this test stops it
    server.start()
    run = None
    try:
        run = start_dashboard(mosquitto, config_for(tmp_path, database=server.create_database()))
        _record(run, mosquitto, verdict(1))
        c = _client(run)
        token = c.sign_in("ann")
        server.halt()
        # Received while the database is down: on the board at once, recorded later.
        publish(mosquitto, "xray/ward-3/xr-02/verdict", json.dumps(verdict(2, "retake", "xr-02")).encode())
        until(lambda: any(s["key"] == "ward-3/xr-02" for s in run.dashboard.snapshot()["stations"]), 5, "board update")
        status, _, body = c.get("/api/stations")  # a session seen before the outage still sees the board
        assert status == 200 and "ward-3/xr-02" in body
        status, _, text = c.post(f"/review/verdict/{V1}/tier1", {"csrf": token, "version": 1, "outcome": "good"})
        assert status == 503 and "review database unavailable, nothing was changed" in text
        assert c.get("/review/tier1")[0] == 503
        metrics = c.get("/metrics")[2]
        assert "review_database_up 0" in metrics and "review_recorder_pending" in metrics
        until(lambda: run.parts.recorder.waiting_for_database, 5, "the recorder to notice")
        server.resume()
        assert run.parts.recorder.drain(20)
        store = run.parts.store
        assert store.get(verdict(2)["id"]).decision == "retake"
        assert store.get(V1).version == 1  # the refused change left nothing behind
        assert c.post(f"/review/verdict/{V1}/tier1", {"csrf": token, "version": 1, "outcome": "good"})[0] == 303
    finally:
        if run is not None:
            run.stop()
        server.stop()


def test_review_pages_on_postgresql(mosquitto: Any, tmp_path: Path, review_url: str) -> None:  # noqa: F811
    run = start_dashboard(mosquitto, config_for(tmp_path, database=review_url))
    try:
        _record(run, mosquitto, verdict(1))
        ann, ben = _client(run), _client(run)
        t_ann, t_ben = ann.sign_in("ann"), ben.sign_in("ben")
        assert ann.post(f"/review/verdict/{V1}/tier1", {"csrf": t_ann, "version": 1, "outcome": "good"})[0] == 303
        assert ben.post(f"/review/verdict/{V1}/tier1", {"csrf": t_ben, "version": 1, "outcome": "good"})[0] == 409
    finally:
        run.stop()


def test_config_is_strict_and_documented_defaults(tmp_path: Path) -> None:
    config = parse("[review]\n", "d.toml", base=tmp_path)
    assert config.review.enabled and not config.review.public_board and config.review.proxy_user_header == ""
    assert config.database_url == "sqlite:////var/lib/edge-worker-dashboard/review.sqlite3"
    rel = parse('[state]\nfolder = "st"\n', "d.toml", base=tmp_path)
    assert rel.database_url == f"sqlite:///{tmp_path / 'st' / 'review.sqlite3'}"
    with pytest.raises(ConfigError, match=r"d.toml:3: unknown key 'review.public_bord'"):
        parse("[review]\nenabled = true\npublic_bord = true\n", "d.toml")
    with pytest.raises(ConfigError, match=r"d.toml:2: review.agreement_alert_below must be between 0 and 1"):
        parse("[review]\nagreement_alert_below = 80\n", "d.toml")


def test_cli_dashboard_config_errors_name_the_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "dashboard.toml"
    bad.write_text("[review]\nsession_minutes = 0\n")
    assert main(["dashboard", "--mqtt", "mqtt://127.0.0.1:1", "--config", str(bad)]) == 2
    assert f"{bad}:2: review.session_minutes must be between 1 and 10080" in capsys.readouterr().err


def test_cli_adduser_reads_stdin_and_audits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    conf = tmp_path / "dashboard.toml"
    conf.write_text(f'[state]\nfolder = "{tmp_path}"\n')
    monkeypatch.setattr("sys.stdin", io.StringIO("a long password\n"))
    assert main(["review", "adduser", "ann", "--role", "tier1", "--config", str(conf), "--password-stdin"]) == 0
    assert "review user ann (tier1) added" in capsys.readouterr().out
    monkeypatch.setattr("sys.stdin", io.StringIO("a long password\n"))
    assert main(["review", "adduser", "ann", "--role", "tier2", "--config", str(conf), "--password-stdin"]) == 2
    assert "exists already" in capsys.readouterr().err
    store = ReviewStore(f"sqlite:///{tmp_path / 'review.sqlite3'}")
    try:
        rows = [a for a in store.audit_log() if a["action"] == "create_user"]
        assert len(rows) == 1 and rows[0]["outcome"] == "done" and rows[0]["actor"].startswith("cli:")
        assert rows[0]["detail"] == {"name": "ann", "role": "tier1", "via": "command line"}
    finally:
        store.close()


def test_review_copy_from_mqtt_drawn_with_roi_rules_and_heatmap(running: Running, mosquitto: Any) -> None:
    import base64

    import cv2
    import numpy as np

    from edge_worker.publish.review_copy import build_review_copy

    assert running.parts.copies is not None, "the copy store (review.copies) is part of this build"
    image = np.full((400, 300), 90, np.uint8)
    ok, png = cv2.imencode(".png", image)
    assert ok
    heat = base64.b64encode(cv2.imencode(".png", np.zeros((8, 6, 4), np.uint8))[1].tobytes()).decode()
    payload = verdict(1) | {"heatmaps": {
        "lung_opacity": {"peak_x": 0.5, "overlay": f"data:image/png;base64,{heat}"},
        "COVID-19": {"stage": "finding_cam", "research_only": True, "overlay": f"data:image/png;base64,{heat}"}}}
    _record(running, mosquitto, payload)
    copy = build_review_copy(verdict_id=V1, site="ward-3", station="xr-01", media_type="image/png",
                             width=300, height=400, scale=0.5, data=png.tobytes())  # fmt: skip
    publish(mosquitto, "xray/ward-3/xr-01/review-copy", json.dumps(copy).encode())
    until(lambda: running.parts.copies.get(V1) is not None, 10, "the copy kept")
    c = _client(running)
    c.sign_in("ann")
    status, headers, _ = c.get(f"/review/copy/{V1}")
    assert status == 200 and headers["content-type"] == "image/png"
    status, _, text = c.get(f"/review/verdict/{V1}")
    assert status == 200 and f'href="/review/copy/{V1}"' in text
    # The ROI box [100, 120, 400, 600] in stored pixels, times the copy's scale 0.5.
    assert '<rect id="roi-box" x="50.0" y="60.0" width="150.0" height="240.0"' in text
    assert 'class="heatmap" data-label="lung_opacity"' in text and 'id="heatmap-toggle"' in text
    # A research stage's map is kept apart: hidden, with its own toggle saying what it is.
    assert 'class="heatmap" data-label="COVID-19"' not in text
    research = re.search(r'<image class="heatmap-research" data-label="COVID-19"[^>]*>', text)
    assert research is not None and 'visibility="hidden"' in research.group(0)
    assert 'id="research-heatmap-toggle"' in text and "research only, not a diagnosis" in text
    assert "FAIL ap_spinous_centred = 0.31" in text
    # A refused payload (bad sha256) is logged and kept out; the board never saw either topic's copy.
    publish(mosquitto, "xray/ward-3/xr-01/review-copy", json.dumps(copy | {"verdict_id": verdict(9)["id"],
                                                                           "sha256": "0" * 64}).encode())  # fmt: skip
    assert running.parts.recorder.drain(10)
    assert running.parts.copies.get(verdict(9)["id"]) is None
    assert running.dashboard.board.messages["unusable"] == 0 and running.dashboard.board.messages["verdict"] == 1


def test_recorder_prunes_old_copies_on_its_own_thread(tmp_path: Path) -> None:
    import cv2
    import numpy as np

    from edge_worker.publish.review_copy import build_review_copy
    from edge_worker.subscribers.dashboard.recorder import Recorder
    from edge_worker.subscribers.review.copies import ReviewCopies
    from tests.review_http import Clock

    clock = Clock()
    store = ReviewStore(f"sqlite:///{tmp_path / 'r.sqlite3'}", clock=clock)
    copies = ReviewCopies(store, max_age_days=1, max_bytes=10_000_000)
    recorder = Recorder(store, copies, prune_s=0.1)
    recorder.start()
    try:
        png = cv2.imencode(".png", np.zeros((300, 300), np.uint8))[1].tobytes()
        payload = build_review_copy(verdict_id=V1, site="ward-3", station="xr-01", media_type="image/png",
                                    width=300, height=300, scale=1.0, data=png)  # fmt: skip
        recorder.offer("review-copy", json.dumps(payload).encode())
        recorder.offer("verdict", json.dumps(verdict(1)).encode())
        assert recorder.drain(10) and copies.get(V1) is not None and store.get(V1).id == V1
        clock.t += 2 * 86_400
        until(lambda: copies.get(V1) is None, 5, "the old copy pruned")
        assert recorder.pruned == 1 and recorder.copies_kept == 1 and recorder.recorded == 1
    finally:
        recorder.stop()
        store.close()


def test_image_overlay_draws_in_copy_pixels_and_shows_at_most_640() -> None:
    from edge_worker.subscribers.dashboard.review_svg import image_overlay

    svg = image_overlay("/review/copy/x", 1440, 1080, 0.5, verdict(1))
    assert 'width="640" height="480" viewBox="0 0 1440 1080"' in svg
    # ROI [100, 120, 400, 600] * 0.5, drawn with a stroke of 3 screen pixels (6.75 copy pixels).
    assert '<rect id="roi-box" x="50.0" y="60.0" width="150.0" height="240.0" fill="none" stroke="#ffe14d" stroke-width="6.8"' in svg
    assert "<script" not in image_overlay("/c", 10, 10, 1.0, verdict(1) | {"rules": [{"code": "<script>", "status": "fail"}]})
