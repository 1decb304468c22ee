"""What the broker has shown of itself lately: a CONNACK, the last packet heard, a silent TCP socket.

A broker that accepts TCP but has frozen (SIGSTOP, a hung VM, a half-open connection through a
firewall) answers nothing.  paho notices only after about two keepalive intervals: it pings one
keepalive after the last packet and gives up one keepalive after the ping.  :class:`Liveness`
lets the publisher say so sooner, after :func:`silence_limit`, and tells a listener that never
sends a CONNACK apart from one that refuses the connection.

Pure bookkeeping: times are passed in (monotonic seconds), no threads, no locks (the publisher
calls it under its own lock), no paho; so it is tested with made-up times.
"""

from __future__ import annotations

__all__ = ["Liveness", "silence_limit"]


def silence_limit(keepalive: int) -> float:
    """Seconds without any packet from the broker after which it counts as silent.

    paho pings at most ``keepalive`` (+1 s, its loop's granularity) after the last packet in,
    and a live broker answers within milliseconds; the limit stays above that and, from
    keepalive 4 s up, within 1.5 keepalive intervals of the last packet heard.
    """
    return max(1.25 * keepalive, keepalive + 1.5)


class Liveness:
    """The broker's signs of life for one client; ``keepalive`` in seconds, as given to paho."""

    def __init__(self, keepalive: int, now: float) -> None:
        self.keepalive = keepalive
        self.limit = silence_limit(keepalive)
        self._started = now
        self._last_heard: float | None = None
        self._silent_text: str | None = None  # fixed while one silence lasts, so it is logged once
        self._socket_open = False
        self._awaiting_connack = False

    def started(self, now: float) -> None:
        """The client starts connecting: one keepalive of grace begins."""
        self._started = now

    def socket_opened(self) -> None:
        """A TCP connection was made; the CONNACK is awaited."""
        self._socket_open = self._awaiting_connack = True

    def socket_closed(self) -> None:
        """The TCP connection is gone."""
        self._socket_open = False

    def connack(self, now: float) -> None:
        """A CONNACK arrived (accepting or refusing): the broker answers."""
        self._awaiting_connack = False
        self.heard(now)

    def heard(self, now: float) -> None:
        """Any packet arrived from the broker (PINGRESP, PUBACK, PUBLISH, ...)."""
        self._last_heard = now

    def gave_up_waiting(self) -> bool:
        """On a disconnect: True when the connection ended before any CONNACK (the broker took
        the TCP connection and never answered); resets for the next attempt."""
        waited, self._awaiting_connack = self._awaiting_connack, False
        return waited

    @property
    def silent_text(self) -> str | None:
        """The current silence reason, as last computed by :meth:`silent`."""
        return self._silent_text

    def silence_s(self, now: float) -> float | None:
        """Seconds since the last packet; None before the first."""
        return None if self._last_heard is None else now - self._last_heard

    def silent(self, now: float) -> str | None:
        """While connected: why the broker counts as silent, or None while it answers.

        ``"broker silent for N s (keepalive K s)..."``, with N the silence when it was first
        noticed; the same text until a packet arrives.
        """
        silence = self.silence_s(now)
        if silence is None or silence <= self.limit:
            self._silent_text = None
            return None
        if self._silent_text is None:
            self._silent_text = (
                f"broker silent for {silence:.0f} s (keepalive {self.keepalive} s): "
                "no answer to keepalive pings or messages"
            )
        return self._silent_text

    def waiting(self, now: float) -> str | None:
        """While not connected and no error is known: what is being waited for, or None during
        the first keepalive after :meth:`started` (a connection still being made)."""
        if now - self._started < self.keepalive:
            return None
        if self._socket_open and self._awaiting_connack:
            return f"TCP connected, waiting for the CONNACK (gives up after {self.keepalive} s)"
        return "not connected yet"

    def next_check(self, now: float, connected: bool) -> float:
        """Seconds until the silence limit falls due (at most 1: the caller's poll interval)."""
        if not connected or self._last_heard is None:
            return 1.0
        return min(1.0, max(0.05, self._last_heard + self.limit + 0.05 - now))
