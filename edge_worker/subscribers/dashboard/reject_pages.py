"""The reject-analysis page (``/review/rejects``): filters, the totals, inline SVG bars per
dimension (``review_svg.rate_bars``) and the table behind each; ``/review/rejects.csv`` is the
same report as CSV (``reject_analysis.CSV_COLUMNS``)."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from urllib.parse import urlencode

from edge_worker.subscribers.dashboard.review_svg import RATE_SERIES, rate_bars
from edge_worker.subscribers.review.reject_analysis import PERIODS, Group, Report

TITLES = {"period": "By period", "station": "By station", "body_part": "By body part", "view": "By view",
          "pack": "By pack version", "reason": "Confirmed rejects by reason (CID 7011)"}  # fmt: skip

#: A reason's bars: its reject rate (of every image) and its share of the rejects.
REASON_SERIES = (("reject_rate", "confirmed_rejects", "reject rate", "#ff4136"),
                 ("share_of_rejects", "confirmed_rejects", "share of rejects", "#b10dc9"))  # fmt: skip


def _pct(rate: float | None) -> str:
    return "n/a" if rate is None else f"{rate * 100:.1f}%"


def _table(dimension: str, groups: Sequence[Group]) -> str:
    head = ("<tr><th>Key</th><th>Images</th><th>Reviewed</th><th>Network retakes</th><th>Confirmed rejects</th>"
            "<th>Reject rate</th><th>Share of rejects</th><th>In PACS</th><th>Queued</th><th>Refused</th></tr>")  # fmt: skip
    body = "".join(
        f'<tr data-key="{escape(g.key)}" data-images="{g.images}" data-rejects="{g.confirmed_rejects}">'
        f"<td>{escape(g.label or g.key)}{' <small>' + escape(g.key) + '</small>' if g.label else ''}</td>"
        f"<td>{g.images}</td><td>{g.reviewed} ({_pct(g.review_rate)})</td>"
        f"<td>{g.network_retakes} ({_pct(g.network_retake_rate)})</td><td>{g.confirmed_rejects}</td>"
        f"<td>{_pct(g.reject_rate)}</td><td>{_pct(g.share_of_rejects)}</td><td>{g.rejects_in_pacs}</td>"
        f"<td>{g.rejects_queued}</td><td>{g.rejects_refused}</td></tr>"
        for g in groups
    )
    return f'<table class="rules rejects" id="table-{dimension}"><thead>{head}</thead><tbody>{body}</tbody></table>'


def rejects_page(report: Report, stations: Sequence[str]) -> str:
    """The page body: a GET form (period, station), totals, then a plot and table per dimension."""
    periods = "".join(f'<option value="{p}"{" selected" if p == report.period else ""}>{p}</option>' for p in PERIODS)
    options = '<option value="">every station</option>' + "".join(
        f'<option value="{escape(s)}"{" selected" if s == report.station else ""}>{escape(s)}</option>' for s in stations)
    query = urlencode({"period": report.period, **({"station": report.station} if report.station else {})})
    t = report.total
    totals = (f'<p id="totals" data-images="{t.images}" data-rejects="{t.confirmed_rejects}" '
              f'data-retakes="{t.network_retakes}" data-reviewed="{t.reviewed}">{t.images} images; '
              f"{t.confirmed_rejects} confirmed rejects ({_pct(t.reject_rate)}); {t.network_retakes} network "
              f"retakes ({_pct(t.network_retake_rate)}); {t.reviewed} reviewed ({_pct(t.review_rate)}); "
              f"rejects in PACS {t.rejects_in_pacs}, queued at the station {t.rejects_queued}, refused {t.rejects_refused}.</p>")  # fmt: skip
    form = (f'<form method="get" action="/review/rejects" class="filters" id="reject-filters">'
            f'<label>Period <select name="period" id="period">{periods}</select></label> '
            f'<label>Station <select name="station" id="station">{options}</select></label> '
            f'<button type="submit" id="apply">Show</button> '
            f'<a href="/review/rejects.csv?{escape(query)}" id="csv">CSV for a report</a></form>')  # fmt: skip
    note = ("<p><small>Confirmed reject: a person confirmed the retake (tier two's final bad, or tier one's "
            "confirmed retake). Rates are of every image received; see docs/reject-analysis.md.</small></p>")
    sections = "".join(
        f'<section class="dimension" id="dim-{d}">'
        f"{rate_bars(report.groups[d], TITLES[d], REASON_SERIES if d == 'reason' else RATE_SERIES)}"
        f"{_table(d, report.groups[d])}</section>"
        for d in ("period", "station", "body_part", "view", "pack", "reason")
    )
    return form + totals + note + sections
