"""Pieces shared by the review pages' tests: a verdict payload, a dashboard with a review
database on a real broker, and a tiny HTTP client that keeps one session's cookie."""

from __future__ import annotations

import http.client
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import paho.mqtt.publish as paho_publish
from argon2 import PasswordHasher

from edge_worker.publish.settings import MqttSettings
from edge_worker.subscribers.dashboard.config import DashboardConfig, parse
from edge_worker.subscribers.dashboard.review_compose import ReviewParts, open_review
from edge_worker.subscribers.dashboard.server import Dashboard

#: Fast argon2 parameters for tests (the real ones take ~50 ms a hash).
FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
PASSWORD = "correct horse battery"


class Clock:
    """A settable POSIX clock (sessions expire when the test says)."""

    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t


def verdict(n: int, decision: str = "ok", station: str = "xr-01") -> dict[str, Any]:
    """A verdict payload with what the board and the store read."""
    return {
        "schema": "xray-qc/verdict@1", "id": f"00000000-0000-0000-0000-{n:012d}", "site": "ward-3",
        "station": station, "decision": decision, "times": {"verdict_made": "2027-01-15T08:00:00+00:00"},
        "quality": {"score": 1.4, "grade": 1, "diagnostic": True}, "view": {"label": "AP", "confidence": 0.97},
        "pack": {"name": "lumbar-demo", "version": "1.0", "digest": "a" * 64},
        "roi": {"found": True, "box": [100, 120, 400, 600], "rotated": None},
        "reasons": [{"code": "rule_failed", "severity": "retake", "text": "spinous processes off centre",
                     "rule": "ap_spinous_centred"}],
        "rules": [{"code": "ap_spinous_centred", "measure": "x", "value": 0.31, "min": None, "max": 0.2,
                   "status": "fail", "sentence": "centre the spine", "criterion": "c", "on_fail": "retake",
                   "stage": "rules"}],
        "not_for_clinical_use": True,
    }  # fmt: skip


def publish(broker: Any, topic: str, payload: bytes) -> None:
    paho_publish.single(topic, payload, qos=1, hostname=broker.host, port=broker.port)


def until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)
    return value


def config_for(tmp: Path, database: str = "", **review: Any) -> DashboardConfig:
    """A dashboard config from TOML text, as the file would give it."""
    lines = [f'[state]\nfolder = "{tmp / "dash-state"}"\n[review]']
    if database:
        lines.append(f'database = "{database}"')
    for key, value in review.items():
        lines.append(f"{key} = {json.dumps(value)}")
    return parse("\n".join(lines) + "\n", "test.toml")


@dataclass
class Running:
    dashboard: Dashboard
    parts: ReviewParts
    clock: Clock

    def stop(self) -> None:
        self.dashboard.stop()
        self.parts.close()


def start_dashboard(broker: Any, config: DashboardConfig, clock: Clock | None = None,
                    users: tuple[tuple[str, str], ...] = (("ann", "tier1"), ("ben", "tier1"), ("tom", "tier2"))) -> Running:  # fmt: skip
    """A started in-process dashboard with the review pages and ``users`` (password PASSWORD)."""
    clock = clock or Clock()
    parts = open_review(config, clock=clock, hasher=FAST, retry_s=0.2)
    for name, role in users:
        parts.accounts.create_user("setup", name, role, PASSWORD, operator=True)
    dashboard = Dashboard(MqttSettings.from_url(broker.url), ("127.0.0.1", 0), heartbeat_s=0.5, review=parts)
    dashboard.start()
    until(lambda: dashboard.snapshot()["broker"]["connected"], 10, "the dashboard to subscribe")
    return Running(dashboard, parts, clock)


@dataclass
class Client:
    """One browser's worth of HTTP: keeps the session cookie, never follows redirects."""

    host: str
    port: int
    cookie: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def request(self, method: str, path: str, form: dict[str, Any] | None = None) -> tuple[int, dict[str, str], str]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        headers = dict(self.extra)
        body = None
        if self.cookie:
            headers["Cookie"] = self.cookie
        if form is not None:
            body = urlencode(form, doseq=True)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            text = resp.read().decode("utf-8", errors="replace")
            got = {k.lower(): v for k, v in resp.getheaders()}
            set_cookie = got.get("set-cookie", "")
            if set_cookie.startswith("ew_review="):
                value = set_cookie.split(";", 1)[0]
                self.cookie = "" if value == "ew_review=" else value
            return resp.status, got, text
        finally:
            conn.close()

    def get(self, path: str) -> tuple[int, dict[str, str], str]:
        return self.request("GET", path)

    def post(self, path: str, form: dict[str, Any]) -> tuple[int, dict[str, str], str]:
        return self.request("POST", path, form)

    def sign_in(self, name: str, password: str = PASSWORD) -> str:
        """Sign in; returns the session's CSRF token read from the next page."""
        status, headers, _ = self.post("/review/signin", {"name": name, "password": password, "next": "/review"})
        assert status == 303, (status, headers)
        return self.csrf()

    def csrf(self) -> str:
        status, _, text = self.get("/review/agreement")
        assert status == 200, status
        found = re.search(r'name="csrf" value="([^"]+)"', text)
        assert found, text[:500]
        return found.group(1)
