"""``edge-worker tail``: the dashboard's stream in a terminal, one line per message.

Every verdict and error is printed as it arrives, and every change of a station's
availability (a retained ``online`` repeated after a reconnect is not a change).  With
``--json`` each line is one JSON object instead.  Runs until Ctrl-C or SIGTERM.

The MQTT callbacks only queue lines; the main thread prints them, so a closed pipe
(``edge-worker tail | head``) ends the command rather than paho's network thread.
"""

from __future__ import annotations

import json
import logging
import queue
import signal
import sys
import threading
import time
from datetime import datetime
from types import FrameType
from typing import Any, TextIO

from edge_worker.publish.settings import MqttSettings
from edge_worker.subscribers.dashboard.feed import MqttFeed, station_filters
from edge_worker.subscribers.summary import summary_line

log = logging.getLogger(__name__)

#: Topics tail prints; the retained ``latest`` summary would repeat each verdict.
KINDS = ("verdict", "error", "availability")


class TailFormatter:
    """Turns ``(topic, payload)`` into output lines; remembers availability to print changes only.

    ``prefix`` is the first topic level(s); ``as_json`` picks JSON lines over text lines.
    """

    def __init__(self, prefix: str = "xray", as_json: bool = False) -> None:
        self.prefix = prefix
        self.as_json = as_json
        self._online: dict[str, str] = {}

    def line(self, topic: str, payload: bytes, now: float) -> str | None:
        """The line for one message received at ``now`` (POSIX s), or None to print nothing."""
        head = self.prefix + "/"
        levels = topic[len(head):].split("/") if topic.startswith(head) else []
        # Checked here, not left to the broker: amqtt (the demo's broker) has been seen to
        # deliver <prefix>/<site>/<station>/status to these subscriptions.
        if len(levels) != 3 or levels[2] not in KINDS:
            return None
        site, station, kind = levels
        where = f"{site}/{station}"
        if kind == "availability":
            text = payload.decode("utf-8", errors="replace").strip()
            if self._online.get(where) == text:
                return None
            self._online[where] = text
            body: Any = text
            human = text.upper() if text == "offline" else text
        else:
            try:
                body = json.loads(payload)
                human = summary_line(kind, body)
            except (ValueError, KeyError, TypeError) as exc:
                # A message we cannot summarise is still shown: tail is a diagnostic tool.
                body = payload.decode("utf-8", errors="replace")
                human = f"unreadable {kind} ({type(exc).__name__}: {exc}): {body[:200]}"
        if self.as_json:
            record = {"received": _iso(now), "topic": topic, "site": site, "station": station,
                      "kind": kind, "payload": body}  # fmt: skip
            return json.dumps(record, separators=(",", ":"), ensure_ascii=False)
        clock = datetime.fromtimestamp(now).strftime("%H:%M:%S")
        return f"{clock} {where:<24} {human}"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts).astimezone().isoformat(timespec="milliseconds")


def run_tail(
    settings: MqttSettings,
    prefix: str = "xray",
    as_json: bool = False,
    out: TextIO | None = None,
    stop: threading.Event | None = None,
    client_id: str | None = None,
) -> int:
    """Print the stream to ``out`` (stdout) until ``stop`` is set, SIGTERM or Ctrl-C; exit code.

    ``client_id`` names the persistent session (None: ``edge-worker-tail-<host>``): started
    again with the same id, tail first prints what was published while it was away.  Signal
    handlers are installed only when ``stop`` is not given (the command line case).
    """
    out = out if out is not None else sys.stdout
    formatter = TailFormatter(prefix, as_json)
    lines: queue.Queue[str] = queue.Queue(maxsize=10_000)
    own_stop = stop is None
    stop = stop if stop is not None else threading.Event()

    def on_message(topic: str, payload: bytes) -> None:
        text = formatter.line(topic, payload, time.time())
        if text is not None:
            lines.put(text)

    def on_state(connected: bool, detail: str) -> None:
        log.info("tail: %s", "connected and subscribed" if connected else detail)

    if own_stop:
        def on_signal(signum: int, frame: FrameType | None) -> None:
            stop.set()

        signal.signal(signal.SIGTERM, on_signal)
    feed = MqttFeed(settings, station_filters(prefix, KINDS), on_message, on_state, purpose="tail", client_id=client_id)
    feed.start()
    try:
        while not stop.is_set():
            try:
                text = lines.get(timeout=0.2)
            except queue.Empty:
                continue
            print(text, file=out, flush=True)
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:
        log.debug("tail: output closed")
    finally:
        feed.stop()
    return 0
