"""The review pages as HTML, made on the server: pure functions from records to bytes.

Every value from a verdict or a person goes through :func:`html.escape`; the pages load only
``/review.css`` and ``/review.js`` from this server (no inline script or style: the CSP
forbids them).  Elements carry ``data-`` attributes with the values shown, which the browser
test reads.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from html import escape
from typing import Any

from edge_worker.subscribers.dashboard.review_svg import (
    agreement_bars,
    heatmap_overlays,
    image_overlay,
)
from edge_worker.subscribers.review.agreement import DIMENSIONS, Agreement, Recent
from edge_worker.subscribers.review.auth import User, may
from edge_worker.subscribers.review.flags import CID_7011, PACK, Flag, meaning, pack_codes_of
from edge_worker.subscribers.review.store import (
    TIER_ONE_OPEN,
    TIER_TWO_QUEUE,
    ReviewRecord,
    Status,
    VerdictRecord,
)

NO_COPY = "no review copy (station has review copies off, or it expired)"
#: Beside a research stage's heatmap toggle (paper 004's finding classifier).
RESEARCH_HEATMAP = "research only, not a diagnosis, never part of the decision"
STATUS_WORDS = {
    Status.NEW: "not reviewed", Status.GOOD: "tier one: good", Status.QUESTIONABLE: "tier one: questionable",
    Status.DISPUTED: "tier one: good, the network said retake (for tier two)", Status.REOPENED: "reopened (for tier two)",
    Status.FINAL_GOOD: "final: good", Status.FINAL_BAD: "final: bad",
    Status.CONFIRMED_BAD: "tier one: retake confirmed",
}  # fmt: skip


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _when(value: datetime | str) -> str:
    """A time for people (UTC); an ISO text (from a Conflict's dict) is parsed first."""
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return value
    else:
        moment = value
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def page(title: str, body: str, user: User | None = None, csrf: str | None = None, alert: str | None = None) -> bytes:
    """A whole page: the bar (links by role, the signed-in user, sign out), an alert, ``body``."""
    nav = ""
    if user is not None:
        links = [("/", "Board")]
        if may(user, "tier_one"):
            links.append(("/review/tier1", "Tier one"))
        if may(user, "tier_two"):
            links.append(("/review/tier2", "Tier two"))
        links.append(("/review/agreement", "Agreement"))
        links.append(("/review/rejects", "Rejects"))
        nav = "".join(f'<a href="{h}">{t}</a>' for h, t in links)
        nav += (f'<span class="who" id="who" data-user="{_e(user.name)}" data-role="{_e(user.role)}">'
                f"{_e(user.name)} ({_e(user.role)})</span>"
                f'<form method="post" action="/review/signout" class="inline"><input type="hidden" name="csrf" '
                f'value="{_e(csrf or "")}"><button type="submit" id="signout">Sign out</button></form>')  # fmt: skip
    banner = f'<p id="agreement-alert" class="banner-alert" role="alert">{_e(alert)}</p>' if alert else ""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<title>{_e(title)} - radiograph QC review</title><link rel="stylesheet" href="/review.css">'
        '<script src="/review.js" defer></script></head><body class="review">'
        f'<header class="bar"><h1>Radiograph QC review</h1><nav>{nav}</nav></header>{banner}'
        f'<main><h2 id="title">{_e(title)}</h2>{body}</main></body></html>'
    ).encode()


def signin(next_path: str, message: str = "") -> str:
    """The sign-in form (``next``: where to go after)."""
    note = f'<p class="error" id="message">{_e(message)}</p>' if message else ""
    return (
        f'{note}<form method="post" action="/review/signin" class="signin">'
        f'<input type="hidden" name="next" value="{_e(next_path)}">'
        '<label>User <input name="name" id="name" autocomplete="username" required></label>'
        '<label>Password <input name="password" id="password" type="password" autocomplete="current-password" '
        'required></label><button type="submit" id="signin">Sign in</button></form>'
    )


