"""Shared test machinery: a real mosquitto broker, an MQTT subscriber, and a thread-leak guard.

* ``mosquitto`` fixture: a real broker on a free loopback port with a throw-away config.
  Tests using it are marked ``broker`` automatically, and skipped when the binary is absent.
* ``subscriber`` fixture: a factory of :class:`Subscriber` clients, stopped at teardown.
* Every test fails if it leaves behind a non-daemon thread, or any thread (daemon or not) whose
  name starts with one of :data:`OWNED_THREAD_PREFIXES`: the project names its threads
  ``edge-worker/...`` and joins them on stop.
* ``--runslow`` runs tests marked ``slow``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from tests.stations import Station

OWNED_THREAD_PREFIXES = ("edge-worker", "paho-mqtt-client-")
_MARKERS = {
    "broker": "needs the mosquitto binary",
    "gpu": "needs CUDA; skipped without it",
    "shared": "reads ../shared (real radiographs); skipped where it is absent",
    "slow": "long runs; run with --runslow",
}
_THREAD_GRACE_S = 2.0


# -- options, markers -----------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_configure(config: pytest.Config) -> None:
    registered = {line.split(":", 1)[0].strip() for line in config.getini("markers")}
    for name, help_text in _MARKERS.items():
        if name not in registered:
            config.addinivalue_line("markers", f"{name}: {help_text}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_slow = pytest.mark.skip(reason="slow test: run with --runslow")
    for item in items:
        if "mosquitto" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.broker)
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(skip_slow)


# -- thread-leak guard ----------------------------------------------------------------------


def leaked_threads(before: set[threading.Thread], grace: float = _THREAD_GRACE_S) -> list[threading.Thread]:
    """Threads started since ``before`` that should have been joined, after up to ``grace`` s.

    Guarded: every non-daemon thread, and daemon threads named with OWNED_THREAD_PREFIXES.
    """
    deadline = time.monotonic() + grace
    while True:
        leaked = [
            t for t in threading.enumerate()
            if t not in before and (not t.daemon or t.name.startswith(OWNED_THREAD_PREFIXES))
        ]
        if not leaked or time.monotonic() > deadline:
            return leaked
        time.sleep(0.02)


@pytest.fixture(autouse=True)
def _no_leaked_threads() -> Iterator[None]:
    """Fail the test if it started threads it did not join (after a short grace period)."""
    before = set(threading.enumerate())
    yield
    leaked = leaked_threads(before)
    if leaked:
        names = ", ".join(f"{t.name} (daemon={t.daemon})" for t in leaked)
        pytest.fail(f"test leaked thread(s): {names}", pytrace=False)


# -- network helpers ------------------------------------------------------------------------


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(host: str, port: int, timeout: float) -> bool:
    """Return True once ``host:port`` accepts a TCP connection, False after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.02)
    return False


