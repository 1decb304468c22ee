"""A broker for the benchmark, and a subscriber that notes when each verdict arrives.

mosquitto is preferred when its binary is found: it is what production runs, and it answers
in about 0.3 ms against 1.1 ms for the embedded amqtt broker, which shares the benchmark
process's interpreter (reference/cpu-baseline.md, section 4).  Either way the broker runs on
a free loopback port with a throw-away configuration and is stopped afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_worker.errors import EdgeWorkerError

if TYPE_CHECKING:
    from typing import Self

_MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


class BenchError(EdgeWorkerError):
    """The benchmark could not run a part (broker, worker, pack build); the message says why."""


def find_mosquitto() -> str | None:
    """The mosquitto binary (PATH, then the usual sbin folders), or ``None``."""
    found = shutil.which("mosquitto")
    if found:
        return found
    return next((p for p in _MOSQUITTO_PATHS if os.access(p, os.X_OK)), None)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.02)
    return False


class BenchBroker:
    """mosquitto (preferred) or the embedded amqtt broker on ``127.0.0.1``; a context manager."""

    host = "127.0.0.1"

    def __init__(self, prefer: str = "mosquitto") -> None:
        self.prefer = prefer
        self.port = 0
        self.kind = ""
        self._proc: subprocess.Popen[bytes] | None = None
        self._workdir: tempfile.TemporaryDirectory[str] | None = None
        self._embedded: Any = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def __enter__(self) -> Self:
        binary = find_mosquitto() if self.prefer == "mosquitto" else None
        if binary:
            self._start_mosquitto(binary)
        else:
            from edge_worker.publish.broker import EmbeddedBroker

            self._embedded = EmbeddedBroker()
            self.port = self._embedded.start()
            self.kind = "amqtt (embedded, in the benchmark process)"
        return self

    def _start_mosquitto(self, binary: str) -> None:
        self._workdir = tempfile.TemporaryDirectory(prefix="edge-bench-mqtt-")
        conf = Path(self._workdir.name) / "mosquitto.conf"
        self.port = _free_port()
        # As root, mosquitto would drop to user "mosquitto"; nothing here needs that.
        user = "user root\n" if hasattr(os, "geteuid") and os.geteuid() == 0 else ""
        conf.write_text(f"{user}listener {self.port} {self.host}\nallow_anonymous true\n"
                        "persistence false\nlog_dest none\n")  # fmt: skip
        self._proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)  # fmt: skip
        if not _wait_port(self.port, 5.0):
            self.__exit__()
            raise BenchError(f"mosquitto ({binary}) did not start on port {self.port}")
        version = subprocess.run([binary, "-h"], capture_output=True, text=True, check=False).stdout
        self.kind = version.splitlines()[0] if version else "mosquitto"

    def __exit__(self, *exc_info: object) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self._embedded is not None:
            self._embedded.stop()
            self._embedded = None
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None


@dataclass
class Received:
    """One verdict or error as it arrived: when (``time.time()``), and its payload."""

    at: float
    kind: str
    payload: dict[str, Any] = field(repr=False)


class VerdictListener:
    """Subscribes to ``<prefix>/<site>/<station>/#`` and records arrivals by SOP Instance UID."""

    def __init__(self, broker: BenchBroker, base_topic: str, timeout: float = 10.0) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self.base = base_topic
        self._cond = threading.Condition()
        self.by_uid: dict[str, Received] = {}
        self.availability: list[tuple[float, str]] = []
        self._ready = threading.Event()
        self._client = paho.Client(CallbackAPIVersion.VERSION2,
                                   client_id=f"edge-bench-{uuid.uuid4().hex[:8]}")  # fmt: skip
        self._client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{self.base}/#", qos=1)
        self._client.on_subscribe = lambda c, u, mid, rcs, p: self._ready.set()
        self._client.on_message = self._on_message
        self._client.connect(broker.host, broker.port, keepalive=30)
        self._client.loop_start()
        if not self._ready.wait(timeout):
            self.close()
            raise BenchError(f"no SUBACK from the broker on port {broker.port} within {timeout} s")

    def _on_message(self, client: object, userdata: object, msg: Any) -> None:
        at = time.time()  # first thing: the arrival time is what the benchmark measures
        kind = msg.topic.rsplit("/", 1)[-1]
        with self._cond:
            if kind == "availability":
                self.availability.append((at, bytes(msg.payload).decode(errors="replace")))
            elif kind in ("verdict", "error"):
                payload = json.loads(msg.payload)
                uid = str(payload.get("sop_instance_uid") or payload.get("image_key") or "")
                self.by_uid.setdefault(uid, Received(at, kind, payload))
            self._cond.notify_all()

    def wait_online(self, timeout: float, since: float) -> float | None:
        """When the worker announced ``online`` after ``since`` (``time.time()``), or ``None``.

        ``since`` skips the retained state a previous worker of the same station left.
        """

        def online() -> float | None:
            return next((t for t, s in self.availability if s == "online" and t >= since), None)

        with self._cond:
            self._cond.wait_for(lambda: online() is not None, timeout)
            return online()

    def wait_uids(self, uids: list[str], timeout: float) -> list[str]:
        """Wait until every UID in ``uids`` arrived; returns those still missing."""
        with self._cond:
            self._cond.wait_for(lambda: all(u in self.by_uid for u in uids), timeout)
            return [u for u in uids if u not in self.by_uid]

    def close(self) -> None:
        """Disconnect and join the network thread."""
        self._client.disconnect()
        self._client.loop_stop()