def _reasons(record: VerdictRecord) -> str:
    items = []
    for reason in record.payload.get("reasons") or ():
        if isinstance(reason, Mapping):
            items.append(f'<li data-code="{_e(reason.get("code", ""))}"><b>{_e(reason.get("code", ""))}</b> '
                         f'({_e(reason.get("severity", ""))}): {_e(reason.get("text", ""))}</li>')  # fmt: skip
    return f'<ul class="reasons">{"".join(items)}</ul>' if items else "<p>none</p>"


def queue(title: str, records: Sequence[VerdictRecord], tier: int) -> str:
    """A queue as a table, oldest first, each row linking to the verdict page."""
    if not records:
        return f'<p class="empty" id="queue-empty">Nothing waiting for tier {tier}.</p>'
    rows = "".join(
        f'<tr data-id="{_e(r.id)}" data-status="{_e(r.status.value)}" data-decision="{_e(r.decision)}">'
        f"<td>{_e(_when(r.received_at))}</td><td>{_e(r.site)}/{_e(r.station)}</td><td>{_e(r.view)}</td>"
        f'<td class="d-{_e(r.decision)}">{_e(r.decision)}</td><td>{_e(", ".join(r.reason_codes))}</td>'
        f"<td>{_e(STATUS_WORDS[r.status])}</td>"
        f'<td><a class="open" href="/review/verdict/{_e(r.id)}">review</a></td></tr>'
        for r in records
    )
    return (f'<table class="queue" id="queue" data-tier="{tier}"><thead><tr><th>Received</th><th>Station</th>'
            "<th>View</th><th>Network</th><th>Reasons</th><th>Status</th><th></th></tr></thead>"
            f"<tbody>{rows}</tbody></table>")  # fmt: skip


def offered_flags(record: VerdictRecord) -> list[tuple[Flag, str]]:
    """The flags a reviewer can pick: CID 7011, then this verdict's own reason, rule and label codes."""
    flags = [(c.flag, c.meaning) for c in CID_7011]
    flags += [((PACK, code), meaning((PACK, code))) for code in sorted(pack_codes_of(record.payload))]
    return flags


def _flag_picker(record: VerdictRecord, chosen: Iterable[Flag]) -> str:
    picked = set(chosen)
    boxes = "".join(
        f'<label class="flag"><input type="checkbox" name="flag" value="{_e(s)}:{_e(v)}"'
        f'{" checked" if (s, v) in picked else ""}> {_e(text)} <small>{_e(s)} {_e(v)}</small></label>'
        for (s, v), text in offered_flags(record)
    )
    return f'<fieldset class="flags"><legend>Flags</legend>{boxes}</fieldset>'


def _form(record: VerdictRecord, csrf: str, action: str, buttons: Sequence[tuple[str, str]], flags: bool,
          chosen: Iterable[Flag] = (), comment: str = "") -> str:  # fmt: skip
    picker = _flag_picker(record, chosen) if flags else ""
    knobs = "".join(f'<button type="submit" name="outcome" value="{v}" id="{action}-{v}">{_e(t)}</button>' for v, t in buttons)
    return (f'<form method="post" action="/review/verdict/{_e(record.id)}/{action}" class="decide" id="form-{action}">'
            f'<input type="hidden" name="csrf" value="{_e(csrf)}"><input type="hidden" name="version" '
            f'value="{record.version}">{picker}<label class="comment">Comment <textarea name="comment" '
            f'id="{action}-comment">{_e(comment)}</textarea></label><p class="buttons">{knobs}</p></form>')  # fmt: skip


