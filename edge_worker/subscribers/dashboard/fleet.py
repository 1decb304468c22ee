"""The fleet side of the board: a station's retained status, its silence, and the site rollup.

Pure functions, no network, no clock: the caller passes ``now``.

* :func:`status_from_document` copies, field by field, what the page shows of the retained
  ``<prefix>/<site>/<station>/status`` document (:func:`edge_worker.service.health.status_document`):
  state, problems, backend, pack name/version/digest, outbox depth, broker link, times.
* :func:`is_silent` says whether a station has gone quiet: nothing heard for longer than the
  configured ``silent_after`` while it never said it went offline.  A daemon refreshes its
  status every ``service.status_interval_seconds`` (30 s by default), so a live station is
  never quiet for long; a hung daemon, a cut bridge or a dead site broker is.
* :func:`site_rollup` counts, per site, what a central QA team scans for first.

Like :mod:`edge_worker.subscribers.dashboard.state`, nothing from a payload is trusted: a field of the
wrong type becomes None, texts are cut short, and nothing else is passed on.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

#: The ``state`` values of ``xray-qc/status@1``.
STATES = ("ok", "degraded", "stopped")
#: Default seconds without any message after which a station is flagged silent.
DEFAULT_SILENT_AFTER_S = 300.0
_MAX_PROBLEMS = 8
_MAX_TEXT = 300
_DIGEST = re.compile(r"[A-Za-z0-9:_-]{1,100}")


def _text(value: object, limit: int) -> str | None:
    return value[:limit] if isinstance(value, str) else None


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _count(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def status_from_document(payload: dict[str, Any], received: float) -> dict[str, Any]:
    """The fields the page shows of one status document received at ``received`` (POSIX s).

    Returns ``state``, ``problems`` (a list of ``{"component", "text"}`` sorted by component,
    at most eight), ``backend``, ``pack`` (``name``, ``version``, ``digest``; None when the
    document has none), ``outbox_depth``, ``broker_connected``, ``processed``, ``uptime_s``,
    ``last_message_at``, ``worker_version``, ``at`` (the station's clock when it built the
    document; ``received`` when absent) and ``received``.  Raises ValueError when ``state`` is
    not one of :data:`STATES`: without it the document says nothing about the station.
    """
    state = payload.get("state")
    if state not in STATES:
        raise ValueError(f"state {state!r} is not one of {STATES}")
    raw_problems = payload.get("problems")
    problems = []
    if isinstance(raw_problems, dict):
        for component in sorted(k for k in raw_problems if isinstance(k, str))[:_MAX_PROBLEMS]:
            problems.append({"component": component[:64], "text": _text(raw_problems[component], _MAX_TEXT) or ""})
    raw_pack = payload.get("pack")
    pack = None
    if isinstance(raw_pack, dict):
        digest = raw_pack.get("digest")
        pack = {
            "name": _text(raw_pack.get("name"), 64),
            "version": _text(raw_pack.get("version"), 32),
            "digest": digest if isinstance(digest, str) and _DIGEST.fullmatch(digest) else None,
        }
    connected = payload.get("broker_connected")
    return {
        "state": state,
        "problems": problems,
        "backend": _text(payload.get("backend"), 64),
        "pack": pack,
        "outbox_depth": _count(payload.get("outbox_depth")),
        "broker_connected": connected if isinstance(connected, bool) else None,
        "processed": _count(payload.get("processed")),
        "uptime_s": _number(payload.get("uptime_s")),
        "last_message_at": _number(payload.get("last_message_at")),
        "worker_version": _text(payload.get("worker_version"), 32),
        "at": _number(payload.get("at")) or received,
        "received": received,
    }


def is_silent(online: bool | None, heard: float | None, now: float, silent_after: float) -> bool:
    """True when a station was heard once, not for more than ``silent_after`` s, and never said
    it went offline (a station stopped cleanly says so: it is offline, not silent).

    ``heard`` is when the dashboard last received anything from the station, by the
    dashboard's own clock, so a station whose clock is wrong is not flagged for it.
    """
    return online is not False and heard is not None and now - heard > silent_after


def site_rollup(stations: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per site, sorted by name: ``site``, ``stations``, ``online``, ``offline``, ``silent``,
    ``degraded`` (status state degraded) and ``retake`` (latest decision retake) counts.

    ``stations`` are the dicts of :meth:`StationBoard.snapshot` (keys ``site``, ``online``,
    ``silent``, ``status``, ``latest``).
    """
    sites: dict[str, dict[str, Any]] = {}
    for st in stations:
        row = sites.setdefault(
            st["site"],
            {"site": st["site"], "stations": 0, "online": 0, "offline": 0, "silent": 0, "degraded": 0, "retake": 0},
        )
        row["stations"] += 1
        row["online"] += st["online"] is True
        row["offline"] += st["online"] is False
        row["silent"] += bool(st["silent"])
        row["degraded"] += bool(st["status"] and st["status"]["state"] == "degraded")
        row["retake"] += bool(st["latest"] and st["latest"]["decision"] == "retake")
    return [sites[name] for name in sorted(sites)]
