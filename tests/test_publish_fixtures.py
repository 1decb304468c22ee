"""The shared test machinery in conftest.py: thread-leak guard, mosquitto restart, Subscriber."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from conftest import Mosquitto, Subscriber, free_port, leaked_threads, wait_port


def test_leak_guard_flags_non_daemon_and_owned_threads_only() -> None:
    release = threading.Event()
    before = set(threading.enumerate())
    plain = threading.Thread(target=release.wait, name="worker")
    owned = threading.Thread(target=release.wait, name="edge-worker/x", daemon=True)
    foreign = threading.Thread(target=release.wait, name="library-helper", daemon=True)
    for t in (plain, owned, foreign):
        t.start()
    try:
        assert set(leaked_threads(before, grace=0.05)) == {plain, owned}
    finally:
        release.set()
        for t in (plain, owned, foreign):
            t.join()
    assert leaked_threads(before, grace=0.05) == []


def test_mosquitto_restarts_on_the_same_port(mosquitto: Mosquitto) -> None:
    port = mosquitto.port
    assert mosquitto.running and wait_port(mosquitto.host, port, 1.0)
    mosquitto.stop()
    assert not mosquitto.running
    assert not wait_port(mosquitto.host, port, 0.1)
    mosquitto.start()
    assert mosquitto.port == port and wait_port(mosquitto.host, port, 1.0)
    assert mosquitto.url == f"mqtt://127.0.0.1:{port}"


def test_subscriber_wait_for_fails_the_test_on_timeout(
    mosquitto: Mosquitto, subscriber: Callable[..., Subscriber]
) -> None:
    sub = subscriber(mosquitto, "nothing/here")
    with pytest.raises(pytest.fail.Exception, match="waited 0.1 s for 1 message"):
        sub.wait_for("nothing/here", 1, timeout=0.1)


def test_free_port_is_bindable() -> None:
    import socket

    port = free_port()
    with socket.create_server(("127.0.0.1", port)):
        pass