def _facts(record: VerdictRecord) -> str:
    p = record.payload
    quality = p.get("quality") if isinstance(p.get("quality"), Mapping) else None
    grade = "none" if quality is None else f"{quality.get('grade')} (score {quality.get('score')})"
    view: Mapping[str, Any] = p["view"] if isinstance(p.get("view"), Mapping) else {}
    rows = [
        ("Network decision", f'<span id="decision" class="d-{_e(record.decision)}">{_e(record.decision)}</span>'),
        ("Review status", (f'<span id="status" data-status="{_e(record.status.value)}" '
                           f'data-version="{record.version}">{_e(STATUS_WORDS[record.status])}</span>')),
        ("Station", f"{_e(record.site)}/{_e(record.station)}"),
        ("View", f"{_e(record.view)} (confidence {_e(view.get('confidence', '?'))})"),
        ("Grade", _e(grade)),
        ("Pack", f"{_e(record.pack_name)} {_e(record.pack_version)} <small>{_e(record.pack_digest[:12])}</small>"),
        ("Received", _e(_when(record.received_at))),
    ]  # fmt: skip
    return '<dl class="facts">' + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows) + "</dl>"


def _rules(record: VerdictRecord) -> str:
    rules = [r for r in record.payload.get("rules") or () if isinstance(r, Mapping)]
    if not rules:
        return ""
    body = "".join(
        f'<tr data-code="{_e(r.get("code", ""))}" data-status="{_e(r.get("status", ""))}"><td>{_e(r.get("code", ""))}</td>'
        f'<td class="r-{_e(r.get("status", ""))}">{_e(r.get("status", ""))}</td><td>{_e(r.get("value"))}</td>'
        f'<td>{_e(r.get("min"))} .. {_e(r.get("max"))}</td><td>{_e(r.get("sentence", ""))}</td></tr>'
        for r in rules
    )
    return (f'<h3>Rule results</h3><table class="rules" id="rules"><thead><tr><th>Rule</th><th>Result</th>'
            f"<th>Value</th><th>Range</th><th>What it means</th></tr></thead><tbody>{body}</tbody></table>")  # fmt: skip


def _history(reviews: Sequence[ReviewRecord]) -> str:
    if not reviews:
        return "<p>No review yet.</p>"
    items = "".join(
        f'<li data-tier="{r.tier}" data-outcome="{_e(r.outcome)}" data-user="{_e(r.user)}">{_e(_when(r.created_at))}: '
        f"tier {r.tier} <b>{_e(r.user)}</b> {_e(r.outcome)}"
        f"{' [' + _e(', '.join(meaning(f) for f in r.flags)) + ']' if r.flags else ''}"
        f"{' - ' + _e(r.comment) if r.comment else ''} (version {r.version})</li>"
        for r in reviews
    )
    return f'<ol class="history" id="history">{items}</ol>'


def image_block(record: VerdictRecord, copy: Any | None) -> str:
    """The review copy with its overlays and the heatmap toggle, or the no-copy note."""
    if copy is None:
        return f'<p class="no-copy" id="no-copy">{_e(NO_COPY)}</p>'
    svg = image_overlay(f"/review/copy/{record.id}", int(copy.width), int(copy.height), float(copy.scale), record.payload)
    toggle = ""
    if heatmap_overlays(record.payload):
        toggle = '<label class="toggle"><input type="checkbox" id="heatmap-toggle" checked> heatmap overlay</label>'
    research = heatmap_overlays(record.payload, research=True)
    if research:
        labels = ", ".join(label for label, _ in research)
        toggle += ('<label class="toggle research"><input type="checkbox" id="research-heatmap-toggle"> '
                   f'research heatmap ({_e(labels)}): {_e(RESEARCH_HEATMAP)}</label>')  # fmt: skip
    return f'<figure class="copy">{svg}{toggle}</figure>'


REJECTION_WORDS = {
    "pending": "pending: not yet answered by the station", "queued": "queued for the PACS at the station",
    "sent": "in PACS", "refused": "refused", "cancelled": "cancelled (the reject was refused: nothing to withdraw)",
}  # fmt: skip


