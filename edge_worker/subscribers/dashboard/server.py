"""``edge-worker dashboard``: the ward's live view, served by the standard library.

One :class:`Dashboard` holds an MQTT subscription (:mod:`edge_worker.subscribers.dashboard.feed`), the
station board (:mod:`edge_worker.subscribers.dashboard.state`) and a threading HTTP server with:

* ``/``, ``/app.js``, ``/style.css``: the page (package data, no third-party code);
* ``/api/stations``: the board as JSON (stations, their sites, message counts);
* ``/events``: server-sent events: ``snapshot`` on connect, then ``station`` and ``broker``
  changes as they happen, and a ``heartbeat`` every few seconds.  Heartbeats are events rather
  than SSE comments because the page needs to *see* them: a stream that has gone quiet (a
  half-open connection) is closed and reopened by the page itself.

The page has two views of one board: the ward's tiles (``/``), grouped under one header per
site, and the central team's fleet table (``/?view=fleet``).

With review parts (``--config`` with ``[review] enabled``, :mod:`.review_compose`) the same
server also answers ``/review/...`` (GET pages, POST forms, :mod:`.review_site`) and
``/metrics``, puts the board behind the review sign-in unless ``public_board``, subscribes to
``<prefix>/+/+/review-copy`` as well, and hands every verdict and review copy to the review
recorder (a queue: the board never waits on the database).

Threads: paho's network thread, the HTTP accept loop, one thread per HTTP request, a
sweeper that flags silent stations once a second, and with review the recorder, all named
``edge-worker/...``;
:meth:`Dashboard.stop` ends every event stream and joins them all.
"""

from __future__ import annotations

import http.server
import itertools
import json
import logging
import queue
import signal
import socket
import sys
import threading
import time
from importlib import resources
from types import FrameType
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qs

from edge_worker.errors import ConfigError
from edge_worker.publish.settings import MqttSettings
from edge_worker.subscribers.dashboard.feed import MqttFeed, station_filters
from edge_worker.subscribers.dashboard.fleet import DEFAULT_SILENT_AFTER_S
from edge_worker.subscribers.dashboard.state import KINDS, Event, StationBoard

#: The board paths behind the review sign-in (unless public_board), and the copies' topic kind.
BOARD_PATHS = frozenset({"/", "/index.html", "/events", "/api/stations"})
COPY_KIND = "review-copy"

if TYPE_CHECKING:
    from edge_worker.subscribers.dashboard.config import DashboardConfig
    from edge_worker.subscribers.dashboard.review_compose import ReviewParts
    from edge_worker.subscribers.dashboard.review_site import Request

log = logging.getLogger(__name__)

STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
    "/review.js": ("review.js", "text/javascript; charset=utf-8"),
    "/review.css": ("review.css", "text/css; charset=utf-8"),
}
#: The largest form body a review page may POST.
MAX_FORM_BYTES = 64 * 1024
# The page loads nothing from elsewhere; thumbnails arrive as data: URLs.
_CSP = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'"
#: How long the browser's EventSource waits before reconnecting (the SSE ``retry`` field).
RETRY_MS = 2000
_CLOSE = object()


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) as ``(host, port)``; ConfigError if malformed."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ConfigError(f"--listen {text!r}: expected HOST:PORT, e.g. 127.0.0.1:8080")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    port = int(port_text)
    if not host or not 0 <= port <= 65535:
        raise ConfigError(f"--listen {text!r}: expected HOST:PORT with a port in 0..65535")
    return host, port


def _sse(name: str, data: dict[str, Any]) -> bytes:
    body = json.dumps(data, separators=(",", ":"), allow_nan=False)
    return f"event: {name}\ndata: {body}\n\n".encode()


