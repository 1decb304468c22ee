"""``python -m edge_worker.bench.fleet_load``: many sites against one central dashboard.

A bounded load test on loopback, real parts only: a mosquitto broker (the centre), the
dashboard as its own process (``edge-worker dashboard``, so its CPU time and memory are its
own), an HTTP client reading ``/events`` as a browser would, and a few publisher processes
(:mod:`edge_worker.bench.fleet_publisher`), each playing some sites with one MQTT client per
site, as bridged site brokers appear to the centre.

Measured on the dashboard process (``/proc``, so Linux only): CPU seconds and the share of
one core over the load, peak resident memory (``VmHWM``) and memory at the end; end to end,
per message sent during the load (the births before it, every station's ``online`` and first
status at once, are counted but not timed): the time from the publisher's ``publish()`` to
the event reaching the ``/events`` client (p50/p95/p99/max), split into the broker leg
(publish to the dashboard receiving it) and the dashboard leg (receiving it to the event on
the wire).  Checked: the board counted every published message of every kind, and the event
stream carried every verdict and every status.  Prints markdown (default) or JSON.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_worker.bench.broker import BenchBroker, BenchError, find_mosquitto
from edge_worker.bench.fleet_publisher import SiteGroup, plan_line

#: The board's bound on stations (:class:`edge_worker.subscribers.dashboard.state.StationBoard`).
MAX_STATIONS = 500


@dataclass(frozen=True)
class FleetPlan:
    """``sites`` x ``stations`` for ``seconds`` at ``rate_multiplier`` times the real rate, from
    ``publishers`` processes; intervals as in :class:`~edge_worker.bench.fleet_publisher.SiteGroup`;
    ``dashboard_port``: where the dashboard serves (0: a free port), to watch the page meanwhile."""

    sites: int = 50
    stations: int = 5
    seconds: float = 60.0
    rate_multiplier: float = 10.0
    publishers: int = 4
    verdict_every_s: float = 45.0
    status_every_s: float = 30.0
    seed: int = 1
    dashboard_port: int = 0

    def check(self) -> None:
        """Raise BenchError for a plan that cannot run."""
        if self.sites < 1 or self.stations < 1 or self.publishers < 1:
            raise BenchError("--sites, --stations and --publishers must be at least 1")
        if self.sites * self.stations > MAX_STATIONS:
            raise BenchError(f"{self.sites * self.stations} stations: the board keeps at most {MAX_STATIONS}")
        if not (self.seconds > 0 and self.rate_multiplier > 0 and self.verdict_every_s > 0 and self.status_every_s > 0):
            raise BenchError("--seconds, --rate-multiplier and the intervals must be more than 0")


def percentiles(values: list[float]) -> dict[str, float | None]:
    """``p50``, ``p95``, ``p99`` (nearest rank) and ``max`` of ``values`` in milliseconds."""
    ordered = sorted(values)
    if not ordered:
        return {"p50": None, "p95": None, "p99": None, "max": None}

    def rank(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.5) - 1))] * 1000, 2)

    return {"p50": rank(0.50), "p95": rank(0.95), "p99": rank(0.99), "max": round(ordered[-1] * 1000, 2)}


@dataclass
class _Stream:
    """What the ``/events`` client saw: verdict ids and status times, with the latencies of
    those sent from ``timed_from`` on (the births before it arrive as one burst, by design)."""

    verdicts: set[str] = field(default_factory=set)
    statuses: dict[str, set[float]] = field(default_factory=dict)
    total: dict[str, list[float]] = field(default_factory=lambda: {"verdict": [], "status": []})
    dashboard_leg: list[float] = field(default_factory=list)
    broker_leg: list[float] = field(default_factory=list)
    events: int = 0
    ended: str = ""
    timed_from: float = float("inf")

    def take(self, station: dict[str, Any], now: float) -> None:
        latest, status = station.get("latest"), station.get("status")
        if latest and latest["kind"] == "verdict" and latest["id"] not in self.verdicts:
            self.verdicts.add(latest["id"])
            self._sample("verdict", latest["at"], latest["received"], now)
        if status:
            seen = self.statuses.setdefault(station["key"], set())
            if status["at"] not in seen:
                seen.add(status["at"])
                self._sample("status", status["at"], status["received"], now)

    def _sample(self, kind: str, sent: float, received: float, now: float) -> None:
        if sent < self.timed_from:
            return
        self.total[kind].append(now - sent)
        self.broker_leg.append(received - sent)
        self.dashboard_leg.append(now - received)


def _read_events(host: str, port: int, stream: _Stream, ready: threading.Event) -> None:
    """Read ``/events`` until the server ends it; every station event goes to ``stream``."""
    conn = http.client.HTTPConnection(host, port, timeout=60)
    try:
        conn.request("GET", "/events")
        response = conn.getresponse()
        name, data = "", b""
        while True:
            line = response.readline()
            if not line:
                stream.ended = stream.ended or "server closed the stream"
                return
            if line.startswith(b"event:"):
                name = line[6:].strip().decode()
            elif line.startswith(b"data:"):
                data = line[5:].strip()
            elif line == b"\n" and data:
                now = time.time()
                stream.events += 1
                body = json.loads(data)
                if name == "snapshot":
                    ready.set()
                elif name == "station":
                    stream.take(body["station"], now)
                name, data = "", b""
    except OSError as exc:
        stream.ended = f"stream failed: {exc}"
    finally:
        conn.close()


def _proc_usage(pid: int) -> dict[str, float]:
    """CPU seconds (user + system), ``VmHWM`` and ``VmRSS`` (MiB) of a live process."""
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    usage = {"cpu_s": (int(stat[11]) + int(stat[12])) / ticks}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            usage[key] = int(value.split()[0]) / 1024
    return usage


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get_json(port: int, path: str) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        return dict(json.loads(conn.getresponse().read()))
    finally:
        conn.close()


def _until(what: str, check: Any, timeout: float, log: Path) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except OSError:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}; dashboard log:\n{tail}")
        time.sleep(0.1)


def _stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _machine() -> dict[str, Any]:
    model = ""
    try:
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), "")  # fmt: skip
    except OSError:
        pass  # not Linux: the model stays unknown
    return {"cpus": os.cpu_count(), "cpu_model": model, "python": platform.python_version(),
            "loadavg_1min": round(os.getloadavg()[0], 2)}  # fmt: skip


def run_fleet_load(plan: FleetPlan) -> dict[str, Any]:
    """Run the load test of ``plan``; the report (see the module docstring).  BenchError if a
    part cannot start (no mosquitto, the dashboard does not come up)."""
    plan.check()
    if find_mosquitto() is None:
        raise BenchError("the fleet load test needs mosquitto (apt install mosquitto)")
    machine = _machine()
    with BenchBroker("mosquitto") as broker, tempfile.TemporaryDirectory(prefix="edge-fleet-") as tmp:
        log = Path(tmp) / "dashboard.log"
        port = plan.dashboard_port or _free_port()
        with log.open("wb") as out:
            dashboard = subprocess.Popen(
                [sys.executable, "-m", "edge_worker", "dashboard", "--mqtt", broker.url, "--listen",
                 f"127.0.0.1:{port}", "--client-id", "fleet-load-dashboard"],
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        publishers: list[subprocess.Popen[str]] = []
        stream = _Stream()
        reader: threading.Thread | None = None
        try:
            _until("the dashboard to subscribe", lambda: _get_json(port, "/api/stations")["broker"]["connected"], 60, log)
            idle = _proc_usage(dashboard.pid)
            ready = threading.Event()
            reader = threading.Thread(target=_read_events, args=("127.0.0.1", port, stream, ready),
                                      name="edge-worker/fleet-load-events")  # fmt: skip
            reader.start()
            _until("the event stream", ready.is_set, 10, log)
            names = [f"site-{n:03d}" for n in range(1, plan.sites + 1)]
            groups = [names[i :: plan.publishers] for i in range(min(plan.publishers, plan.sites))]
            for i, sites in enumerate(groups):
                group = SiteGroup(broker.host, broker.port, "xray", sites, plan.stations, plan.seconds,
                                  plan.rate_multiplier, plan.verdict_every_s, plan.status_every_s, plan.seed + i)  # fmt: skip
                proc = subprocess.Popen([sys.executable, "-m", "edge_worker.bench.fleet_publisher"], text=True,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
                assert proc.stdin is not None and proc.stdout is not None
                proc.stdin.write(plan_line(group))
                proc.stdin.flush()
                publishers.append(proc)
            for proc in publishers:
                assert proc.stdout is not None
                if proc.stdout.readline().strip() != "ready":
                    raise BenchError("a publisher process did not start (see its stderr above)")
            before = _proc_usage(dashboard.pid)
            go = time.time() + 0.2
            stream.timed_from = go
            for proc in publishers:
                assert proc.stdin is not None
                proc.stdin.write(f"go {go}\n")
                proc.stdin.flush()
            results = []
            for proc in publishers:
                assert proc.stdout is not None
                line = proc.stdout.readline()
                if not line:
                    raise BenchError("a publisher process ended without a result")
                results.append(json.loads(line))
                proc.wait(30)
            published = {k: sum(r["published"][k] for r in results) for k in results[0]["published"]}
            ids = {i for r in results for i in r["verdict_ids"]}

            def caught_up() -> dict[str, Any] | None:
                snap = _get_json(port, "/api/stations")
                counts = snap["messages"]
                return snap if all(counts[k] >= n for k, n in published.items()) else None

            snap = _until("the board to count every message", caught_up, 60, log)
            drained = time.time()
            _until("the event stream to carry every verdict", lambda: ids <= stream.verdicts, 30, log)
            _until("the event stream to carry every status",
                   lambda: sum(len(s) for s in stream.statuses.values()) >= published["status"], 30, log)  # fmt: skip
            statuses = sum(len(s) for s in stream.statuses.values())
            after = _proc_usage(dashboard.pid)
        finally:
            for proc in publishers:
                _stop(proc)
            _stop(dashboard)
            if reader is not None:
                reader.join(30)
    load_s = drained - go
    # The births (an online and a status per station) went out before the load: not in its rate.
    messages = sum(published.values()) - 2 * published["availability"]
    board = snap["messages"]
    return {
        "plan": {"sites": plan.sites, "stations_per_site": plan.stations, "stations": plan.sites * plan.stations,
                 "seconds": plan.seconds, "rate_multiplier": plan.rate_multiplier, "publishers": len(groups),
                 "verdict_every_s": plan.verdict_every_s, "status_every_s": plan.status_every_s},
        "machine": {**machine, "loadavg_1min_after": round(os.getloadavg()[0], 2), "broker": broker.kind},
        "published": published,
        "board": board,
        "board_stations": len(snap["stations"]),
        "board_sites": len(snap["sites"]),
        "every_message_counted": all(board[k] == n for k, n in published.items()),
        "stream": {"events": stream.events, "verdicts": len(stream.verdicts & ids), "statuses": statuses,
                   "every_verdict_and_status": ids <= stream.verdicts and statuses == published["status"],
                   "ended": stream.ended},
        "rate": {"messages_per_s": round(messages / load_s, 1),
                 "verdicts_per_s": round(published["verdict"] / load_s, 2),
                 "real_time_equivalent_msgs_per_s": round(messages / load_s / plan.rate_multiplier, 1),
                 "publisher_max_lag_s": max(r["max_lag_s"] for r in results),
                 "unacked": sum(r["unacked"] for r in results)},
        "dashboard": {"cpu_s_idle_start": round(idle["cpu_s"], 2), "cpu_s_load": round(after["cpu_s"] - before["cpu_s"], 2),
                      "cpu_percent_of_one_core": round(100 * (after["cpu_s"] - before["cpu_s"]) / load_s, 1),
                      "rss_mib_before": round(before["VmRSS"], 1), "rss_mib_end": round(after["VmRSS"], 1),
                      "max_rss_mib": round(after["VmHWM"], 1), "load_window_s": round(load_s, 2)},
        "latency_ms": {"verdict": percentiles(stream.total["verdict"]), "status": percentiles(stream.total["status"]),
                       "all": percentiles(stream.total["verdict"] + stream.total["status"]),
                       "broker_leg": percentiles(stream.broker_leg), "dashboard_leg": percentiles(stream.dashboard_leg)},
    }  # fmt: skip


def markdown(report: dict[str, Any]) -> str:
    """The report as the lines of BENCHMARKS.md's "Many sites: fleet dashboard" section."""
    p, d, r, lat = report["plan"], report["dashboard"], report["rate"], report["latency_ms"]
    m = report["machine"]
    rows = [
        (f"- Plan: {p['sites']} sites x {p['stations_per_site']} stations = {p['stations']}, {p['seconds']:g} s at "
        f"{p['rate_multiplier']:g}x (a verdict every {p['verdict_every_s']:g} s on average and a status every "
        f"{p['status_every_s']:g} s per station, real time), {p['publishers']} publisher processes, one MQTT "
        "client per site."),
        (f"- Machine: {m['cpus']} CPUs ({m['cpu_model'] or 'unknown'}), Python {m['python']}, {m['broker']}; "
        f"load average {m['loadavg_1min']} before, {m['loadavg_1min_after']} after."),
        (f"- Published: {report['published']}; every message counted by the board: "
        f"{report['every_message_counted']}; every verdict and status on the event stream: "
        f"{report['stream']['every_verdict_and_status']} ({report['stream']['events']} events)."),
        (f"- Rate: {r['messages_per_s']} messages/s ({r['verdicts_per_s']} verdicts/s), the real-time load of "
        f"{r['real_time_equivalent_msgs_per_s']} messages/s times {p['rate_multiplier']:g}; publishers at most "
        f"{r['publisher_max_lag_s']} s behind their schedule."),
        "",
        "| dashboard process | value |",
        "|---|---|",
        f"| CPU over the load ({d['load_window_s']} s) | {d['cpu_s_load']} s = {d['cpu_percent_of_one_core']} % of one core |",
        f"| resident memory before / at the end | {d['rss_mib_before']} / {d['rss_mib_end']} MiB |",
        f"| peak resident memory (VmHWM) | {d['max_rss_mib']} MiB |",
        "",
        "| publish -> event on /events, ms | p50 | p95 | p99 | max |",
        "|---|---|---|---|---|",
    ]
    for name, label in (("verdict", "verdicts"), ("status", "statuses"), ("all", "all"),
                        ("broker_leg", "broker leg (publish -> dashboard)"),
                        ("dashboard_leg", "dashboard leg (dashboard -> /events client)")):  # fmt: skip
        q = lat[name]
        rows.append(f"| {label} | {q['p50']} | {q['p95']} | {q['p99']} | {q['max']} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    """Parse the flags, run, print; 0 when every message was seen, 1 when some were not, 2 on error."""
    parser = argparse.ArgumentParser(prog="python -m edge_worker.bench.fleet_load", description=__doc__.split("\n")[0])
    defaults = FleetPlan()
    parser.add_argument("--sites", type=int, default=defaults.sites)
    parser.add_argument("--stations", type=int, default=defaults.stations, help="stations per site")
    parser.add_argument("--seconds", type=float, default=defaults.seconds, help="length of the load")
    parser.add_argument("--rate-multiplier", type=float, default=defaults.rate_multiplier,
                        help="times the real rate (10: a status every 3 s per station)")  # fmt: skip
    parser.add_argument("--publishers", type=int, default=defaults.publishers, help="publisher processes")
    parser.add_argument("--verdict-every", type=float, default=defaults.verdict_every_s,
                        help="mean seconds between two verdicts of a station, real time")  # fmt: skip
    parser.add_argument("--status-every", type=float, default=defaults.status_every_s,
                        help="seconds between two statuses of a station, real time")  # fmt: skip
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--dashboard-port", type=int, default=0,
                        help="serve the dashboard on 127.0.0.1:PORT, to open it in a browser during the run")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--out", type=Path, help="also write the JSON report here")
    args = parser.parse_args(argv)
    plan = FleetPlan(args.sites, args.stations, args.seconds, args.rate_multiplier, args.publishers,
                     args.verdict_every, args.status_every, args.seed, args.dashboard_port)  # fmt: skip
    try:
        report = run_fleet_load(plan)
    except BenchError as exc:
        print(f"fleet_load: {exc}", file=sys.stderr)
        return 2
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2) if args.json else markdown(report))
    return 0 if report["every_message_counted"] and report["stream"]["every_verdict_and_status"] else 1


if __name__ == "__main__":
    sys.exit(main())
