"""An in-process MQTT broker (amqtt) for the newcomer demo; not for production.

amqtt is asyncio-only, so it runs on its own event loop in a daemon thread.  The ``Broker`` is
created inside a coroutine on that loop because its constructor calls
``asyncio.get_running_loop()``.  Production uses mosquitto (see ``systemd/``).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from typing import TYPE_CHECKING, Any

from edge_worker.errors import EdgeWorkerError

if TYPE_CHECKING:
    from typing import Self  # 3.11+; annotations are not evaluated on 3.10

log = logging.getLogger(__name__)

_BIND_ATTEMPTS = 3


class BrokerError(EdgeWorkerError):
    """The embedded broker could not start (amqtt missing, or no port could be bound)."""


class EmbeddedBroker:
    """amqtt on ``127.0.0.1``, anonymous, in a daemon thread; ``start()`` returns the port."""

    host = "127.0.0.1"

    def __init__(self, port: int = 0, start_timeout: float = 10.0) -> None:
        """Prepare a broker on ``port`` (0: pick a free one at start); nothing runs yet."""
        self._requested_port = port
        self._start_timeout = start_timeout
        self.port: int | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self) -> int:
        """Start the broker and return its port once it accepts connections.

        Raises :class:`BrokerError` when amqtt is not installed or the broker fails to start,
        ``RuntimeError`` when already started.
        """
        if self._thread is not None:
            raise RuntimeError("EmbeddedBroker.start() called twice")
        try:
            import amqtt.broker  # noqa: F401 - probe only; imported for real on the loop thread
        except ImportError as exc:
            raise BrokerError(f"the embedded broker needs amqtt (pip install amqtt): {exc}") from exc
        attempts = 1 if self._requested_port else _BIND_ATTEMPTS
        for attempt in range(1, attempts + 1):
            port = self._requested_port or _free_port()
            try:
                self._run_thread(port)
            except BrokerError as exc:
                if attempt == attempts:
                    raise
                # Another process took the port between our probe and amqtt's bind.
                log.debug("embedded broker: port %d failed (%s); trying another", port, exc)
                continue
            self.port = port
            log.info("embedded MQTT broker (amqtt) listening on %s:%d", self.host, port)
            return port
        raise AssertionError("unreachable")

    def stop(self, timeout: float = 5.0) -> None:
        """Shut the broker down and join its thread.  Idempotent."""
        thread, loop, stop_event = self._thread, self._loop, self._stop_event
        if thread is None:
            return
        if loop is not None and stop_event is not None and thread.is_alive():
            try:
                loop.call_soon_threadsafe(stop_event.set)
            except RuntimeError:
                pass  # the loop already closed: the thread is finishing on its own
        thread.join(timeout)
        if thread.is_alive():
            log.error("embedded broker thread did not stop within %.1f s", timeout)
            return
        self._thread = None
        self._loop = None
        log.info("embedded MQTT broker stopped")

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- the loop thread -------------------------------------------------------------------

    def _run_thread(self, port: int) -> None:
        self._ready.clear()
        self._error = None
        self._thread = threading.Thread(
            target=self._thread_main, args=(port,), name="edge-worker/amqtt-broker", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(self._start_timeout):
            self.stop()
            raise BrokerError(f"amqtt did not start within {self._start_timeout} s")
        if self._error is not None:
            self._thread.join(self._start_timeout)
            self._thread = None
            raise BrokerError(f"amqtt failed to start on port {port}: {self._error}") from self._error

    def _thread_main(self, port: int) -> None:
        try:
            asyncio.run(self._serve(port))
        except BaseException as exc:  # reported to start() if it has not returned yet
            if not self._ready.is_set():
                self._error = exc
                self._ready.set()
            else:
                log.exception("embedded broker crashed")

    async def _serve(self, port: int) -> None:
        from amqtt.broker import Broker

        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        config: dict[str, Any] = {
            "listeners": {
                "default": {"type": "tcp", "bind": f"{self.host}:{port}", "max_connections": 50}
            },
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
        broker = Broker(config)
        await broker.start()
        self._ready.set()
        try:
            await self._stop_event.wait()
        finally:
            await broker.shutdown()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