class _Hub:
    """Fan-out of events to connected event streams, one bounded queue per stream.

    A stream whose queue is full (a browser that stopped reading) is closed rather than allowed
    to hold memory; its browser reconnects and starts again from a snapshot.
    """

    def __init__(self, depth: int = 256) -> None:
        self._depth = depth
        self._queues: set[queue.Queue[object]] = set()
        self._closed = False

    def subscribe(self) -> queue.Queue[object]:
        q: queue.Queue[object] = queue.Queue(self._depth)
        if self._closed:  # a browser that connected while the server was stopping
            q.put_nowait(_CLOSE)
        else:
            self._queues.add(q)
        return q

    def unsubscribe(self, q: queue.Queue[object]) -> None:
        self._queues.discard(q)

    def publish(self, item: object) -> None:
        for q in list(self._queues):
            try:
                q.put_nowait(item)
            except queue.Full:
                log.warning("dashboard: a browser is not reading its event stream; closing it")
                self._close(q)

    def close_all(self) -> None:
        self._closed = True
        for q in list(self._queues):
            self._close(q)

    def _close(self, q: queue.Queue[object]) -> None:
        self._queues.discard(q)
        while True:  # make room so the sentinel always fits
            try:
                q.get_nowait()
            except queue.Empty:
                break
        q.put_nowait(_CLOSE)

    def __len__(self) -> int:
        return len(self._queues)


class _HttpServer(http.server.ThreadingHTTPServer):
    """ThreadingHTTPServer whose request threads are named, tracked and joined on close.

    ``server_close`` shuts down the sockets still open (an idle pre-connection from a browser
    would otherwise hold its thread until the read timeout) and joins every request thread.
    """

    daemon_threads = False
    block_on_close = False  # we join our own list of threads instead of socketserver's
    dashboard: Dashboard

    def __init__(self, address: tuple[str, int], handler: type[http.server.BaseHTTPRequestHandler]) -> None:
        self._names = itertools.count(1)
        self._live_lock = threading.Lock()
        self._live: dict[threading.Thread, socket.socket] = {}
        super().__init__(address, handler)  # binds; calls server_close() if that fails

    def process_request(self, request: Any, client_address: Any) -> None:
        t = threading.Thread(
            target=self._run_request,
            args=(request, client_address),
            name=f"edge-worker/dashboard-http-{next(self._names)}",
        )
        with self._live_lock:
            self._live[t] = request
        t.start()

    def _run_request(self, request: Any, client_address: Any) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            with self._live_lock:
                self._live.pop(threading.current_thread(), None)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver prints the traceback to stderr; a vanished browser is not an error.
        log.debug("dashboard: request from %s failed: %r", client_address, sys.exc_info()[1])

    def server_close(self) -> None:
        super().server_close()
        with self._live_lock:
            live = dict(self._live)
        for sock in live.values():
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError as exc:  # already closed by its thread: nothing left to end
                log.debug("dashboard: socket already closed: %s", exc)
        for t in live:
            t.join()


class _HttpServer6(_HttpServer):
    address_family = socket.AF_INET6


