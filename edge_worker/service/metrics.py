"""Prometheus metrics, in the text exposition format, served over plain HTTP.

A handful of counters, gauges and histograms is all the daemon needs, so they are written
here (about a hundred lines) rather than pulled in as a dependency.  Metric names follow the
Prometheus conventions (``_total`` counters, ``_seconds`` histograms, base units).
"""

from __future__ import annotations

import bisect
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger(__name__)

Labels = tuple[tuple[str, str], ...]

#: Latency buckets in seconds: a verdict should come in well under one second.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _fmt_labels(labels: Labels, extra: tuple[tuple[str, str], ...] = ()) -> str:
    items = labels + extra
    if not items:
        return ""
    body = ",".join(f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"' for k, v in items)
    return "{" + body + "}"


class Registry:
    """Thread-safe counters, gauges and histograms; :meth:`render` gives the exposition text."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._help: dict[str, tuple[str, str]] = {}
        self._values: dict[str, dict[Labels, float]] = {}
        self._hist: dict[str, dict[Labels, tuple[list[int], float, int]]] = {}
        self._buckets: dict[str, tuple[float, ...]] = {}
        self._callbacks: dict[str, Callable[[], float]] = {}

    def describe(self, name: str, kind: str, text: str, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        """Declare a metric: ``kind`` is counter, gauge or histogram."""
        with self._lock:
            self._help[name] = (kind, text)
            if kind == "histogram":
                self._hist.setdefault(name, {})
                self._buckets[name] = buckets
            else:
                self._values.setdefault(name, {})

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            series = self._values[name]
            series[key] = series.get(key, 0.0) + amount

    def set(self, name: str, value: float, **labels: str) -> None:
        with self._lock:
            self._values[name][tuple(sorted(labels.items()))] = float(value)

    def gauge_callback(self, name: str, fn: Callable[[], float]) -> None:
        """A gauge whose value is read when scraped (outbox depth, broker connected)."""
        with self._lock:
            self._callbacks[name] = fn

    def observe(self, name: str, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            buckets = self._buckets[name]
            counts, total, n = self._hist[name].get(key, ([0] * len(buckets), 0.0, 0))
            index = bisect.bisect_left(buckets, value)
            if index < len(buckets):
                counts[index] += 1
            self._hist[name][key] = (counts, total + value, n + 1)

    def value(self, name: str, **labels: str) -> float:
        """The current value of a counter or gauge series (0 when never set)."""
        with self._lock:
            return self._values.get(name, {}).get(tuple(sorted(labels.items())), 0.0)

    def render(self) -> str:
        """The exposition text of every metric."""
        with self._lock:
            callbacks = dict(self._callbacks)
        current = {name: fn() for name, fn in callbacks.items()}
        lines: list[str] = []
        with self._lock:
            for name, (kind, text) in sorted(self._help.items()):
                lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
                if name in current:
                    lines.append(f"{name} {current[name]:g}")
                elif kind == "histogram":
                    buckets = self._buckets[name]
                    for labels, (counts, total, n) in sorted(self._hist[name].items()):
                        running = 0
                        for bound, count in zip(buckets, counts):
                            running += count
                            lines.append(f"{name}_bucket{_fmt_labels(labels, (('le', f'{bound:g}'),))} {running}")
                        lines.append(f"{name}_bucket{_fmt_labels(labels, (('le', '+Inf'),))} {n}")
                        lines.append(f"{name}_sum{_fmt_labels(labels)} {total:g}")
                        lines.append(f"{name}_count{_fmt_labels(labels)} {n}")
                else:
                    for labels, value in sorted(self._values[name].items()):
                        lines.append(f"{name}{_fmt_labels(labels)} {value:g}")
        return "\n".join(lines) + "\n"


class MetricsServer:
    """``GET /metrics`` on ``host:port`` in a named daemon thread; ``stop()`` joins it."""

    def __init__(self, registry: Registry, host: str, port: int) -> None:
        registry_ref = registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404, "only /metrics here")
                    return
                body = registry_ref.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                log.debug("metrics: " + format, *args)

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="edge-worker/metrics", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5.0)
