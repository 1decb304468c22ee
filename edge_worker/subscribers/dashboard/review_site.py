"""The review pages' requests and answers: sign-in, the tiers' queues and forms, the agreement
page, the review copy, ``/metrics``, and the sign-in gate in front of the board.

:class:`ReviewSite` turns a :class:`Request` into a :class:`Response` and knows nothing of
sockets (``server.py`` does the HTTP); the HTML comes from ``review_pages``.  The rules:

* every change is a POST carrying the session's CSRF token and the version the reviewer saw;
  a missing or wrong token (a forged form, one replayed from an ended session) is 403 and an
  audit row; no live session is a redirect to sign in, with nothing changed;
* the store's answers map to pages: :class:`Conflict` 409 (the earlier change, and a button
  to confirm mine against the new version), :class:`UnknownVerdict` 404, a rule refusal 422
  (the form again with the reason), :class:`NotAllowed` 403, :class:`StoreUnavailable` 503
  "review database unavailable, nothing was changed";
* the session cookie is HttpOnly and SameSite=Strict (and Secure with ``secure_cookie``).

Signed-in sessions seen in the last minutes are remembered (by the hash of their token) so
that the board stays visible to them while the database is down; changes always ask the
database.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from typing import Any, Protocol
from urllib.parse import quote

from edge_worker.subscribers.dashboard import reject_pages
from edge_worker.subscribers.dashboard import review_pages as pages
from edge_worker.subscribers.review import agreement, reject_analysis
from edge_worker.subscribers.review.auth import Accounts, Session, csrf_ok, may
from edge_worker.subscribers.review.errors import (
    AuthError,
    Conflict,
    NotAllowed,
    Refused,
    StoreUnavailable,
    UnknownVerdict,
)
from edge_worker.subscribers.review.flags import Flag
from edge_worker.subscribers.review.rejections import Rejections
from edge_worker.subscribers.review.store import ReviewStore

log = logging.getLogger(__name__)

COOKIE = "ew_review"
HTML = "text/html; charset=utf-8"
UNAVAILABLE = "review database unavailable, nothing was changed"
_ACTIONS = ("tier1", "tier2", "reopen")


class CopyStore(Protocol):
    """The review copies (``review.copies.ReviewCopies``), as the pages use them."""

    def get(self, verdict_id: str) -> Any | None: ...


@dataclass(frozen=True)
class Request:
    """One HTTP request, parsed: ``query`` and ``form`` map names to every value given."""

    method: str
    path: str
    query: Mapping[str, list[str]] = field(default_factory=dict)
    form: Mapping[str, list[str]] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)

    def one(self, name: str, default: str = "") -> str:
        values = self.form.get(name) or self.query.get(name)
        return values[0] if values else default

    def cookie(self, name: str) -> str | None:
        raw = next((v for k, v in self.headers.items() if k.lower() == "cookie"), None)
        if not raw:
            return None
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(raw)
        except CookieError:
            return None
        morsel = jar.get(name)
        return None if morsel is None else morsel.value


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = HTML
    headers: list[tuple[str, str]] = field(default_factory=list)


def _redirect(location: str, *headers: tuple[str, str]) -> Response:
    return Response(303, b"", "text/plain; charset=utf-8", [("Location", location), *headers])


def _safe_next(path: str) -> str:
    # Only a path on this server: "//host" or "http://..." would be an open redirect.
    return path if path.startswith("/") and not path.startswith("//") and "\\" not in path else "/review"


def parse_flags(values: list[str]) -> list[list[str]]:
    """Form values ``SCHEME:CODE`` as pairs (the store checks them)."""
    return [list(v.split(":", 1)) if ":" in v else [v] for v in values]


class ReviewSite:
    """The review pages over ``store`` and ``accounts``; see the module docstring."""

    #: Seconds a seen session is trusted for the board while the database is unreachable.
    remember_s = 600.0

    def __init__(self, store: ReviewStore, accounts: Accounts, *, public_board: bool = False,
                 secure_cookie: bool = False, window: int = 100, level: float = 0.8,
                 copies: CopyStore | None = None, extra_metrics: Callable[[], str] | None = None) -> None:  # fmt: skip
        self.store = store
        self.accounts = accounts
        self.public_board = public_board
        self.secure_cookie = secure_cookie
        self.window = window
        self.level = level
        self.copies = copies
        self.extra_metrics = extra_metrics
        #: The rejection commands (``[review] rejections``): shown on each verdict page.
        self.rejections: Rejections | None = None
        #: Called after every change this site made (the rejection sender looks at once).
        self.on_change: Callable[[], None] | None = None
        self._seen: dict[str, tuple[Session, float]] = {}
        self._seen_lock = threading.Lock()
        # The banner's text and when it was worked out: agreement reads every review, so the
        # pages reuse it for ``banner_s`` seconds; any change made here forgets it.
        self._banner: tuple[str | None, float] | None = None

    # -- sessions -----------------------------------------------------------------------------

    def _cookie(self, session: Session) -> tuple[str, str]:
        max_age = max(int(session.expires_at.timestamp() - self.store.clock()), 0)
        secure = "; Secure" if self.secure_cookie else ""
        return ("Set-Cookie", f"{COOKIE}={session.token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}")

    def _session(self, req: Request) -> tuple[Session | None, list[tuple[str, str]]]:
        """The live session (from the cookie, else a trusted proxy's header) and any cookie to set.

        Raises :class:`StoreUnavailable`."""
        token = req.cookie(COOKIE)
        if token:
            try:
                session = self.accounts.session(token)
                self._remember(session)
                return session, []
            except AuthError:
                pass
        proxied = self.accounts.login_from_proxy(req.headers) if self.accounts.proxy_header else None
        if proxied is not None:
            self._remember(proxied)
            return proxied, [self._cookie(proxied)]
        return None, []

    def _remember(self, session: Session) -> None:
        with self._seen_lock:
            self._seen[hashlib.sha256(session.token.encode()).hexdigest()] = (session, time.monotonic())

    def _remembered(self, req: Request) -> bool:
        token = req.cookie(COOKIE)
        if not token:
            return False
        with self._seen_lock:
            seen = self._seen.get(hashlib.sha256(token.encode()).hexdigest())
        if seen is None:
            return False
        session, at = seen
        return time.monotonic() - at < self.remember_s and session.expires_at.timestamp() > self.store.clock()

    def board_gate(self, req: Request) -> Response | None:
        """``None`` when the board may be shown; else a redirect to sign in (page) or a 401."""
        if self.public_board:
            return None
        try:
            token = req.cookie(COOKIE)
            if token:
                try:
                    self._remember(self.accounts.session(token))
                    return None
                except AuthError:
                    pass
            # A proxy's user sees the board without a session of ours (no write per request).
            if self.accounts.proxy_header and self.accounts.from_proxy(req.headers) is not None:
                return None
        except StoreUnavailable:
            if self._remembered(req):
                return None
        if req.path in ("/", "/index.html"):
            return _redirect("/review/signin?next=/")
        return Response(401, b"sign in at /review/signin to see the board\n", "text/plain; charset=utf-8")

    # -- dispatch -----------------------------------------------------------------------------

    def handle(self, req: Request) -> Response | None:
        """The answer for a review path, or ``None`` when ``req.path`` is not one of ours."""
        path = req.path
        if not (path == "/metrics" or path == "/review" or path.startswith("/review/")):
            return None
        try:
            return self._route(req)
        except StoreUnavailable as exc:
            log.warning("review: %s (%s %s)", exc, req.method, path)
            if path == "/metrics":
                return Response(200, self._metrics_down().encode(), "text/plain; version=0.0.4; charset=utf-8")
            return Response(503, pages.page("Unavailable", pages.problem(UNAVAILABLE)))

    def _route(self, req: Request) -> Response:
        path, method = req.path, req.method
        if path == "/metrics" and method == "GET":
            return self._metrics()
        if path == "/review/signin":
            return self._signin(req) if method == "POST" else self._signin_form(req)
        session, cookies = self._session(req)
        if session is None:
            if method == "POST":
                log.info("review: %s %s without a live session: sent to sign in, nothing changed", method, path)
            return _redirect(f"/review/signin?expired=1&next={quote(_safe_next(path))}")
        response = self._signed_in(req, session)
        response.headers.extend(cookies)
        return response

    def _signed_in(self, req: Request, session: Session) -> Response:
        path, method, user = req.path, req.method, session.user
        parts = path.strip("/").split("/")
        if method == "POST":
            if not csrf_ok(session, req.form.get("csrf", [None])[0]):
                return self._csrf_refused(req, session)
            if path == "/review/signout":
                self.accounts.logout(session.token)
                clear = ("Set-Cookie", f"{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
                return _redirect("/review/signin", clear)
            if len(parts) == 4 and parts[1] == "verdict" and parts[3] in _ACTIONS:
                return self._change(req, session, parts[2], parts[3])
            return Response(404, pages.page("Not found", pages.problem(f"no such form: {path}")))
        if path == "/review":
            home = "/review/tier1" if may(user, "tier_one") and not may(user, "tier_two") else (
                "/review/tier2" if may(user, "tier_two") else "/review/agreement")  # fmt: skip
            return _redirect(home)
        if path == "/review/tier1":
            body = pages.queue("Tier one", self.store.tier_one_queue(), 1)
            return self._page("Tier one: not reviewed yet", body, session)
        if path == "/review/tier2":
            body = pages.queue("Tier two", self.store.tier_two_queue(), 2)
            return self._page("Tier two: questionable, disputed, reopened", body, session)
        if path == "/review/agreement":
            return self._agreement(session)
        if path in ("/review/rejects", "/review/rejects.csv"):
            return self._rejects(req, session)
        if len(parts) == 3 and parts[1] == "verdict":
            return self._verdict(session, parts[2], note=req.one("saved") and "Saved.")
        if len(parts) == 3 and parts[1] == "copy":
            return self._copy(parts[2])
        return Response(404, pages.page("Not found", pages.problem(f"no such page: {path}"), user, session.csrf))

    #: Seconds the agreement banner is reused between pages.
    banner_s = 10.0

    def _alert(self) -> str | None:
        """The banner's text when a tier's recent agreement is under the level, else None."""
        cached = self._banner
        if cached is not None and time.monotonic() - cached[1] < self.banner_s:
            return cached[0]
        recents = [agreement.recent(self.store, t, self.window, self.level) for t in (1, 2)]
        alerts = [r for r in recents if r.alert and r.rate is not None]
        text = "; ".join(f"tier {r.tier} agreed with the network in {(r.rate or 0) * 100:.0f}% of its last "
                         f"{r.reviewed} review{'s' if r.reviewed != 1 else ''}, under {self.level * 100:.0f}%" for r in alerts) or None  # fmt: skip
        self._banner = (text, time.monotonic())
        return text

    def _page(self, title: str, body: str, session: Session, status: int = 200) -> Response:
        return Response(status, pages.page(title, body, session.user, session.csrf, self._alert()))

    # -- pages --------------------------------------------------------------------------------

    def _signin_form(self, req: Request) -> Response:
        message = "Your session ended: sign in again (nothing was changed)." if req.one("expired") else ""
        return Response(200, pages.page("Sign in", pages.signin(_safe_next(req.one("next", "/review")), message)))

    def _signin(self, req: Request) -> Response:
        name, target = req.one("name"), _safe_next(req.one("next", "/review"))
        try:
            session = self.accounts.login(name, req.one("password"))
        except AuthError as exc:
            why = str(exc)
            self.store.transaction(lambda c: self.store.audit(c, name[:100] or "?", "login", None, "refused:auth",
                                                              {"why": why}, None))  # fmt: skip
            return Response(401, pages.page("Sign in", pages.signin(target, why)))
        self._remember(session)
        return _redirect(target, self._cookie(session))

    def _csrf_refused(self, req: Request, session: Session) -> Response:
        parts = req.path.strip("/").split("/")
        verdict_id = parts[2] if len(parts) >= 3 and parts[1] == "verdict" else None
        given = req.form.get("csrf", [None])[0]
        why = "missing" if not given else "does not match this session"
        self.store.transaction(lambda c: self.store.audit(
            c, session.user.name, "csrf", verdict_id, "refused:csrf", {"path": req.path, "token": why}, None))  # fmt: skip
        log.warning("review: %s POST %s with a CSRF token that %s: refused", session.user.name, req.path,
                    "is missing" if why == "missing" else why)  # fmt: skip
        return Response(403, pages.page("Refused", pages.problem(f"refused: the form's security token {why}; "
                                                                 "nothing was changed. Reload the page and try again."),
                                        session.user, session.csrf))  # fmt: skip

    def _verdict(self, session: Session, verdict_id: str, *, note: str | bool = "", status: int = 200,
                 chosen: tuple[Flag, ...] = (), comment: str = "") -> Response:  # fmt: skip
        try:
            record = self.store.get(verdict_id)
        except UnknownVerdict as exc:
            return Response(404, pages.page("Not found", pages.problem(str(exc)), session.user, session.csrf))
        copy = self.copies.get(verdict_id) if self.copies is not None else None
        commands = self.rejections.of_verdict(verdict_id) if self.rejections is not None else None
        retake = self.rejections is not None and self.rejections.policy.after == "tier_one"
        body = pages.verdict(record, self.store.reviews_of(verdict_id), session.user, session.csrf, copy,
                             str(note or ""), chosen, comment, commands, retake)  # fmt: skip
        return self._page(f"Image {verdict_id[:8]}", body, session, status)

    def _change(self, req: Request, session: Session, verdict_id: str, action: str) -> Response:
        try:
            version = int(req.one("version"))
        except ValueError:
            return Response(400, pages.page("Refused", pages.problem("the form carried no version"), session.user, session.csrf))
        outcome, comment = req.one("outcome"), req.one("comment")
        flags = parse_flags(req.form.get("flag", []))
        user = session.user.name
        try:
            if action == "tier1":
                self.store.review_tier_one(verdict_id, user, version, outcome, flags, comment)
            elif action == "tier2":
                self.store.decide_tier_two(verdict_id, user, version, outcome, flags, comment)
            else:
                self.store.reopen(verdict_id, user, version, comment)
        except Conflict as exc:
            body = pages.conflict(verdict_id, action, exc.earlier, exc.current_version, session.csrf,
                                  outcome, [(f[0], f[1]) for f in flags if len(f) == 2], comment)  # fmt: skip
            return self._page("Changed by someone else", body, session, 409)
        except UnknownVerdict as exc:
            return Response(404, pages.page("Not found", pages.problem(f"{exc}: nothing to review"), session.user, session.csrf))
        except NotAllowed as exc:
            return Response(403, pages.page("Refused", pages.problem(str(exc)), session.user, session.csrf))
        except Refused as exc:
            pairs = tuple((f[0], f[1]) for f in flags if len(f) == 2)
            return self._verdict(session, verdict_id, note=f"Refused, nothing was changed: {exc}", status=422,
                                 chosen=pairs, comment=comment)  # fmt: skip
        self._banner = None  # the agreement changed
        if self.on_change is not None:
            self.on_change()
        return _redirect(f"/review/verdict/{quote(verdict_id)}?saved=1")

    def _agreement(self, session: Session) -> Response:
        self._banner = None  # this page shows the figures as they are now; so does its banner
        rows = agreement.agreement(self.store)
        recents = [agreement.recent(self.store, t, self.window, self.level) for t in (1, 2)]
        return self._page("Agreement with the network", pages.agreement_page(rows, recents), session)

    def _rejects(self, req: Request, session: Session) -> Response:
        """Reject analysis (any reviewer role): the page, or with ``.csv`` the same report as CSV."""
        if not may(session.user, "read"):
            return Response(403, pages.page("Refused", pages.problem("your role may not read the review"), session.user, session.csrf))
        period, station = req.one("period", "week"), req.one("station") or None
        if period not in reject_analysis.PERIODS:
            return Response(400, pages.page("Refused", pages.problem(f"period must be one of {', '.join(reject_analysis.PERIODS)}"),
                                            session.user, session.csrf))  # fmt: skip
        report = reject_analysis.analyse(self.store, period, station)
        if req.path.endswith(".csv"):
            name = f"rejects-{period}{'-' + station.replace('/', '_') if station else ''}.csv"
            return Response(200, report.csv().encode(), "text/csv; charset=utf-8",
                            [("Content-Disposition", f'attachment; filename="{quote(name)}"')])  # fmt: skip
        stations = sorted({g.key for g in reject_analysis.analyse(self.store, period).groups["station"]})
        return self._page("Reject analysis", reject_pages.rejects_page(report, stations), session)

    def _copy(self, verdict_id: str) -> Response:
        copy = self.copies.get(verdict_id) if self.copies is not None else None
        if copy is None:
            return Response(404, (pages.NO_COPY + "\n").encode(), "text/plain; charset=utf-8")
        return Response(200, bytes(copy.data), str(copy.media_type), [("Cache-Control", "private, max-age=300")])

    # -- metrics ------------------------------------------------------------------------------

    def _metrics(self) -> Response:
        text = agreement.prometheus(self.store, self.window, self.level)
        alert = any(agreement.recent(self.store, t, self.window, self.level).alert for t in (1, 2))
        text += ("# HELP review_agreement_alert_active 1 when any tier's recent agreement is under the level.\n"
                 f"# TYPE review_agreement_alert_active gauge\nreview_agreement_alert_active {int(alert)}\n"
                 "# HELP review_database_up 1 when the review database answered this scrape.\n"
                 "# TYPE review_database_up gauge\nreview_database_up 1\n")  # fmt: skip
        if self.extra_metrics is not None:
            text += self.extra_metrics()
        return Response(200, text.encode(), "text/plain; version=0.0.4; charset=utf-8")

    def _metrics_down(self) -> str:
        text = "# HELP review_database_up 1 when the review database answered this scrape.\n"
        text += "# TYPE review_database_up gauge\nreview_database_up 0\n"
        return text + (self.extra_metrics() if self.extra_metrics is not None else "")