def rejections_block(commands: Sequence[Any] | None) -> str:
    """The verdict's rejection commands (``rejections.Command``) and their states, or nothing."""
    if commands is None:
        return ""
    if not commands:
        return '<h3>PACS rejection</h3><p id="rejection-none">None: no person confirmed a retake.</p>'
    items = "".join(
        f'<li data-action="{_e(c.action)}" data-state="{_e(c.state)}">{_e(c.action)}'
        f"{' (' + _e(meaning(('DCM', c.reason_code))) + ')' if c.reason_code else ''} by {_e(c.confirmed_by)} "
        f"(tier {c.tier}): <b>{_e(REJECTION_WORDS.get(c.state, c.state))}</b>"
        f"{': ' + _e(c.result_reason) if c.result_reason else ''}{' - ' + _e(c.result_detail) if c.result_detail else ''}"
        f"{' <small>document ' + _e(c.document_uid) + '</small>' if c.document_uid else ''}"
        f" <small>({c.attempts} publish{'es' if c.attempts != 1 else ''})</small></li>"
        for c in commands
    )
    return f'<h3>PACS rejection</h3><ol class="rejections" id="rejections">{items}</ol>'


def verdict(record: VerdictRecord, reviews: Sequence[ReviewRecord], user: User, csrf: str, copy: Any | None,
            message: str = "", chosen: Iterable[Flag] = (), comment: str = "",
            commands: Sequence[Any] | None = None, tier_one_retake: bool = False) -> str:  # fmt: skip
    """The verdict page: image, facts, reasons, rules, history, rejection commands (``None``:
    rejections off), and the forms the user's role allows.  ``tier_one_retake``: tier one may
    confirm a network retake (``[review] reject_after = "tier_one"``)."""
    chosen = tuple(chosen)
    forms = []
    # A tier-two reviewer on an image in its queue decides; the tier-one form would only confuse.
    in_tier_two = may(user, "tier_two") and record.status in TIER_TWO_QUEUE
    if may(user, "tier_one") and record.status in TIER_ONE_OPEN and not in_tier_two:
        buttons = [("good", "Good"), ("questionable", "Questionable")]
        hint = ""
        if tier_one_retake and record.decision == "retake":
            buttons.append(("retake", "Confirm retake"))
            hint = "<p>Confirm retake sends a rejection to the PACS with the CID 7011 flag you choose.</p>"
        forms.append("<h3>Tier one</h3>" + hint + _form(record, csrf, "tier1", buttons, True, chosen, comment))
    if in_tier_two:
        forms.append("<h3>Tier two: final decision</h3><p>Bad needs at least one flag.</p>"
                     + _form(record, csrf, "tier2", [("good", "Final: good"), ("bad", "Final: bad")], True, chosen, comment))  # fmt: skip
    if may(user, "reopen") and record.status != Status.REOPENED:
        forms.append("<h3>Reopen</h3>" + _form(record, csrf, "reopen", [("reopen", "Reopen for tier two")], False))
    if not forms:
        forms.append('<p id="no-action">Nothing for your role to do on this image now.</p>')
    note = f'<p class="error" id="message" role="alert">{_e(message)}</p>' if message else ""
    return (f'{note}<div class="verdict" data-id="{_e(record.id)}"><div class="left">{image_block(record, copy)}</div>'
            f'<div class="right">{_facts(record)}<h3>Reasons</h3>{_reasons(record)}{_rules(record)}'
            f"<h3>History</h3>{_history(reviews)}{rejections_block(commands)}{''.join(forms)}</div></div>")  # fmt: skip


