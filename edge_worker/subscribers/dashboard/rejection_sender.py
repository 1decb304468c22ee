"""The dashboard's rejection sender: publishes the review store's pending rejection commands to
``<prefix>/<site>/<station>/reject`` and records the worker's answers from ``.../reject/result``.

Write before you send (STYLE.md 7): a command is a row of ``review_rejections`` written with the
review that confirmed it (``review/rejections.py``); this thread only reads due rows, publishes
them (QoS 1) under the ``[review] mqtt_username`` broker user, and counts each publish the broker
acknowledged.  A command stays ``pending`` until the worker answers, and is published again, with
the same id, after a doubling back-off: a broker, worker or database outage delays a command and
never loses one.  An answer that cannot be recorded (the database is down) is dropped here on
purpose: the command is still pending, is published again, and the worker, which acts on an id
once, answers the same again.

The subscription uses the dashboard feed (:class:`MqttFeed`: persistent session, reconnects,
truthful state) under its own client id ``edge-worker-review-<host>``.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

from edge_worker.publish.settings import MqttSettings
from edge_worker.subscribers.dashboard.feed import MqttFeed
from edge_worker.subscribers.review.errors import StoreUnavailable
from edge_worker.subscribers.review.rejections import Rejections

log = logging.getLogger(__name__)


class RejectionSender:
    """Publishes due commands every ``tick_s`` seconds while connected; see the module docstring.

    ``settings``: the broker, with the review user's name and password; ``prefix``: the first
    topic level.  :meth:`start` returns at once; :meth:`stop` joins the thread and the feed.
    """

    def __init__(self, rejections: Rejections, settings: MqttSettings, prefix: str = "xray", *,
                 tick_s: float = 1.0, client_id: str | None = None) -> None:  # fmt: skip
        self.rejections = rejections
        self.prefix = prefix
        self.tick_s = tick_s
        self.published = 0  # publishes the broker acknowledged (a counter for /metrics)
        self.answers = 0  # results recorded
        self._feed = MqttFeed(settings, [f"{prefix}/+/+/reject/result"], self._on_message, self._on_state,
                              purpose="review", client_id=client_id)  # fmt: skip
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def connected(self) -> bool:
        """True while the broker has granted the results subscription."""
        return self._feed.connected

    def start(self) -> None:
        """Connect in the background and start the sending thread (ConfigError: TLS files)."""
        self._feed.start()
        self._thread = threading.Thread(target=self._run, name="review-rejection-sender", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread, then the feed.  Idempotent."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        self._feed.stop()

    def wake(self) -> None:
        """Look for due commands now (a page just confirmed a retake)."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.connected:
                self.send_due()
            self._wake.wait(self.tick_s)
            self._wake.clear()

    def send_due(self) -> int:
        """Publish every due command once; returns how many the broker acknowledged."""
        try:
            due = self.rejections.due()
        except StoreUnavailable as exc:
            log.warning("review: rejections not sent now: %s", exc)
            return 0
        sent = 0
        for command in due:
            if self._stop.is_set():
                break
            body = json.dumps(command.document(), sort_keys=True).encode()
            if not self._feed.publish(command.topic(self.prefix), body):
                log.info("review: %s %s not acknowledged by the broker; trying again", command.action, command.id)
                break
            try:
                self.rejections.published(command.id)
            except StoreUnavailable as exc:
                # Not counted: it goes again at once when the database is back; same id, same content.
                log.warning("review: %s %s published, not counted: %s", command.action, command.id, exc)
                break
            sent += 1
            self.published += 1
            log.info("review: published %s %s for verdict %s (attempt %d)", command.action, command.id,
                     command.verdict_id, command.attempts + 1)  # fmt: skip
        return sent

    def _on_state(self, connected: bool, detail: str) -> None:
        if connected:
            self._wake.set()

    def _on_message(self, topic: str, payload: bytes) -> None:
        try:
            doc: Any = json.loads(payload)
        except ValueError:
            log.warning("review: a reject result on %s is not JSON: ignored", topic)
            return
        if not isinstance(doc, dict):
            log.warning("review: a reject result on %s is not an object: ignored", topic)
            return
        try:
            answer = self.rejections.record_result(doc)
        except StoreUnavailable as exc:
            log.warning("review: reject result %s not recorded (%s): the command is published again later",
                        doc.get("id"), exc)  # fmt: skip
            return
        if answer.recorded:
            self.answers += 1
            log.info("review: %s %s answered %s %s", doc.get("action"), doc.get("id"), doc.get("outcome"),
                     doc.get("reason") or "")  # fmt: skip

    def metrics(self) -> str:
        """Prometheus text: connection, acknowledged publishes, recorded answers."""
        return ("# HELP review_rejections_connected 1 while the rejection sender is connected and subscribed.\n"
                f"# TYPE review_rejections_connected gauge\nreview_rejections_connected {int(self.connected)}\n"
                "# HELP review_rejections_published_total Rejection command publishes the broker acknowledged.\n"
                f"# TYPE review_rejections_published_total counter\nreview_rejections_published_total {self.published}\n"
                "# HELP review_rejections_answers_total Worker answers recorded.\n"
                f"# TYPE review_rejections_answers_total counter\nreview_rejections_answers_total {self.answers}\n")  # fmt: skip