def find_mosquitto() -> str | None:
    """Return the path of the mosquitto binary (PATH, then /usr/sbin, /usr/local/sbin)."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


# -- mosquitto ------------------------------------------------------------------------------


class Mosquitto:
    """A real mosquitto process on ``127.0.0.1:port``; ``stop()``/``start()`` keep the port."""

    host = "127.0.0.1"

    def __init__(
        self,
        binary: str,
        workdir: Path,
        port: int | None = None,
        extra_config: str = "",
        persistence: bool = False,
        listener: bool = True,
    ) -> None:
        """Write the config (``extra_config`` lines are appended); the broker is not started.

        ``persistence``: keep sessions, subscriptions and queued messages in ``workdir`` across
        a broker restart.  ``listener=False`` leaves the listener to ``extra_config`` (a TLS one).
        """
        self.binary = binary
        self.port = port or free_port()
        self.config = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        # As root, mosquitto drops to user "mosquitto", which cannot read files under the
        # private tmp_path (an acl_file in extra_config); stay root instead.
        user = "user root\n" if hasattr(os, "geteuid") and os.geteuid() == 0 else ""
        self.config.write_text(
            user
            + (f"listener {self.port} {self.host}\nallow_anonymous true\n" if listener else "")
            + (f"persistence true\npersistence_location {workdir}/\n" if persistence else "persistence false\n")
            + "log_dest stderr\n"
            "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
            + extra_config
        )
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``mqtt://127.0.0.1:<port>``."""
        return f"mqtt://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """True while the broker process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 5.0) -> None:
        """Start the broker (again, on the same port) and wait until it accepts connections."""
        if self.running:
            raise RuntimeError("mosquitto is already running")
        with self.log.open("ab") as log_file:
            self._proc = subprocess.Popen(
                [self.binary, "-c", str(self.config)], stdout=log_file, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            if wait_port(self.host, self.port, 0.2):
                return
        self.stop()
        raise RuntimeError(f"mosquitto did not start on port {self.port}:\n{self.log_tail()}")

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate the broker (SIGTERM, then SIGKILL) and wait for it to exit."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the broker's log, for failure messages."""
        if not self.log.exists():
            return "(no log)"
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A running mosquitto broker on a free loopback port, killed after the test."""
    binary = find_mosquitto()
    if binary is None:
        pytest.skip("mosquitto binary not found in PATH or /usr/sbin (apt install mosquitto)")
    broker = Mosquitto(binary, tmp_path)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


# -- subscriber -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """One received message."""

    topic: str
    payload: bytes
    qos: int
    retain: bool


class Subscriber:
    """A paho client that records every message per topic; resubscribes after reconnects."""

    def __init__(
        self,
        host: str,
        port: int,
        topics: tuple[str, ...],
        timeout: float = 5.0,
        persistent: bool = False,
        configure: Callable[[Any], None] | None = None,
    ) -> None:
        """``persistent``: a session the broker keeps while this client is away (MQTT 3.1.1
        clean_session=False), so QoS 1 messages published meanwhile are queued for it.
        ``configure``: called with the paho client before it connects (TLS, user name)."""
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self.topics = topics
        self._cond = threading.Condition()
        self._messages: dict[str, list[Message]] = defaultdict(list)
        self._subscribed = threading.Event()
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"test-sub-{uuid.uuid4().hex[:8]}",
            clean_session=not persistent,
        )
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._client.reconnect_delay_set(1, 1)
        if configure is not None:
            configure(self._client)
        self._client.connect(host, port, keepalive=10)
        self._client.loop_start()
        if not self._subscribed.wait(timeout):
            self.close()
            raise TimeoutError(f"subscriber got no SUBACK from {host}:{port} within {timeout} s")

    def _on_connect(self, client: object, userdata: object, flags: object, rc: object, props: object) -> None:
        self._subscribed.clear()
        self._client.subscribe([(t, 1) for t in self.topics])

    def _on_subscribe(self, client: object, userdata: object, mid: int, rcs: object, props: object) -> None:
        self._subscribed.set()

    def _on_message(self, client: object, userdata: object, msg: object) -> None:
        m = Message(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain))  # type: ignore[attr-defined]
        with self._cond:
            self._messages[m.topic].append(m)
            self._cond.notify_all()

    def wait_subscribed(self, timeout: float = 5.0) -> bool:
        """True once the current connection's subscription is acknowledged."""
        return self._subscribed.wait(timeout)

    def messages(self, topic: str) -> list[Message]:
        """A snapshot of the messages received so far on ``topic``."""
        with self._cond:
            return list(self._messages[topic])

    def all_messages(self) -> list[Message]:
        """A snapshot of every message received so far, on any topic."""
        with self._cond:
            return [m for msgs in self._messages.values() for m in msgs]

    def wait_for(self, topic: str, n: int = 1, timeout: float = 5.0) -> list[Message]:
        """Wait until ``n`` messages arrived on ``topic``; return them all, or fail the test."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._messages[topic]) >= n, timeout):
                got = {t: len(v) for t, v in self._messages.items()}
                pytest.fail(f"waited {timeout} s for {n} message(s) on {topic!r}; received {got}")
            return list(self._messages[topic])

    def close(self) -> None:
        """Disconnect and join the network thread."""
        self._client.disconnect()
        self._client.loop_stop()


@pytest.fixture
def subscriber() -> Iterator[Callable[..., Subscriber]]:
    """Factory ``subscriber(broker_or_host_port, *topics)``; every subscriber is closed after."""
    made: list[Subscriber] = []

    def make(broker: Mosquitto | tuple[str, int], *topics: str, persistent: bool = False) -> Subscriber:
        host, port = (broker.host, broker.port) if isinstance(broker, Mosquitto) else broker
        sub = Subscriber(host, port, topics or ("#",), persistent=persistent)
        made.append(sub)
        return sub

    yield make
    for sub in made:
        sub.close()


@pytest.fixture
def stations() -> Iterator[Callable[..., Station]]:
    """A factory of real daemons (:class:`tests.stations.Station`), each closed at teardown."""
    from tests.stations import Station

    made: list[Station] = []

    def make(*args: object, **kwargs: object) -> Station:
        s = Station(*args, **kwargs)  # type: ignore[arg-type]
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()
