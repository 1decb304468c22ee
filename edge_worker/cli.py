"""The ``edge-worker`` command line: run, analyze, demo, check, dashboard, tail, bench, bridge-config,
review (adduser, export).

Argument parsing only; each subcommand hands over to the module that does the work.
Exit codes: 0 success; 1 a check failed, ``analyze --fail-on-reject`` rejected a file, or
``review export`` found nothing to export; 2 a usage or configuration error, an export folder
that is not empty, a folder ``run`` cannot use (state disk full or read-only), a pack
that fails verification, or an ``analyze`` path that does not exist.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from edge_worker import __version__
from edge_worker.errors import EdgeWorkerError
from edge_worker.subscribers.summary import summary_line

if TYPE_CHECKING:
    from edge_worker.publish.settings import MqttSettings
    from edge_worker.service.config import Config


def _quick_config(args: argparse.Namespace) -> Config:
    """A config from the quick-start flags (no file): the essentials, defaults for the rest."""
    from edge_worker.service.config import Config, with_overrides

    watch = Path(args.watch).resolve()
    return with_overrides(
        Config(),
        top={"site": args.site, "station": args.station},
        watch={"folder": watch},
        quarantine={"folder": Path(args.quarantine).resolve() if args.quarantine else watch / ".quarantine"},
        state={"folder": Path(args.state).resolve() if args.state else watch / ".state"},
        pack={"path": args.pack or ""},
        mqtt={"url": args.mqtt},
        inference={"backends": tuple(args.backend) if args.backend else ("onnxruntime-cpu",)},
        service={"metrics_listen": args.metrics or ""},
        retention={"judged": args.judged},
    )


def _cmd_run(args: argparse.Namespace) -> int:
    from edge_worker.service.config import load
    from edge_worker.service.systemd import run_daemon

    if args.config:
        if args.watch or args.site or args.station:
            raise SystemExit("edge-worker run: give either --config or the quick-start flags, not both")
        config = load(Path(args.config))
    else:
        missing = [f"--{n}" for n in ("watch", "site", "station") if not getattr(args, n)]
        if missing:
            raise SystemExit(f"edge-worker run: without --config, {' '.join(missing)} are required")
        config = _quick_config(args)
    return run_daemon(config)


def _iter_files(paths: Sequence[str]) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            files.extend(sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith(".")))
        else:
            files.append(p)
    return files


def _cmd_analyze(args: argparse.Namespace) -> int:
    """Judge the files; exit 0, or 1 with ``--fail-on-reject`` when any file was rejected, or 2
    for a missing path (checked before any pack loads) or no file at all."""
    from edge_worker.backends import LoadOptions, select
    from edge_worker.ingest.types import IngestPolicy
    from edge_worker.judging.routing import RoutedJudge, Router, parse_synonyms
    from edge_worker.packs.pack import bundled_pack_dirs, default_pack_dir, load_pack
    from edge_worker.pipeline.runner import Pipeline

    missing = [raw for raw in args.paths if not Path(raw).exists()]
    for raw in missing:
        print(f"edge-worker analyze: {raw}: no such file or folder", file=sys.stderr)
    if missing:
        return 2
    files = _iter_files(args.paths)
    if not files:
        print("edge-worker analyze: no files found", file=sys.stderr)
        return 2
    # Packs given: exactly those.  None given: the demo pack and every other bundled pack.
    dirs = [Path(p) for p in args.pack] if args.pack else [default_pack_dir(), *bundled_pack_dirs()]
    backend = select(args.backend or ["onnxruntime-cpu"])
    pipelines = [Pipeline(load_pack(d), backend, LoadOptions(threads=args.threads)) for d in dirs]
    router = Router(pipelines, parse_synonyms(["THORAX=CHEST", "LUNG=CHEST", "CXR=CHEST"]))
    judge = RoutedJudge(router, site="local", station="analyze", policy=IngestPolicy())
    rejected = 0
    for path in files:
        outcome = judge(path)
        rejected += outcome.kind == "error"
        if args.json:
            print(json.dumps({"file": str(path), "kind": outcome.kind, **outcome.payload}), flush=True)
        else:
            print(f"{path}: {summary_line(outcome.kind, outcome.payload)}", flush=True)
    if rejected:
        print(f"edge-worker analyze: {rejected} of {len(files)} file(s) rejected", file=sys.stderr)
    return 1 if rejected and args.fail_on_reject else 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from edge_worker.demo import run_demo

    return run_demo(
        mqtt_url=args.mqtt,
        stations=args.stations,
        interval_s=args.interval,
        count=args.count,
        workdir=Path(args.workdir) if args.workdir else None,
        pack_dir=Path(args.pack) if args.pack else None,
    )


def _cmd_check(args: argparse.Namespace) -> int:
    from edge_worker.service.check import run_checks

    return run_checks(
        Path(args.config) if args.config else None,
        backend=args.backend,
        pack_dir=Path(args.pack) if args.pack else None,
        skip_broker=args.skip_broker,
    )


def _cmd_rollback(args: argparse.Namespace) -> int:
    from edge_worker.packs.rollout import rollback
    from edge_worker.service.config import ConfigError, load

    config = load(Path(args.config))
    if not config.pack.rollout_folder:
        raise ConfigError("pack.rollout_folder is not set: there is no rollout to undo")
    target = rollback(Path(config.pack.rollout_folder))
    print(f"previous pack renamed in as {target}; the station checks it and swaps it in")
    return 0


def _watch_settings(args: argparse.Namespace) -> MqttSettings:
    """Broker settings for the read-only subcommands (dashboard, tail) from their flags."""
    from edge_worker.publish.settings import MqttSettings

    password = None
    if args.password_file:
        try:
            password = Path(args.password_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SystemExit(f"edge-worker {args.command}: cannot read --password-file: {exc}") from exc
    return MqttSettings.from_url(
        args.mqtt, password=password, ca_file=args.ca_file, topic_prefix=args.prefix, protocol=args.protocol
    )


def _cmd_dashboard(args: argparse.Namespace) -> int:
    from edge_worker.subscribers.dashboard.server import parse_listen, run_dashboard

    config = None
    if args.config:
        from edge_worker.subscribers.dashboard.config import load

        config = load(Path(args.config))
    settings = _watch_settings(args)
    return run_dashboard(
        settings,
        parse_listen(args.listen),
        prefix=settings.topic_prefix,
        client_id=args.client_id,
        silent_after=args.silent_after,
        config=config,
    )


def _cmd_review_adduser(args: argparse.Namespace) -> int:
    """Add a review user to the dashboard's review database (the one its --config names)."""
    import getpass

    from edge_worker.subscribers.dashboard.config import DashboardConfig, load
    from edge_worker.subscribers.review.auth import Accounts
    from edge_worker.subscribers.review.store import ReviewStore

    config = load(Path(args.config)) if args.config else DashboardConfig()
    url = args.database or config.database_url
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass(f"password for {args.name}: ")
        if getpass.getpass("again: ") != password:
            print("edge-worker review adduser: the passwords differ; nothing was changed", file=sys.stderr)
            return 2
    if len(password) < 8:
        print("edge-worker review adduser: a password needs at least 8 characters", file=sys.stderr)
        return 2
    store = ReviewStore(url)
    try:
        actor = f"cli:{getpass.getuser()}"
        user = Accounts(store).create_user(actor, args.name, args.role, password, operator=True)
    except ValueError as exc:
        print(f"edge-worker review adduser: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()
    print(f"review user {user.name} ({user.role}) added to {url.split('@')[-1]}")
    return 0


def _cmd_tail(args: argparse.Namespace) -> int:
    from edge_worker.subscribers.tail import run_tail

    settings = _watch_settings(args)
    return run_tail(settings, prefix=settings.topic_prefix, as_json=args.json, client_id=args.client_id)


def _cmd_bridge_config(args: argparse.Namespace) -> int:
    from edge_worker.publish.bridge import run_bridge_config

    print(run_bridge_config(
        Path(args.config), args.centre, out=Path(args.out) if args.out else None,
        password_file=Path(args.password_file) if args.password_file else None,
        cafile=args.cafile, certfile=args.certfile or "", keyfile=args.keyfile or "",
    ), end="")  # fmt: skip
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from edge_worker.bench.cli import run_command

    return run_command(args)


def _cmd_review_export(args: argparse.Namespace) -> int:
    from edge_worker.subscribers.review.export import run_export

    command = ["edge-worker", "review", "export", "--database", args.database, "--out", args.out, "--tier", args.tier]
    for flag, value in (("--since", args.since), ("--until", args.until), ("--salt-file", args.salt_file)):
        command += [flag, value] if value else []
    return run_export(args.database, Path(args.out), args.since, args.until, args.tier,
                      Path(args.salt_file) if args.salt_file else None, command)  # fmt: skip


def _add_review_adduser(review: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    adduser = review.add_parser("adduser", help="add a reviewer (audited); the password from a prompt")
    adduser.add_argument("name", help="user name (no spaces)")
    adduser.add_argument("--role", required=True, choices=["tier1", "tier2", "admin"], help="what the user may do")
    adduser.add_argument("--config", help="the dashboard's TOML file (its [review] database)")
    adduser.add_argument("--database", help="database URL instead of the config's")
    adduser.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    adduser.set_defaults(func=_cmd_review_adduser)


def _add_review_export(review: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    export = review.add_parser("export", help="reviewed images and final labels in the training recipes' format")
    export.add_argument("--database", required=True, help="the review store, sqlite:///path or postgresql+psycopg://...")
    export.add_argument("--out", required=True, help="an empty or new folder: images/, labels.csv, manifest.json")
    export.add_argument("--since", help="verdicts received at or after this ISO date (UTC)")
    export.add_argument("--until", help="verdicts received before this ISO date (UTC)")
    export.add_argument("--tier", default="2", choices=["2", "any"],
                        help="2: tier two's final decisions only (default); any: also tier one's undisputed good")
    export.add_argument("--salt-file", help="secret salt for the patient key (default: random, this export only)")
    export.set_defaults(func=_cmd_review_export)


def _add_watch_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mqtt", required=True, help="broker URL, mqtt://[user@]host[:port] or mqtts://...")
    parser.add_argument("--prefix", default="xray", help="first topic level(s) (mqtt.topic_prefix)")
    parser.add_argument("--password-file", help="file holding the broker password (user in the URL)")
    parser.add_argument("--ca-file", help="CA bundle for an mqtts:// broker (default: the system store)")
    parser.add_argument("--protocol", default="3.1.1", choices=["3.1.1", "5"], help="MQTT protocol version")
    parser.add_argument(
        "--client-id",
        help="MQTT client id naming the persistent session, stable across restarts "
        "(default edge-worker-<command>-<host name>; give each of several on one host its own)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(prog="edge-worker", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"edge-worker {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daemon: watch a folder, publish verdicts over MQTT")
    run.add_argument("--config", help="TOML config file (see systemd/edge-worker.toml)")
    run.add_argument("--watch", help="quick start: folder the modality writes DICOM files into")
    run.add_argument("--site", help="quick start: site name (topic level)")
    run.add_argument("--station", help="quick start: station id (topic level)")
    run.add_argument("--mqtt", default="mqtt://127.0.0.1:1883", help="quick start: broker URL")
    run.add_argument("--pack", help="quick start: model pack folder (default: the demo pack)")
    run.add_argument("--quarantine", help="quick start: quarantine folder (default WATCH/.quarantine)")
    run.add_argument("--state", help="quick start: state folder (default WATCH/.state)")
    run.add_argument("--backend", action="append", help="quick start: backend, repeat for a preference list")
    run.add_argument("--metrics", help="quick start: serve Prometheus metrics on HOST:PORT (default: off)")
    run.add_argument(
        "--judged", default="keep", choices=["keep", "archive", "delete"],
        help="quick start: what to do with judged files (default keep: a folder given on the command "
        "line is left as it is; archive moves them to STATE/archive/YYYY-MM-DD, bounded by the "
        "[retention] defaults)",
    )  # fmt: skip
    run.set_defaults(func=_cmd_run)

    analyze = sub.add_parser("analyze", help="judge files or folders and print one line each; no broker")
    analyze.add_argument("paths", nargs="+", help="DICOM files or folders (walked recursively)")
    analyze.add_argument(
        "--pack", action="append", help="model pack folder, repeat for several (default: every bundled pack)"
    )
    analyze.add_argument("--json", action="store_true", help="one JSON object per line")
    analyze.add_argument("--backend", action="append", help="backend, repeat for a preference list")
    analyze.add_argument("--threads", type=int, default=2, help="threads per network")
    analyze.add_argument(
        "--fail-on-reject", action="store_true", help="exit 1 when any file is rejected (default: 0)"
    )
    analyze.set_defaults(func=_cmd_analyze)

    demo = sub.add_parser("demo", help="broker + daemon + five simulated X-ray stations, verdicts printed")
    demo.add_argument("--mqtt", help="use this broker instead of the in-process one")
    demo.add_argument("--stations", type=int, default=5, help="number of simulated stations")
    demo.add_argument("--interval", type=float, default=1.0, help="seconds between exposures")
    demo.add_argument("--count", type=int, default=0, help="stop after this many verdicts (0: run until Ctrl-C)")
    demo.add_argument("--workdir", help="folder for the stations' watch folders (default: a temp folder)")
    demo.add_argument("--pack", help="model pack folder (default: the demo pack)")
    demo.set_defaults(func=_cmd_demo)

    check = sub.add_parser("check", help="validate config, pack, backend and broker; non-zero on any problem")
    check.add_argument("--config", help="TOML config file")
    check.add_argument("--backend", help="check this backend instead of the configured preference")
    check.add_argument("--pack", help="check this pack instead of the configured one")
    check.add_argument("--skip-broker", action="store_true", help="do not try to reach the broker")
    check.set_defaults(func=_cmd_check)

    rollback = sub.add_parser("rollback", help="put the pack before the last rollout back (pack.rollout_folder)")
    rollback.add_argument("--config", required=True, help="TOML config file of the station")
    rollback.set_defaults(func=_cmd_rollback)

    dashboard = sub.add_parser("dashboard", help="serve the ward dashboard: every station live in a browser")
    _add_watch_flags(dashboard)
    dashboard.add_argument(
        "--listen", default="127.0.0.1:8080", help="HOST:PORT to serve on (0.0.0.0:8080 for a wall screen)"
    )
    dashboard.add_argument(
        "--silent-after",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="flag a station not heard from for longer than this (unless it said it went offline) "
        "(default 300; stations refresh their status every 30 s)",
    )
    dashboard.add_argument(
        "--config", help="the dashboard's TOML file: the review pages and their database "
        "(edge_worker/subscribers/dashboard/config.py, docs/review.md); without it, the board alone"
    )  # fmt: skip
    dashboard.set_defaults(func=_cmd_dashboard)


    tail = sub.add_parser("tail", help="print every verdict, error and availability change as it arrives")
    _add_watch_flags(tail)
    tail.add_argument("--json", action="store_true", help="one JSON object per line")
    tail.set_defaults(func=_cmd_tail)

    from edge_worker.bench.cli import add_arguments  # argparse only: no measurement code loads

    bench = sub.add_parser("bench", help="measure latency, backlog throughput and memory; compare")
    add_arguments(bench)
    bench.set_defaults(func=_cmd_bench)

    bridge = sub.add_parser("bridge-config", help="print or write a site broker's bridge to the centre and its ACL")
    bridge.add_argument("--config", required=True, help="the site's TOML config (site, topic prefix, protocol)")
    bridge.add_argument("--centre", default="mqtts://centre:8883", help="central broker URL, mqtts://[user@]host:port "
                        "(default mqtts://centre:8883; user default bridge-<site>)")  # fmt: skip
    bridge.add_argument("--out", help="write bridge-<site>.conf (0600, with the password) and centre-acl-<site> here")
    bridge.add_argument("--password-file", help="file holding the bridge user's password on the centre")
    bridge.add_argument("--cafile", default="/etc/mosquitto/certs/centre-ca.crt", help="CA of the centre's certificate")
    bridge.add_argument("--certfile", help="the site broker's client certificate (with --keyfile)")
    bridge.add_argument("--keyfile", help="its private key")
    bridge.set_defaults(func=_cmd_bridge_config)

    # The review store's commands (the review extra): each adds itself to this group.
    review = sub.add_parser("review", help="the review store: add reviewers, export reviewed images and labels")
    review_commands = review.add_subparsers(dest="review_command", required=True)
    _add_review_adduser(review_commands)
    _add_review_export(review_commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``edge-worker`` console script."""
    args = build_parser().parse_args(argv)
    # The demo prints what the ward sees; the daemons' own log lines would drown it.
    quiet = args.command == "demo" and not args.verbose
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING if quiet else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args))
    except EdgeWorkerError as exc:
        print(f"edge-worker {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
