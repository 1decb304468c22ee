"""MQTT publisher: durable outbox in front of a paho 2.x client.

Write before you send: :meth:`Publisher.publish` stores the message in the
:class:`~edge_worker.publish.outbox.Outbox` and returns; a sender thread hands stored rows to
paho (QoS 1) in insertion order while connected, and a row is deleted only when paho's
``on_publish`` reports the broker's PUBACK for it.  This is the only module that imports paho.

Delivery is at least once: after a crash a message may be sent twice, so consumers deduplicate
on the message id carried in the payload.

Connection truth: :attr:`Publisher.connected` means a CONNACK was received *and* the broker
still answers.  Every packet from the broker (CONNACK, PUBACK, PINGRESP, ...) is timed through
paho's log callback into a :class:`~edge_worker.publish.liveness.Liveness`, and
:meth:`Publisher.broker_problem` says "broker silent" after
:func:`~edge_worker.publish.liveness.silence_limit`, sooner than paho itself notices.

Threads: paho's network loop (``loop_start``) and one sender thread.  Our lock is never held
while calling into paho, because paho calls ``on_publish`` while holding its own outgoing-message
lock, and ``Client.publish`` takes that same lock: holding ours across it would deadlock.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import ssl
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from edge_worker.errors import ConfigError, EdgeWorkerError
from edge_worker.publish.latest import latest_summary
from edge_worker.publish.liveness import Liveness, silence_limit
from edge_worker.publish.outbox import Outbox
from edge_worker.publish.settings import MqttSettings, Topics

__all__ = ["KINDS", "MqttSettings", "PayloadError", "Publisher", "Topics", "silence_limit"]

if TYPE_CHECKING:
    from typing import Self  # 3.11+; annotations are not evaluated on 3.10

log = logging.getLogger(__name__)

KINDS = frozenset({"verdict", "error", "review-copy"})
StatusSource = dict[str, Any] | Callable[[], dict[str, Any]]
ONLINE = b"online"
OFFLINE = b"offline"
# Rows handed to paho and not yet acknowledged; bounds paho's in-memory queue (which is
# unbounded by default) while the outbox holds the rest on disk.
DEFAULT_WINDOW = 100
_MISSING = object()


class PayloadError(EdgeWorkerError, ValueError):
    """A caller mistake in :meth:`Publisher.publish`: unknown kind, or a payload that is not
    strict JSON (NaN and infinities included: dashboards' JSON parsers reject them)."""


class _DemoteNotConnected(logging.Filter):
    """paho 2.2 logs "Client is not connected" at ERROR after every clean disconnect (its loop
    runs once more without a socket).  Our own callbacks report connection state, so this
    record is demoted to DEBUG rather than alarming operators at each shutdown."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and str(record.msg).startswith("Client is not connected"):
            # Handlers have no level of their own here, so relabelling alone would still print
            # it; keep it only when this logger would show a DEBUG record.
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


def secure(client: paho.Client, s: MqttSettings) -> None:
    """Apply the settings' credentials and TLS to a paho client (shared with the dashboard)."""
    if s.username is not None:
        client.username_pw_set(s.username, s.password)
    if s.tls:
        try:
            client.tls_set(ca_certs=s.ca_file, certfile=s.cert_file, keyfile=s.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"mqtt TLS files cannot be loaded: {exc}") from exc
        client.tls_insecure_set(s.tls_insecure)


class Publisher:
    """Publishes verdicts and errors for one station through a durable outbox.

    Construct, :meth:`start`, call :meth:`publish` from any thread, :meth:`stop` once.  The
    outbox belongs to the caller (it is not closed by :meth:`stop`).
    """

    def __init__(
        self,
        settings: MqttSettings,
        topics: Topics,
        outbox: Outbox,
        *,
        window: int = DEFAULT_WINDOW,
        on_problem: Callable[[str | None], None] | None = None,
    ) -> None:
        """Prepare a publisher; nothing touches the network until :meth:`start`.

        ``on_problem`` is called (on the sender thread) with :meth:`broker_problem` each time
        it changes, at most about a second after the change.
        """
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.settings = settings
        self.topics = topics
        self._outbox = outbox
        self._window = window
        self._lock = threading.Lock()
        self._drained = threading.Condition(self._lock)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._connected = False
        self._last_error: str | None = None
        self._epoch = 0  # bumped on every CONNACK; a sender pass from an older epoch restarts
        self._cursor = 0  # highest row id handed to paho in this epoch
        self._inflight: dict[int, int | None] = {}  # paho mid -> outbox row id (None: not a row)
        self._inflight_rows: set[int] = set()
        self._row_messages: dict[int, tuple[str, bytes]] = {}  # in-flight row -> (topic, payload)
        self._latest: bytes | None = None  # the last latest summary sent, re-sent on reconnect
        # Rows paho held at the last CONNACK: paho re-sends them itself right after on_connect
        # returns, so new rows wait until these are settled to keep the send order.
        self._barrier: set[int] = set()
        self._early_acks: dict[int, ReasonCode] = {}  # PUBACKs that beat their publish() return
        self._status: StatusSource | None = None
        self._client: paho.Client | None = None
        self._sender: threading.Thread | None = None
        self._stopped = False
        self._on_problem = on_problem
        self._reported: str | None = None
        self._liveness = Liveness(settings.keepalive, time.monotonic())  # under self._lock

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start connecting (in the background) and sending the outbox.

        Returns at once; :attr:`connected` turns true after the broker's CONNACK.  Raises
        :class:`ConfigError` when the TLS files cannot be loaded and ``RuntimeError`` when
        called twice.
        """
        if self._client is not None:
            raise RuntimeError("Publisher.start() called twice")
        self._client = self._make_client()
        with self._lock:
            self._liveness.started(time.monotonic())
        s = self.settings
        log.info("MQTT: connecting to %s as %r", s.url, self._client_id())
        self._client.connect_async(s.host, s.port, keepalive=s.keepalive)
        self._client.loop_start()
        self._sender = threading.Thread(
            target=self._send_loop, name="edge-worker/mqtt-sender", daemon=True
        )
        self._sender.start()
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop sending, publish retained ``offline`` if connected, disconnect, join threads.

        Unacknowledged messages stay in the outbox for the next start.  Idempotent.
        """
        with self._lock:
            if self._client is None or self._stopped:
                return
            self._stopped = True
        deadline = time.monotonic() + timeout
        self._stopping.set()
        self._wake.set()
        assert self._sender is not None
        self._sender.join(max(0.0, deadline - time.monotonic()))
        if self._sender.is_alive():
            log.error("MQTT: sender thread did not stop within %.1f s", timeout)
        client = self._client
        if self.connected:
            info = self._send(self.topics.availability, OFFLINE, 1, True, None)
            try:
                info.wait_for_publish(max(0.1, deadline - time.monotonic()))
            except (RuntimeError, ValueError) as exc:
                log.warning("MQTT: could not publish offline before stopping: %s", exc)
        client.disconnect()
        # paho joins its thread without a timeout; it is bounded by paho's connect timeout.
        client.loop_stop()
        with self._lock:
            self._connected = False
        log.info("MQTT: stopped; %d message(s) left in the outbox", self.outbox_depth)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- public API ------------------------------------------------------------------------

    def publish(self, kind: str, payload: dict[str, Any], key: str) -> bool:
        """Store one message durably and schedule it for sending; return at once.

        ``kind`` is ``"verdict"``, ``"error"`` or ``"review-copy"``; ``payload`` is
        JSON-serialisable (no NaN) and should carry ``key`` so consumers can deduplicate (once
        the broker acknowledges a verdict or error, its retained summary,
        :func:`~edge_worker.publish.latest.latest_summary`, follows on :attr:`Topics.latest`);
        ``key`` is the message id, stable across retries.  Returns False when a message with this key is already pending (nothing
        new is stored).  Raises :class:`PayloadError` for a bad kind or payload, and
        :class:`~edge_worker.publish.outbox.OutboxFull` when the outbox is full (a health
        failure for the caller; nothing was stored).
        """
        if kind not in KINDS:
            raise PayloadError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
        topic = {"verdict": self.topics.verdict, "error": self.topics.error}.get(kind, self.topics.review_copy)
        try:
            data = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise PayloadError(f"{kind} payload for {key!r} is not strict JSON: {exc}") from exc
        result = self._outbox.put(topic, data.encode("utf-8"), key, qos=1, retain=False)
        if result.created:
            log.debug("MQTT: queued %s %s as outbox row %d", kind, key, result.row_id)
            self._wake.set()
        else:
            log.info("MQTT: %s %s is already pending (row %d); not stored twice", kind, key, result.row_id)
        return result.created

    def set_status(self, status: StatusSource) -> None:
        """Publish a retained status document now (if connected) and after every reconnect.

        ``status`` is the document, or a function that builds it: a function is called again
        on every reconnect, so fields such as "broker connected" are fresh rather than the
        value from before the outage.  Status is latest-state only, so it lives in memory, not
        in the outbox.  Raises :class:`PayloadError` when the document is not strict JSON.
        """
        data = None if callable(status) else self._status_bytes(status)  # reject bad JSON now
        with self._lock:
            self._status = status
            connected = self._connected
        if connected:
            self._send(self.topics.status, data or self._status_bytes(status), 1, True, None)

    def wait_drained(self, timeout: float) -> bool:
        """Block until the outbox is empty (every message acknowledged); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._drained:
            while self._outbox.depth() > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                # Bounded waits: a put from another thread does not notify, so re-check.
                self._drained.wait(min(remaining, 0.1))
        return True

    @property
    def connected(self) -> bool:
        """True between a successful CONNACK and the next disconnect, while the broker answers.

        False as soon as nothing has come from the broker for :func:`silence_limit` seconds,
        although paho may still hold the socket open.
        """
        with self._lock:
            return self._connected and self._silent(time.monotonic()) is None

    @property
    def silence_s(self) -> float | None:
        """Seconds since the last packet from the broker; None before the first one."""
        with self._lock:
            return self._liveness.silence_s(time.monotonic())

    def broker_problem(self) -> str | None:
        """Why the broker cannot take messages now, or None while connected and answering.

        During the first keepalive interval after :meth:`start` a connection still being made
        is not a problem.  After it: not connected yet, refused, unreachable, TCP connected
        without a CONNACK, silent beyond :func:`silence_limit`, or a message the broker
        refused, each with its reason.  The text stays the same while one condition lasts, so
        health logs it once.
        """
        with self._lock:
            now = time.monotonic()
            if self._stopped:
                return "stopped"
            if self._connected:
                # Otherwise only a refused message can be known after the CONNACK.
                return self._silent(now) or self._last_error
            return self._last_error or self._liveness.waiting(now)

    def _silent(self, now: float) -> str | None:
        """The silence reason while connected, logged when it first appears; caller holds the lock."""
        was = self._liveness.silent_text
        text = self._liveness.silent(now)
        if text is not None and was is None:
            log.error("MQTT: %s: %s", self.settings.url, text)
        return text

    @property
    def outbox_depth(self) -> int:
        """Messages stored but not yet acknowledged by the broker."""
        return self._outbox.depth()

    @property
    def last_error(self) -> str | None:
        """The most recent connection refusal or rejected message, for health reporting."""
        with self._lock:
            return self._last_error

    # -- paho wiring -----------------------------------------------------------------------

    @staticmethod
    def _status_bytes(status: StatusSource) -> bytes:
        doc = status() if callable(status) else status
        try:
            return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise PayloadError(f"status document is not strict JSON: {exc}") from exc

    def _client_id(self) -> str:
        return self.settings.client_id or f"xray-edge-{self.topics.site}-{self.topics.station}"

    def _make_client(self) -> paho.Client:
        s = self.settings
        if s.protocol == "5":
            client = paho.Client(
                CallbackAPIVersion.VERSION2, client_id=self._client_id(), protocol=paho.MQTTv5
            )
        else:
            client = paho.Client(
                CallbackAPIVersion.VERSION2,
                client_id=self._client_id(),
                protocol=paho.MQTTv311,
                clean_session=True,  # the outbox, not a broker session, holds undelivered messages
            )
        paho_log = logging.getLogger(f"{__name__}.paho")
        if not any(isinstance(f, _DemoteNotConnected) for f in paho_log.filters):
            paho_log.addFilter(_DemoteNotConnected())
        client.enable_logger(paho_log)
        client.will_set(self.topics.availability, OFFLINE, qos=1, retain=True)
        secure(client, s)
        client.reconnect_delay_set(s.reconnect_min_delay, s.reconnect_max_delay)
        # Room for our window plus availability/status messages, so paho never holds rows back.
        client.max_inflight_messages_set(self._window + 4)
        # An exception in one of our callbacks must not end paho's network thread (paho logs
        # it as "Caught exception in on_...").
        client.suppress_exceptions = True
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_log = self._on_log
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        return client

    def _on_connect(
        self, client: paho.Client, userdata: object, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        with self._lock:
            self._liveness.connack(time.monotonic())
        if reason.is_failure:
            log.error("MQTT: broker %s refused the connection: %s", self.settings.url, reason)
            with self._lock:
                self._connected = False
                self._last_error = f"connection refused: {reason}"
            return
        with self._lock:
            self._connected = True
            self._last_error = None
            self._epoch += 1
            self._cursor = 0  # rescan: rows refused earlier are sent again
            self._barrier = set(self._inflight_rows)
            status, latest = self._status, self._latest
        if self._stopping.is_set():
            # Connected while stop() runs: stop() may already have decided there is nothing to
            # say, and its clean DISCONNECT suppresses the will; leave the final status (the
            # caller set "stopped") and "offline" retained.
            if status is not None:
                self._send_status(status)
            self._send(self.topics.availability, OFFLINE, 1, True, None)
            return
        log.info("MQTT: connected to %s; %d message(s) in the outbox", self.settings.url, self.outbox_depth)
        self._send(self.topics.availability, ONLINE, 1, True, None)
        if status is not None:
            self._send_status(status)
        if latest is not None:  # a broker restarted without persistence lost it
            self._send(self.topics.latest, latest, 1, True, None)
        self._wake.set()

    def _send_status(self, status: StatusSource) -> None:
        try:
            data = self._status_bytes(status)
        except Exception:  # a callback boundary: never let it kill paho's network thread
            log.exception("MQTT: building the status document failed; not re-published")
        else:
            self._send(self.topics.status, data, 1, True, None)

    def _on_connect_fail(self, client: paho.Client, userdata: object) -> None:
        # paho calls this from inside its ``except OSError`` (no argument carries the error):
        # the exception being handled says why (refused, unreachable, a TLS failure).
        exc = sys.exc_info()[1]
        why = f"{type(exc).__name__}: {exc}" if exc is not None else "no connection"
        with self._lock:
            self._last_error = f"cannot connect: {why}"
        log.warning("MQTT: cannot reach broker %s (%s); retrying", self.settings.url, why)

    def _on_socket_open(self, client: paho.Client, userdata: object, sock: object) -> None:
        with self._lock:
            self._liveness.socket_opened()

    def _on_socket_close(self, client: paho.Client, userdata: object, sock: object) -> None:
        with self._lock:
            self._liveness.socket_closed()

    def _on_log(self, client: paho.Client, userdata: object, level: int, buf: str) -> None:
        # paho logs every packet it reads as "Received <TYPE> ...": the only public sign of a
        # PINGRESP, so this is where the broker's last sign of life is timed.
        if buf.startswith("Received "):
            with self._lock:
                self._liveness.heard(time.monotonic())
            return
        # A broker that refuses the client's certificate (TLS 1.3) lets the handshake finish and
        # then sends an alert, which paho reports only in its log: keep it as the reason.
        if level == paho.MQTT_LOG_ERR and buf.startswith("failed to receive on socket: "):
            with self._lock:
                if not self._connected:
                    self._last_error = f"cannot connect: {buf.removeprefix('failed to receive on socket: ')}"

    def _on_disconnect(
        self, client: paho.Client, userdata: object, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        with self._lock:
            was_connected, self._connected = self._connected, False
            gave_up = self._liveness.gave_up_waiting()
            if not was_connected and gave_up and not self._stopping.is_set():
                # TCP was accepted but no CONNACK came within the keepalive: paho gave up.
                self._last_error = (
                    f"no CONNACK within {self.settings.keepalive} s: the broker accepts TCP "
                    f"connections but does not answer ({reason})"
                )
            elif was_connected and not self._stopping.is_set():
                self._last_error = f"lost the connection: {reason}"
        if self._stopping.is_set():
            log.info("MQTT: disconnected from %s", self.settings.url)
        elif was_connected:
            log.warning("MQTT: lost connection to %s (%s); reconnecting", self.settings.url, reason)

    def _on_publish(
        self, client: paho.Client, userdata: object, mid: int, reason: ReasonCode, props: Any
    ) -> None:
        with self._lock:
            row_id = self._inflight.pop(mid, _MISSING)
            if row_id is _MISSING:
                self._early_acks[mid] = reason
                return
        assert row_id is None or isinstance(row_id, int)
        self._settle(mid, row_id, reason)

    # -- sending ---------------------------------------------------------------------------

    def _send(self, topic: str, payload: bytes, qos: int, retain: bool, row_id: int | None) -> paho.MQTTMessageInfo:
        """Hand one message to paho and record its mid; every publish goes through here."""
        assert self._client is not None
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            # paho did not keep it; the row stays in the outbox and is retried on reconnect.
            log.error("MQTT: paho refused to queue a message for %s (queue full)", topic)
            with self._lock:
                if row_id is not None:
                    self._inflight_rows.discard(row_id)
                    self._row_messages.pop(row_id, None)
            return info
        # NO_CONN is fine for QoS 1: paho keeps the message and sends it after reconnecting.
        with self._lock:
            reason = self._early_acks.pop(info.mid, None)
            if reason is None:
                self._inflight[info.mid] = row_id
                return info
        self._settle(info.mid, row_id, reason)
        return info

    def _settle(self, mid: int, row_id: int | None, reason: ReasonCode) -> None:
        """Apply a broker acknowledgement: delete the row, or keep it if the broker refused it."""
        if row_id is None:
            return
        if reason.is_failure:
            # MQTT 5 only: the broker refused this message (e.g. not authorised).  Keep the row
            # (never drop a verdict); it is retried after the next reconnect.
            log.error("MQTT: broker refused outbox row %d (mid %d): %s", row_id, mid, reason)
            with self._lock:
                self._inflight_rows.discard(row_id)
                self._row_messages.pop(row_id, None)
                self._barrier.discard(row_id)
                self._last_error = f"message refused: {reason}"
            self._wake.set()
            return
        try:
            self._outbox.ack(row_id)
        except (sqlite3.Error, RuntimeError) as exc:
            # The broker has the message but the row stays: it is sent again after the next
            # reconnect or restart (a duplicate, which consumers tolerate), never lost.
            log.error("MQTT: could not delete acknowledged outbox row %d: %s", row_id, exc)
            with self._lock:
                self._last_error = f"outbox ack failed: {exc}"
        with self._drained:
            self._inflight_rows.discard(row_id)
            self._barrier.discard(row_id)
            message = self._row_messages.pop(row_id, None)
            self._drained.notify_all()
        if message is not None:
            self._send_latest(*message)
        self._wake.set()

    def _send_latest(self, topic: str, payload: bytes) -> None:
        """After the broker acknowledged a verdict or error: its retained latest summary.

        Latest-state only (like status), so it is not stored in the outbox: a summary lost to a
        crash is replaced by the next one.  One that cannot be built is logged and skipped.
        """
        kind = "verdict" if topic == self.topics.verdict else "error" if topic == self.topics.error else None
        if kind is None:
            return
        try:
            doc = latest_summary(kind, json.loads(payload))
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("MQTT: no latest summary for a %s (payload lacks %s)", kind, exc)
            return
        data = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        with self._lock:
            self._latest = data
        self._send(self.topics.latest, data, 1, True, None)

    def _send_loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(timeout=self._next_check())
            self._wake.clear()
            if self._stopping.is_set():
                break
            self._report_problem()
            try:
                self._send_pending()
            except Exception as exc:  # keep the sender alive; the rows stay stored
                log.exception("MQTT: sending from the outbox failed; retrying in 1 s")
                with self._lock:
                    self._last_error = f"outbox send failed: {exc}"
                self._stopping.wait(1.0)

    def _next_check(self) -> float:
        """Seconds to sleep: at most 1, less when the silence limit falls due sooner."""
        with self._lock:
            return self._liveness.next_check(time.monotonic(), self._connected)

    def _report_problem(self) -> None:
        """Call ``on_problem`` when :meth:`broker_problem` changed since the last call."""
        problem = self.broker_problem()
        if problem == self._reported or self._on_problem is None:
            return
        self._reported = problem
        try:
            self._on_problem(problem)
        except Exception:  # the sender must outlive a failing health callback
            log.exception("MQTT: the broker-problem callback failed")

    def _send_pending(self) -> None:
        """Hand stored rows to paho, oldest first, while connected and the window has room."""
        while not self._stopping.is_set():
            with self._lock:
                if not self._connected or self._barrier:
                    return
                room = self._window - len(self._inflight_rows)
                cursor, epoch = self._cursor, self._epoch
            if room <= 0:
                return
            rows = self._outbox.pending(limit=room, after_id=cursor)
            if not rows:
                return
            for row in rows:
                with self._lock:
                    if not self._connected or epoch != self._epoch:
                        return
                    self._cursor = row.row_id
                    if row.row_id in self._inflight_rows:
                        continue  # paho still holds it and re-sends it itself after reconnecting
                    self._inflight_rows.add(row.row_id)
                    self._row_messages[row.row_id] = (row.topic, row.payload)
                self._send(row.topic, row.payload, row.qos, row.retain, row.row_id)
