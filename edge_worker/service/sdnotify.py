"""systemd's notification protocol (sd_notify), without a dependency.

``READY=1`` once the models are loaded and warmed up; ``WATCHDOG=1`` only while the pipeline
makes progress; ``EXTEND_TIMEOUT_USEC`` while slow start-up work (TensorRT engine builds)
runs; ``STOPPING=1`` on shutdown.  Outside systemd ``$NOTIFY_SOCKET`` is unset and every call
is a no-op that returns False.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def notify(message: str) -> bool:
    """Send ``message`` to systemd; True when a notification socket took it."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract socket namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
        return True
    except OSError as exc:
        log.warning("sd_notify(%s) failed: %s", message.split("=")[0], exc)
        return False


def watchdog_interval() -> float | None:
    """Seconds between watchdog pings (half of ``WatchdogSec``), or None when not asked for."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and int(pid) != os.getpid()):
        return None
    return int(usec) / 1e6 / 2.0


def extend_timeout(seconds: float) -> bool:
    """Ask systemd for ``seconds`` more before it gives up on start-up (or stop)."""
    return notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1e6)}")
