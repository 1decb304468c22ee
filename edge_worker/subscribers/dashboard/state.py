"""Per-station state from MQTT messages: pure values, no network, no threads, no locks.

:class:`StationBoard` takes ``(topic, payload, now)`` for the topics
``<prefix>/<site>/<station>/verdict|error|availability|latest|status`` and keeps, per station:
online or offline, the latest message, a short history, the time of the last message, the
retained status (pack, backend, outbox depth, problems: :mod:`edge_worker.subscribers.dashboard.fleet`)
and whether the station has gone silent.  The retained ``latest`` summary gives a board
started late every station's last decision at once; it never replaces a newer message already
shown.  Silence is a matter of time passing, so :meth:`StationBoard.sweep` is called now and
then (the server does, every second) and reports the stations that went quiet.  Each change
comes back as an :class:`Event` (a name and a JSON-ready dict) for the server to push to
browsers; :meth:`StationBoard.snapshot` is the whole board for a browser that just connected.

The board trusts nothing in a payload: a message that is not JSON, lacks a field or carries an
unknown decision is logged and dropped, and everything the page shows is copied field by field
(so a publisher cannot smuggle extra data or markup through to the browser).
"""

from __future__ import annotations

import json
import logging
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from edge_worker.subscribers.dashboard.fleet import (
    DEFAULT_SILENT_AFTER_S,
    is_silent,
    site_rollup,
    status_from_document,
)
from edge_worker.subscribers.summary import rules_tally

log = logging.getLogger(__name__)

KINDS = ("verdict", "error", "availability", "latest", "status")
DECISIONS = ("ok", "retake", "review", "not_judged")
#: An error message (a rejected file) is shown as this decision.
REJECTED = "rejected"
THUMBNAIL_PREFIX = "data:image/png;base64,"
#: A thumbnail larger than this (characters of data URL) is not passed on to browsers.
MAX_THUMBNAIL_CHARS = 400_000
#: The same cap for a heatmap overlay drawn over the thumbnail.
MAX_HEATMAP_CHARS = MAX_THUMBNAIL_CHARS
#: A chest verdict has up to six reasons (four lung-edge rules, orientation and view uncertain)
#: and each rule's sentence, criterion cited, runs to about 450 characters: the ward must see
#: them whole.  The caps only bound what a publisher can push through to browsers.
MAX_REASONS = 8
MAX_TEXT = 800


@dataclass(frozen=True)
class Event:
    """One change to push to browsers: ``name`` is the SSE event name, ``data`` its JSON body."""

    name: str
    data: dict[str, Any]


@dataclass
class _Station:
    site: str
    station: str
    online: bool | None = None
    online_since: float | None = None
    last_message: float | None = None
    latest: dict[str, Any] | None = None
    history: deque[dict[str, Any]] = field(default_factory=deque)
    ids: deque[str] = field(default_factory=deque)
    status: dict[str, Any] | None = None
    #: When the board last heard something new from the station (its clock, not theirs).
    heard: float | None = None
    silent: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": f"{self.site}/{self.station}",
            "site": self.site,
            "station": self.station,
            "online": self.online,
            "online_since": self.online_since,
            "last_message": self.last_message,
            "latest": self.latest,
            "status": self.status,
            "heard": self.heard,
            "silent": self.silent,
            # The pictures ride only on ``latest``: ten per tile would bloat events.
            "history": [{k: v for k, v in e.items() if k not in ("thumbnail", "heatmap")} for e in self.history],
        }