class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = "edge-worker-dashboard"
    # A request that does not arrive, or a browser that stops reading, frees its thread.
    timeout = 30

    @property
    def dashboard(self) -> Dashboard:
        return cast(_HttpServer, self.server).dashboard

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http %s: %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes, content_type: str, headers: list[tuple[str, str]] | None = None) -> None:
        self.send_response(status)
        for name, value in headers or ():
            self.send_header(name, value)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-cache")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", _CSP)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.do_GET()

    def _request(self, form: dict[str, list[str]] | None = None) -> Request:
        from edge_worker.subscribers.dashboard.review_site import Request

        path, _, query = self.path.partition("?")
        return Request(self.command if self.command != "HEAD" else "GET", path, parse_qs(query), form or {},
                       {k: v for k, v in self.headers.items()})  # fmt: skip

    def _review(self, form: dict[str, list[str]] | None = None) -> bool:
        """Answer a review path (or refuse the board to a stranger); False: not handled."""
        review = self.dashboard.review
        if review is None:
            return False
        req = self._request(form)
        answer = review.site.board_gate(req) if req.path in BOARD_PATHS else review.site.handle(req)
        if answer is None:
            return False
        self._send(answer.status, answer.body, answer.content_type, answer.headers)
        return True

    def do_POST(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_FORM_BYTES:
            self._send(413, b"form too large\n", "text/plain; charset=utf-8")
            return
        raw = self.rfile.read(length).decode("utf-8", errors="replace")
        if not self._review(parse_qs(raw, keep_blank_values=True)):
            self._send(404, b"not found\n", "text/plain; charset=utf-8")

    def do_GET(self) -> None:
        if self._review():
            return
        path = self.path.split("?", 1)[0]
        if path == "/events":
            self._events()
        elif path == "/api/stations":
            body = json.dumps(self.dashboard.snapshot(), allow_nan=False).encode()
            self._send(200, body, "application/json")
        elif path in STATIC:
            name, content_type = STATIC[path]
            self._send(200, self.dashboard.static[name], content_type)
        else:
            self._send(404, b"not found\n", "text/plain; charset=utf-8")

    def _events(self) -> None:
        d = self.dashboard
        snapshot, q = d.attach()
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("X-Accel-Buffering", "no")  # a reverse proxy must not buffer it
            self.end_headers()
            self.wfile.write(f"retry: {RETRY_MS}\n\n".encode() + _sse("snapshot", snapshot))
            self.wfile.flush()
            while True:
                try:
                    item = q.get(timeout=d.heartbeat_s)
                except queue.Empty:
                    item = Event("heartbeat", {"server_time": time.time()})
                if item is _CLOSE:
                    return
                event = cast(Event, item)
                self.wfile.write(_sse(event.name, event.data))
                self.wfile.flush()
        except OSError as exc:  # the browser went away (reset, broken pipe, write timeout)
            log.debug("dashboard: event stream to %s ended: %s", self.address_string(), exc)
        finally:
            d.detach(q)


class Dashboard:
    """The dashboard: MQTT subscription + station board + HTTP server.

    ``settings``: the broker; ``listen``: ``(host, port)`` (port 0 picks a free one, see
    :attr:`address`); ``prefix``: first topic level(s); ``history``: verdicts kept per
    station; ``heartbeat_s``: seconds between heartbeat events on an idle stream;
    ``client_id``: the persistent MQTT session's id (None: ``edge-worker-dashboard-<host>``);
    ``silent_after``: seconds without news after which a station is flagged silent (> 0,
    else ConfigError).  Each station's retained ``latest`` summary and ``status`` fill the
    board as soon as it subscribes.
    """

    #: Seconds between two sweeps for silent stations.
    sweep_s = 1.0

    def __init__(
        self,
        settings: MqttSettings,
        listen: tuple[str, int] = ("127.0.0.1", 8080),
        prefix: str = "xray",
        history: int = 10,
        heartbeat_s: float = 5.0,
        client_id: str | None = None,
        silent_after: float = DEFAULT_SILENT_AFTER_S,
        review: ReviewParts | None = None,
    ) -> None:
        if not silent_after > 0:
            raise ConfigError(f"--silent-after must be more than 0 seconds, got {silent_after}")
        self.settings = settings
        self.listen = listen
        self.heartbeat_s = heartbeat_s
        self.board = StationBoard(prefix, history, silent_after=silent_after)
        self.review = review
        self._lock = threading.Lock()  # the board and the hub change together
        self._hub = _Hub()
        self.static = {
            name: (resources.files("edge_worker.subscribers.dashboard") / "static" / name).read_bytes()
            for name, _ in STATIC.values()
        }
        kinds = KINDS if review is None else (*KINDS, COPY_KIND)
        self._feed = MqttFeed(
            settings, station_filters(prefix, kinds), self._on_message, self._on_broker, client_id=client_id
        )
        self._http: _HttpServer | None = None
        self._serve: threading.Thread | None = None
        self._sweeper: threading.Thread | None = None
        self._stop_sweep = threading.Event()

    @property
    def address(self) -> tuple[str, int]:
        """The address the server listens on (after :meth:`start`)."""
        if self._http is None:
            raise RuntimeError("the dashboard is not started")
        host, port = self._http.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        """``http://host:port/`` of the page."""
        host, port = self.address
        return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"

    @property
    def streams(self) -> int:
        """Event streams open now."""
        with self._lock:
            return len(self._hub)

    def start(self) -> None:
        """Bind the HTTP server (ConfigError if the address is taken) and start everything."""
        host, port = self.listen
        server_class = _HttpServer6 if ":" in host else _HttpServer
        try:
            self._http = server_class((host, port), _Handler)
        except OSError as exc:
            raise ConfigError(f"dashboard cannot listen on {host}:{port}: {exc}") from exc
        self._http.dashboard = self
        self._serve = threading.Thread(
            target=self._http.serve_forever, kwargs={"poll_interval": 0.2}, name="edge-worker/dashboard-accept"
        )
        self._serve.start()
        self._stop_sweep.clear()
        self._sweeper = threading.Thread(target=self._sweep_loop, name="edge-worker/dashboard-sweep")
        self._sweeper.start()
        if self.review is not None:
            self.review.start()
        self._feed.start()
        log.info("dashboard: open %s in a browser (broker %s)", self.url, self.settings.url)

    def stop(self) -> None:
        """Stop the subscription, end every event stream, stop the server, join every thread."""
        self._feed.stop()
        if self.review is not None:
            self.review.stop()  # after the feed: nothing more arrives for it
        self._stop_sweep.set()
        if self._sweeper is not None:
            self._sweeper.join()
            self._sweeper = None
        if self._http is None or self._serve is None:
            return
        self._http.shutdown()
        with self._lock:
            self._hub.close_all()
        self._http.server_close()  # joins the request threads, event streams included
        self._serve.join()
        self._http = None
        log.info("dashboard: stopped")

    # -- the board -------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The whole board as JSON-ready data."""
        with self._lock:
            return self._snapshot()

    def _snapshot(self) -> dict[str, Any]:
        # ``review``: whether the page links to the review pages.
        return {**self.board.snapshot(time.time()), "review": self.review is not None}

    def attach(self) -> tuple[dict[str, Any], queue.Queue[object]]:
        """A snapshot and a queue that receives every change after it, with none missed."""
        with self._lock:
            return self._snapshot(), self._hub.subscribe()

    def detach(self, q: queue.Queue[object]) -> None:
        """Forget an event stream's queue."""
        with self._lock:
            self._hub.unsubscribe(q)

    def _on_message(self, topic: str, payload: bytes) -> None:
        if self.review is not None:
            kind = topic.rsplit("/", 1)[-1]
            if kind == COPY_KIND:  # for the copy store only, never the board
                self.review.offer(kind, payload)
                return
            if kind == "verdict":
                self.review.offer(kind, payload)  # a queue: the board never waits on the database
        with self._lock:
            event = self.board.apply(topic, payload, time.time())
            if event is not None:
                self._hub.publish(event)

    def _sweep_loop(self) -> None:
        while not self._stop_sweep.wait(self.sweep_s):
            with self._lock:
                for event in self.board.sweep(time.time()):
                    self._hub.publish(event)

    def _on_broker(self, connected: bool, detail: str) -> None:
        with self._lock:
            event = self.board.set_broker(connected, detail, time.time())
            if event is not None:
                self._hub.publish(event)


def run_dashboard(
    settings: MqttSettings,
    listen: tuple[str, int],
    prefix: str = "xray",
    client_id: str | None = None,
    silent_after: float = DEFAULT_SILENT_AFTER_S,
    config: DashboardConfig | None = None,
) -> int:
    """Serve the dashboard until SIGTERM or Ctrl-C; returns the exit code.

    ``silent_after``: seconds without news after which a station is flagged (ConfigError if not > 0).
    ``config``: the dashboard's file (``--config``); with ``[review] enabled`` the review pages
    are served and every verdict received is recorded (the ``review`` extra is needed).
    """
    review = None
    if config is not None and config.review.enabled:
        try:
            from edge_worker.subscribers.dashboard.review_compose import open_review
        except ImportError as exc:
            raise ConfigError(f"[review] enabled needs the review extra (pip install 'edge-worker[review]'): {exc}") from exc
        review = open_review(config, settings=settings, prefix=prefix)
    dashboard = Dashboard(settings, listen, prefix, client_id=client_id, silent_after=silent_after, review=review)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    dashboard.start()
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        log.info("dashboard: interrupted; stopping")
    finally:
        dashboard.stop()
        if review is not None:
            review.close()
    return 0
