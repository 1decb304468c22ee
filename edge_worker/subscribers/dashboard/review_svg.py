"""Inline SVG made on the server for the review pages: agreement bars and the image overlay.

No chart library and no script: the page's Content-Security-Policy allows no inline styles,
so everything is drawn with SVG presentation attributes.  Every text comes through
:func:`html.escape`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from edge_worker.subscribers.review.agreement import Agreement

TIER_FILL = {1: "#4aa3ff", 2: "#ffb020"}
#: The longest side of the image on the verdict page, in CSS pixels.
DISPLAY_SIDE = 640
_RULE_FILL = {"pass": "#2ecc71", "fail": "#ff4136", "not_measurable": "#a9b6c4"}


def _pct(rate: float | None) -> str:
    return "n/a" if rate is None else f"{rate * 100:.0f}%"


def agreement_bars(rows: Sequence[Agreement], title: str) -> str:
    """Horizontal bars: one group per key, a bar per tier, x axis 0-100 % agreement.

    Each bar is labelled with its rate and ``agreed/reviewed``; keys without reviews of a tier
    get no bar for it.  ``rows`` are of one dimension.
    """
    keys = sorted({r.key for r in rows})
    by = {(r.key, r.tier): r for r in rows}
    left, width, bar, gap, top = 190, 420, 16, 12, 34
    group = 2 * bar + gap
    height = top + len(keys) * group + 48
    out = [
        (f'<svg class="bars" role="img" aria-label="{escape(title)}" width="{left + width + 130}" '
         f'height="{height}" viewBox="0 0 {left + width + 130} {height}" xmlns="http://www.w3.org/2000/svg">'),
        f'<text x="0" y="16" fill="#f4f7fa" font-size="15" font-weight="bold">{escape(title)}</text>',
    ]
    axis_y = top + len(keys) * group
    for tick in range(0, 101, 20):
        x = left + width * tick / 100
        out.append(f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{axis_y}" stroke="#2a3441"/>')
        out.append(f'<text x="{x:.1f}" y="{axis_y + 16}" fill="#a9b6c4" font-size="12" text-anchor="middle">{tick}%</text>')
    out.append(f'<text x="{left + width / 2:.0f}" y="{axis_y + 36}" fill="#a9b6c4" font-size="12" '
               'text-anchor="middle">agreement with the network (agreed / reviewed)</text>')  # fmt: skip
    for i, key in enumerate(keys):
        y0 = top + i * group
        out.append(f'<text x="{left - 8}" y="{y0 + bar + 4}" fill="#f4f7fa" font-size="13" '
                   f'text-anchor="end">{escape(key[:28])}</text>')  # fmt: skip
        for j, tier in enumerate((1, 2)):
            r = by.get((key, tier))
            y = y0 + j * bar
            if r is None or r.rate is None:
                out.append(f'<text x="{left + 4}" y="{y + bar - 4}" fill="#5b6775" font-size="11">tier {tier}: none</text>')
                continue
            w = max(width * r.rate, 1.0)
            out.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar - 2}" fill="{TIER_FILL[tier]}">'
                       f"<title>tier {tier}, {escape(key)}: {r.agreed} of {r.reviewed}</title></rect>")  # fmt: skip
            out.append(f'<text x="{left + w + 6:.1f}" y="{y + bar - 4}" fill="#f4f7fa" font-size="12">'
                       f"T{tier} {_pct(r.rate)} ({r.agreed}/{r.reviewed})</text>")  # fmt: skip
    out.append(f'<line x1="{left}" y1="{top - 4}" x2="{left}" y2="{axis_y}" stroke="#a9b6c4"/>')
    out.append(f'<line x1="{left}" y1="{axis_y}" x2="{left + width}" y2="{axis_y}" stroke="#a9b6c4"/>')
    out.append("</svg>")
    return "".join(out)


def _box(box: Any) -> tuple[float, float, float, float] | None:
    if isinstance(box, (list, tuple)) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box):
        return float(box[0]), float(box[1]), float(box[2]), float(box[3])
    return None


def heatmap_overlays(payload: Mapping[str, Any], research: bool = False) -> list[tuple[str, str]]:
    """``(label, PNG data URL)`` of each ``heatmaps.<label>.overlay`` the verdict carries: of
    the stages that are part of the verdict, or with ``research`` of the research-only ones
    (``research_only``: paper 004's finding classifier), which the page keeps apart."""
    found = []
    heatmaps = payload.get("heatmaps")
    if isinstance(heatmaps, Mapping):
        for label, entry in sorted(heatmaps.items()):
            if not isinstance(entry, Mapping) or bool(entry.get("research_only")) != research:
                continue
            overlay = entry.get("overlay")
            if isinstance(overlay, str) and overlay.startswith("data:image/png;base64,"):
                found.append((str(label), overlay))
    return found


def image_overlay(src: str, width: int, height: int, scale: float, payload: Mapping[str, Any]) -> str:
    """The review copy at ``src`` with, over it, each heatmap overlay (stretched over the whole
    copy, class ``heatmap``: the page's toggle hides them), the ROI box (source-image pixels
    times ``scale``) and the rule results listed in the corner, pass/fail in words and colour."""
    # Drawn in the copy's pixels (the viewBox); shown at most DISPLAY_SIDE pixels a side.
    shown = min(1.0, DISPLAY_SIDE / max(width, height, 1))
    u = 1 / shown  # one CSS pixel in the copy's pixels: marks and text keep their size on screen
    out = [
        (f'<svg id="review-image" class="review-image" role="img" aria-label="review copy with the ROI box" '
         f'width="{width * shown:.0f}" height="{height * shown:.0f}" viewBox="0 0 {width} {height}" '
         'xmlns="http://www.w3.org/2000/svg">'),
        f'<image href="{escape(src)}" x="0" y="0" width="{width}" height="{height}"/>',
    ]
    for label, url in heatmap_overlays(payload):
        out.append(f'<image class="heatmap" data-label="{escape(label)}" href="{escape(url)}" x="0" y="0" '
                   f'width="{width}" height="{height}" preserveAspectRatio="none" opacity="0.45"/>')  # fmt: skip
    # Research maps: drawn hidden, shown only when the reviewer asks (their own toggle).
    for label, url in heatmap_overlays(payload, research=True):
        out.append(f'<image class="heatmap-research" data-label="{escape(label)}" href="{escape(url)}" '
                   f'x="0" y="0" width="{width}" height="{height}" preserveAspectRatio="none" '
                   'opacity="0.45" visibility="hidden"/>')  # fmt: skip
    roi = payload.get("roi")
    box = _box(roi.get("box")) if isinstance(roi, Mapping) else None
    if box is not None:
        x0, y0, x1, y1 = (v * scale for v in box)
        out.append(f'<rect id="roi-box" x="{x0:.1f}" y="{y0:.1f}" width="{x1 - x0:.1f}" height="{y1 - y0:.1f}" '
                   f'fill="none" stroke="#ffe14d" stroke-width="{3 * u:.1f}"/>')  # fmt: skip
        out.append(f'<text x="{x0 + 4 * u:.1f}" y="{max(y0 - 6 * u, 14 * u):.1f}" fill="#ffe14d" '
                   f'font-size="{14 * u:.1f}">ROI</text>')  # fmt: skip
    rules = [r for r in payload.get("rules") or () if isinstance(r, Mapping)]
    for i, rule in enumerate(rules[:12]):
        status = str(rule.get("status", ""))
        value = rule.get("value")
        text = "n/a" if not isinstance(value, (int, float)) else f"{value:.3g}"
        y = (22 + 20 * i) * u
        out.append(f'<rect x="{6 * u:.1f}" y="{y - 15 * u:.1f}" width="{min(width - 12 * u, 330 * u):.1f}" '
                   f'height="{19 * u:.1f}" fill="#0a0d12" opacity="0.7"/>')  # fmt: skip
        out.append(f'<text class="rule-mark" x="{10 * u:.1f}" y="{y:.1f}" font-size="{13 * u:.1f}" '
                   f'fill="{_RULE_FILL.get(status, "#f4f7fa")}">'
                   f"{escape(status.upper())} {escape(str(rule.get('code', '?')))} = {escape(text)}</text>")  # fmt: skip
    out.append("</svg>")
    return "".join(out)


#: The reject-analysis series: (attribute, numerator, label, fill).
RATE_SERIES = (("reject_rate", "confirmed_rejects", "confirmed rejects", "#ff4136"),
               ("network_retake_rate", "network_retakes", "network retakes", "#ffb020"),
               ("review_rate", "reviewed", "reviewed", "#4aa3ff"))  # fmt: skip


def rate_bars(groups: Sequence[Any], title: str, series: Sequence[tuple[str, str, str, str]] = RATE_SERIES) -> str:
    """Horizontal bars of reject analysis (``reject_analysis.Group``): one group per key, a bar
    per series, x axis 0-100 %; each bar says its rate and ``numerator/images``."""
    left, width, bar, gap, top = 190, 420, 14, 12, 50
    group = len(series) * bar + gap
    height = top + max(len(groups), 1) * group + 40
    full = left + width + 150
    out = [
        (f'<svg class="bars rates" role="img" aria-label="{escape(title)}" width="{full}" height="{height}" '
         f'viewBox="0 0 {full} {height}" xmlns="http://www.w3.org/2000/svg">'),
        f'<text x="0" y="16" fill="#f4f7fa" font-size="15" font-weight="bold">{escape(title)}</text>',
    ]  # fmt: skip
    for k, (_, _, label, fill) in enumerate(series):
        out.append(f'<rect x="{left + k * 140}" y="26" width="10" height="10" fill="{fill}"/>'
                   f'<text x="{left + k * 140 + 14}" y="35" fill="#a9b6c4" font-size="12">{escape(label)}</text>')  # fmt: skip
    axis_y = top + max(len(groups), 1) * group
    for tick in range(0, 101, 20):
        x = left + width * tick / 100
        out.append(f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{axis_y}" stroke="#2a3441"/>')
        out.append(f'<text x="{x:.1f}" y="{axis_y + 16}" fill="#a9b6c4" font-size="12" text-anchor="middle">{tick}%</text>')
    if not groups:
        out.append(f'<text x="{left + 4}" y="{top + 12}" fill="#5b6775" font-size="12">no images</text>')
    for i, g in enumerate(groups):
        y0 = top + i * group
        name = g.label or g.key
        out.append(f'<text x="{left - 8}" y="{y0 + bar + 4}" fill="#f4f7fa" font-size="13" '
                   f'text-anchor="end">{escape(str(name)[:28])}</text>')  # fmt: skip
        for j, (attr, count, label, fill) in enumerate(series):
            rate, n, y = getattr(g, attr), getattr(g, count), y0 + j * bar
            of = g.all_rejects if attr == "share_of_rejects" else g.images
            if rate is None:
                continue
            w = max(width * rate, 1.0)
            out.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar - 2}" fill="{fill}" '
                       f'data-series="{attr}" data-key="{escape(str(g.key))}" data-rate="{rate:.4f}">'
                       f"<title>{escape(str(name))}, {escape(label)}: {n} of {of}</title></rect>")  # fmt: skip
            out.append(f'<text x="{left + w + 6:.1f}" y="{y + bar - 3}" fill="#f4f7fa" font-size="11">'
                       f"{_pct(rate)} ({n}/{of})</text>")  # fmt: skip
    out.append(f'<line x1="{left}" y1="{top - 4}" x2="{left}" y2="{axis_y}" stroke="#a9b6c4"/>')
    out.append("</svg>")
    return "".join(out)