def conflict(verdict_id: str, action: str, earlier: Mapping[str, Any] | None, current_version: int, csrf: str,
             outcome: str, flags: Sequence[Flag], comment: str) -> str:  # fmt: skip
    """The 409 page: the change that came first, and a form re-sending mine against the new version."""
    if earlier:
        told = (f'<p id="earlier" data-user="{_e(earlier.get("user", ""))}" data-outcome="{_e(earlier.get("outcome", ""))}">'
                f'Someone changed this image first: <b>{_e(earlier.get("user", "?"))}</b> (tier {_e(earlier.get("tier", "?"))}) '
                f'marked it <b>{_e(earlier.get("outcome", "?"))}</b> at {_e(_when(earlier.get("created_at", "?")))}'
                f'{" with flags " + _e(", ".join(meaning((f[0], f[1])) for f in earlier.get("flags") or ())) if earlier.get("flags") else ""}'
                f'{" - " + _e(earlier.get("comment")) if earlier.get("comment") else ""}.</p>')  # fmt: skip
    else:
        told = '<p id="earlier">This image changed since you opened it.</p>'
    hidden = "".join(f'<input type="hidden" name="flag" value="{_e(s)}:{_e(v)}">' for s, v in flags)
    return (f'{told}<p>Nothing of yours was saved. Your change was: <b id="mine">{_e(outcome)}</b>'
            f'{" [" + _e(", ".join(meaning(f) for f in flags)) + "]" if flags else ""}.</p>'
            f'<form method="post" action="/review/verdict/{_e(verdict_id)}/{_e(action)}">'
            f'<input type="hidden" name="csrf" value="{_e(csrf)}"><input type="hidden" name="version" value="{current_version}">'
            f'<input type="hidden" name="comment" value="{_e(comment)}">{hidden}'
            f'<button type="submit" name="outcome" value="{_e(outcome)}" id="confirm">Confirm my change against the new '
            f'version</button></form><p><a href="/review/verdict/{_e(verdict_id)}">Back to the image</a></p>')  # fmt: skip


def problem(message: str, back: str = "/review") -> str:
    """A short page body for a refusal or an error."""
    return f'<p class="error" id="message" role="alert">{_e(message)}</p><p><a href="{_e(back)}">Back</a></p>'


def _recent_line(r: Recent) -> str:
    rate = "no reviews yet" if r.rate is None else f"{r.rate * 100:.0f}% ({r.agreed} of {r.reviewed})"
    return (f'<li class="{"alert" if r.alert else "fine"}" data-tier="{r.tier}" data-reviewed="{r.reviewed}" '
            f'data-agreed="{r.agreed}" data-alert="{str(r.alert).lower()}">Tier {r.tier}, last {r.window} reviews: '
            f"{_e(rate)}{' - under ' + f'{r.level * 100:.0f}%' if r.alert else ''}</li>")  # fmt: skip


def agreement_page(rows: Sequence[Agreement], recents: Sequence[Recent]) -> str:
    """Recent windows, then per dimension a bar plot and a table of rates with counts."""
    parts = [f'<ul class="recent" id="recent">{"".join(_recent_line(r) for r in recents)}</ul>',
             ("<p>Agreement: tier one's good or tier two's good with the network's ok; tier one's questionable "
              "or tier two's bad with its retake. Verdicts the network left to a person are not counted; the "
              "latest review of each tier per image counts.</p>")]  # fmt: skip
    names = {"pack": "Pack version", "station": "Station", "view": "View", "reason": "Reason code"}
    for dimension in DIMENSIONS:
        mine = [r for r in rows if r.dimension == dimension]
        if not mine:
            continue
        body = "".join(
            f'<tr data-tier="{a.tier}" data-dimension="{_e(a.dimension)}" data-key="{_e(a.key)}" '
            f'data-reviewed="{a.reviewed}" data-agreed="{a.agreed}"><td>{_e(a.key)}</td><td>{a.tier}</td>'
            f"<td>{a.agreed}</td><td>{a.reviewed}</td><td>{'n/a' if a.rate is None else f'{a.rate * 100:.0f}%'}</td></tr>"
            for a in mine
        )
        parts.append(f'<section class="dimension" data-dimension="{dimension}"><h3>{names[dimension]}</h3>'
                     f"{agreement_bars(mine, 'Agreement by ' + names[dimension].lower())}"
                     f'<table class="agreement"><thead><tr><th>{names[dimension]}</th><th>Tier</th><th>Agreed</th>'
                     f"<th>Reviewed</th><th>Rate</th></tr></thead><tbody>{body}</tbody></table></section>")  # fmt: skip
    if len(parts) == 2:
        parts.append('<p id="no-reviews">No reviews of images the network judged yet.</p>')
    return "".join(parts)