def _table(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(value: object, limit: int = MAX_TEXT) -> str | None:
    return value[:limit] if isinstance(value, str) else None


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _epoch(value: object) -> float | None:
    """An ISO 8601 time with offset as POSIX seconds; None if absent or unparsable."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed.timestamp() if parsed.tzinfo is not None else None


def _reason_text(reason: Any) -> Any:
    """A reason's sentence: verdict@2 reasons are objects, verdict@1 ones plain strings."""
    return reason.get("text") if isinstance(reason, dict) else reason


def _reason_code(reason: Any) -> Any:
    return reason.get("code") if isinstance(reason, dict) else None


def entry_from_verdict(payload: dict[str, Any], received: float) -> dict[str, Any]:
    """The fields the page shows of one verdict payload; raises ValueError if it is unusable."""
    decision = payload.get("decision")
    if decision not in DECISIONS:
        raise ValueError(f"decision {decision!r} is not one of {DECISIONS}")
    msg_id = _text(payload.get("id"), 64)
    if not msg_id:
        raise ValueError("no id")
    quality, view = _table(payload.get("quality")), _table(payload.get("view"))
    orient, times = _table(payload.get("orientation")), _table(payload.get("times"))
    raw_reasons = payload.get("reasons")
    reasons: list[Any] = raw_reasons if isinstance(raw_reasons, list) else []
    grade = quality.get("grade")
    thumbnail = payload.get("thumbnail")
    if not (isinstance(thumbnail, str) and thumbnail.startswith(THUMBNAIL_PREFIX)):
        thumbnail = None
    elif len(thumbnail) > MAX_THUMBNAIL_CHARS:
        log.warning("verdict %s: thumbnail of %d characters not passed on", msg_id, len(thumbnail))
        thumbnail = None
    return {
        "id": msg_id,
        "kind": "verdict",
        "decision": decision,
        "at": _epoch(times.get("verdict_made")) or received,
        "received": received,
        "score": _number(quality.get("score")),
        "grade": grade if isinstance(grade, int) and not isinstance(grade, bool) else None,
        "view": _text(view.get("label"), 16),
        "view_confidence": _number(view.get("confidence")),
        "angle_deg": _number(orient.get("angle_deg")) if orient else None,
        "rotate_deg": _number(orient.get("suggested_rotation_deg")) if orient else None,
        "reasons": [r for r in (_text(_reason_text(x)) for x in reasons[:MAX_REASONS]) if r],
        "reason_codes": [c for c in (_text(_reason_code(x), 64) for x in reasons[:MAX_REASONS]) if c],
        "not_for_clinical_use": payload.get("not_for_clinical_use") is True,
        "thumbnail": thumbnail,
        "heatmap": _heatmap(payload, msg_id) if thumbnail else None,
        "rules": _rules(payload.get("rules")),
        "series": _series(payload.get("series")),
    }


def _heatmap(payload: dict[str, Any], msg_id: str) -> dict[str, str] | None:
    """The first heatmap with an overlay, as ``{"label", "overlay"}``; None if there is none.

    A research stage's map (``research_only``: paper 004's finding classifier) is never put on
    the ward tile: the tile says what the view network looked at, and a research answer is no
    part of the verdict a radiographer acts on (the review page lists it, marked).  Only for a thumbnail of the whole image (no ROI box): the overlay covers the whole image as
    stored, which is what such a thumbnail shows (:func:`edge_worker.judging.thumbnail.verdict_thumbnail`);
    over an ROI crop it would lie wrong.  An overlay over :data:`MAX_HEATMAP_CHARS` is dropped.
    """
    if _table(payload.get("roi")).get("box") is not None:
        return None
    for label, heat in _table(payload.get("heatmaps")).items():
        overlay = _table(heat).get("overlay")
        if _table(heat).get("research_only"):
            continue
        if not (isinstance(label, str) and isinstance(overlay, str) and overlay.startswith(THUMBNAIL_PREFIX)):
            continue
        if len(overlay) > MAX_HEATMAP_CHARS:
            log.warning("verdict %s: heatmap overlay of %d characters not passed on", msg_id, len(overlay))
            return None
        return {"label": label[:64], "overlay": overlay}
    return None


def _series(value: object) -> dict[str, Any] | None:
    """An MR series verdict's slices, score (0-10, higher better) and the flags above threshold."""
    series = _table(value)
    if not series:
        return None
    flagged = series.get("flagged")
    probabilities = _table(series.get("flags"))
    return {
        "slices": series.get("slices") if isinstance(series.get("slices"), int) else None,
        "score": _number(series.get("score")),
        "flagged": [{"flag": f, "probability": _number(probabilities.get(f))}
                    for f in (_text(x, 64) for x in (flagged if isinstance(flagged, list) else [])[:MAX_REASONS]) if f],
    }  # fmt: skip


def _rules(value: object) -> dict[str, Any] | None:
    """How many positioning rules passed, and the codes of those that did not."""
    tally = rules_tally(value[: MAX_REASONS * 4] if isinstance(value, list) else value)
    if tally is None:
        return None
    total, failed = tally
    return {"total": total, "passed": total - len(failed),
            "failed": [c for c in (_text(code, 64) for code in failed) if c]}  # fmt: skip


def entry_from_error(payload: dict[str, Any], received: float) -> dict[str, Any]:
    """The fields the page shows of one error (rejected file) payload; ValueError if unusable."""
    msg_id = _text(payload.get("id"), 64)
    reason = _text(payload.get("reason"), 64)
    if not msg_id or not reason:
        raise ValueError("no id or no reason")
    times = _table(payload.get("times"))
    return {
        "id": msg_id,
        "kind": "error",
        "decision": REJECTED,
        "at": _epoch(times.get("rejected")) or received,
        "received": received,
        "reason": reason,
        "detail": _text(payload.get("detail")) or "",
        "reasons": [f"file rejected: {reason}"],
        "not_for_clinical_use": False,
        "thumbnail": None,
    }


def entry_from_latest(payload: dict[str, Any], received: float) -> dict[str, Any]:
    """The fields the page shows of a retained ``xray-qc/latest@1`` summary; ValueError if unusable.

    The summary carries no thumbnail, view confidence or orientation: those stay empty.
    """
    kind = payload.get("kind")
    if kind == "error":
        reason = _text(payload.get("reason"), 64) or "unknown"
        error = entry_from_error({"id": payload.get("id"), "reason": reason, "detail": payload.get("detail"),
                                  "times": {"rejected": payload.get("time")}}, received)  # fmt: skip
        return error
    if kind != "verdict":
        raise ValueError(f"kind {kind!r} is not verdict or error")
    quality = _table(payload.get("quality"))
    verdict = {
        "id": payload.get("id"),
        "decision": payload.get("decision"),
        "quality": quality or None,
        "view": {"label": payload.get("view")},
        "times": {"verdict_made": payload.get("time")},
        "reasons": payload.get("reasons"),
        "not_for_clinical_use": payload.get("not_for_clinical_use"),
    }
    entry = entry_from_verdict(verdict, received)
    entry["view_confidence"] = None
    return entry


class StationBoard:
    """Every station's state, built from messages; not thread-safe (the server holds a lock).

    ``prefix`` is the first topic level(s) (``xray``); ``history`` bounds each station's
    history; ``max_stations`` bounds the board against a publisher inventing station names;
    ``silent_after``: seconds without news after which a station is flagged silent.
    :attr:`messages` counts what arrived: per kind, ``unusable`` payloads and stations
    ``over_limit``.
    """

    def __init__(
        self,
        prefix: str = "xray",
        history: int = 10,
        max_stations: int = 500,
        silent_after: float = DEFAULT_SILENT_AFTER_S,
    ) -> None:
        if history < 1:
            raise ValueError(f"history must be >= 1, got {history}")
        if not silent_after > 0:
            raise ValueError(f"silent_after must be > 0 s, got {silent_after}")
        self.prefix = prefix
        self.history = history
        self.max_stations = max_stations
        self.silent_after = silent_after
        self._stations: dict[tuple[str, str], _Station] = {}
        self.messages: dict[str, int] = {**dict.fromkeys(KINDS, 0), "unusable": 0, "over_limit": 0}
        self.broker: dict[str, Any] = {"connected": False, "since": None, "detail": "not connected yet"}

    def _parse_topic(self, topic: str) -> tuple[str, str, str] | None:
        head = self.prefix + "/"
        if not topic.startswith(head):
            return None
        levels = topic[len(head):].split("/")
        if len(levels) != 3 or levels[2] not in KINDS or not levels[0] or not levels[1]:
            return None
        return levels[0], levels[1], levels[2]

    def _station(self, site: str, station: str) -> _Station | None:
        key = (site, station)
        found = self._stations.get(key)
        if found is None:
            if len(self._stations) >= self.max_stations:
                self.messages["over_limit"] += 1
                log.warning("dashboard: %d stations already; %s/%s ignored", self.max_stations, site, station)
                return None
            found = self._stations[key] = _Station(site, station)
        return found

    def apply(self, topic: str, payload: bytes, now: float) -> Event | None:
        """Apply one MQTT message received at ``now`` (POSIX s); the change, or None if none.

        None for a topic outside the layout, an unusable payload (logged), a repeated
        availability, or a redelivered message (same id: delivery is at least once).  Every
        status document is an event: it moves the station's "heard" time.
        """
        parsed = self._parse_topic(topic)
        if parsed is None:
            log.debug("dashboard: topic %r is not <prefix>/<site>/<station>/<kind>", topic)
            return None
        site, name, kind = parsed
        self.messages[kind] += 1
        if kind == "availability":
            return self._availability(site, name, payload, now)
        parse = {
            "verdict": entry_from_verdict, "error": entry_from_error, "latest": entry_from_latest,
            "status": status_from_document,
        }[kind]  # fmt: skip
        try:
            body = json.loads(payload)
            if isinstance(body, dict):
                entry = parse(body, now)
        except ValueError as exc:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
            self.messages["unusable"] += 1
            log.warning("dashboard: unusable %s on %s: %s", kind, topic, exc)
            return None
        if not isinstance(body, dict):
            self.messages["unusable"] += 1
            log.warning("dashboard: unusable %s on %s: not a JSON object", kind, topic)
            return None
        station = self._station(site, name)
        if station is None:
            return None
        if kind == "status":
            return self._status(station, entry, now)
        if entry["id"] in station.ids:
            log.debug("dashboard: %s %s redelivered; ignored", kind, entry["id"])
            return None
        if kind == "latest" and station.latest is not None and entry["at"] < station.latest["at"]:
            log.debug("dashboard: latest %s is older than the message shown; ignored", entry["id"])
            return None
        station.ids.append(entry["id"])
        station.history.append(entry)
        while len(station.history) > self.history:
            station.history.popleft()
        while len(station.ids) > 4 * self.history:
            station.ids.popleft()
        station.latest = entry
        station.last_message = now
        self._heard(station, now)
        return Event("station", {"server_time": now, "station": station.as_dict()})

    def _status(self, station: _Station, status: dict[str, Any], now: float) -> Event:
        # The same document again (a retained one redelivered on a resubscribe) is no sign of
        # life; comparing the station's clock with itself is safe where clocks disagree.
        if station.status is None or station.status["at"] != status["at"]:
            self._heard(station, now)
        station.status = status
        station.last_message = now
        return Event("station", {"server_time": now, "station": station.as_dict()})

    @staticmethod
    def _heard(station: _Station, now: float) -> None:
        station.heard = now
        station.silent = False

    def _availability(self, site: str, name: str, payload: bytes, now: float) -> Event | None:
        text = payload.decode("utf-8", errors="replace").strip()
        if text not in ("online", "offline"):
            log.warning("dashboard: availability %r for %s/%s is not online/offline", text[:40], site, name)
            return None
        station = self._station(site, name)
        if station is None:
            return None
        online = text == "online"
        station.last_message = now
        if station.online is online:
            return None
        station.online, station.online_since = online, now
        self._heard(station, now)
        return Event("station", {"server_time": now, "station": station.as_dict()})

    def set_broker(self, connected: bool, detail: str, now: float) -> Event | None:
        """Record the dashboard's own broker connection; the change, or None if unchanged."""
        if self.broker["connected"] is connected and self.broker["detail"] == detail:
            return None
        since = self.broker["since"] if self.broker["connected"] is connected else now
        self.broker = {"connected": connected, "since": since, "detail": detail}
        return Event("broker", {"server_time": now, "broker": dict(self.broker)})

    def sweep(self, now: float) -> list[Event]:
        """Flag the stations silent for more than ``silent_after`` at ``now``: one event each.

        Nothing is newly flagged while the board's own broker link is down: then it is the
        dashboard that hears nothing, not the stations that say nothing.
        """
        events = []
        for station in self._stations.values():
            silent = is_silent(station.online, station.heard, now, self.silent_after)
            if silent and not station.silent and self.broker["connected"]:
                station.silent = True
            elif not silent and station.silent:  # e.g. it said it went offline meanwhile
                station.silent = False
            else:
                continue
            events.append(Event("station", {"server_time": now, "station": station.as_dict()}))
        return events

    def snapshot(self, now: float) -> dict[str, Any]:
        """The whole board: ``server_time``, ``broker`` state, ``silent_after``, ``stations``
        sorted by key, their ``sites`` (:func:`~edge_worker.subscribers.dashboard.fleet.site_rollup`) and
        the ``messages`` counts."""
        stations = [self._stations[k].as_dict() for k in sorted(self._stations)]
        return {
            "server_time": now,
            "broker": dict(self.broker),
            "silent_after": self.silent_after,
            "stations": stations,
            "sites": site_rollup(stations),
            "messages": dict(self.messages),
        }
