"""The evaluation report beside the pack: ``evaluation.json`` and ``evaluation.html``.

Figures (:func:`figures`): per stage and chained confusion matrices, a reliability diagram of
every confidence the decision uses (the view's softmax probability; the quality score's
distance to the nearest grade boundary and the orientation vector's norm are not
probabilities, so their diagrams show accuracy per bin of the value instead), the quality
score against the truth, Dice histograms, and the images the pack got most wrong.
The page's plots are inline SVG written here and thumbnails are PNG made with OpenCV
(matplotlib is not installed on the worker's side); nothing is fetched when it is opened.
"""

from __future__ import annotations

import base64
import html
import json
from collections import Counter
from pathlib import Path
from typing import Any

import cv2
import numpy as np

BINS = 10
#: How many of the worst images the report shows.
WORST = 12


def confusion(true: list[Any], pred: list[Any], labels: list[Any]) -> dict[str, Any]:
    """``matrix[i][j]``: images of true ``labels[i]`` predicted ``labels[j]`` (``None`` last)."""
    cols = list(labels) + ([None] if any(p not in labels for p in pred) else [])
    index = {v: i for i, v in enumerate(cols)}
    matrix = [[0] * len(cols) for _ in labels]
    for t, p in zip(true, pred):
        if t in index and t is not None:
            matrix[index[t]][index.get(p, len(cols) - 1)] += 1
    return {"labels": [str(v) for v in labels], "predicted": [str(v) for v in cols],
            "matrix": matrix}  # fmt: skip


def reliability(values: list[float], correct: list[bool], lo: float = 0.0, hi: float = 1.0,
                bins: int = BINS) -> dict[str, Any]:  # fmt: skip
    """Accuracy per bin of ``values`` in ``[lo, hi]``; ECE when the values are probabilities."""
    edges = np.linspace(lo, hi, bins + 1)
    v, c = np.asarray(values, float), np.asarray(correct, bool)
    rows: list[dict[str, Any]] = []
    for i in range(bins):
        inside = (v >= edges[i]) & ((v < edges[i + 1]) | (i == bins - 1))
        n = int(inside.sum())
        rows.append({"lo": round(float(edges[i]), 4), "hi": round(float(edges[i + 1]), 4), "n": n,
                     "mean": round(float(v[inside].mean()), 4) if n else None,
                     "accuracy": round(float(c[inside].mean()), 4) if n else None})  # fmt: skip
    ece = sum(r["n"] * abs(r["mean"] - r["accuracy"]) for r in rows if r["n"]) / max(1, len(v))
    return {"bins": rows, "n": len(v), "ece": round(float(ece), 4)}


def _boundary_distance(score: float) -> float:
    s = min(max(score, 1.0), 3.0)
    return float(min(abs(s - 1.5), abs(s - 2.5)))


def _severity(r: dict[str, Any]) -> float:
    """How wrong a verdict is: a grade-3 image passed as ok first, then view, grade, box."""
    s = 0.0
    if r["grade_true"] == 3 and r["decision"] == "ok":
        s += 100.0
    s += 10.0 * (r["view"] != r["view_true"])
    if r["grade_true"] is not None:
        s += 5.0 * abs((r["grade"] or 0) - r["grade_true"]) if r["grade"] else 8.0
    if r["score"] is not None and r["score_true"] is not None:
        s += abs(r["score"] - r["score_true"])
    if r["dice"] is not None:
        s += 2.0 * (1.0 - r["dice"])
    # A rule the pack passed that fails on the labelled mask lets a retake through.
    for rule in r.get("rules", ()):
        if rule["truth"] != rule["pred"]:
            s += 50.0 if rule["pred"] == "pass" else 10.0
    return s


def class_recall(truth: list[Any], pred: list[Any], labels: list[Any]) -> dict[str, Any]:
    """Recall per class present in ``truth`` and their mean (balanced accuracy)."""
    recall = {str(c): round(float(np.mean([p == c for t, p in zip(truth, pred) if t == c])), 4)
              for c in labels if c in truth}  # fmt: skip
    balanced = round(float(np.mean(list(recall.values()))), 4) if recall else None
    return {"recall": recall, "balanced_accuracy": balanced}


def figures(chain: list[dict[str, Any]], stages: dict[str, list[dict[str, Any]]],
            views: list[str], grades: list[int]) -> dict[str, Any]:  # fmt: skip
    """Every figure of the report, as JSON-ready values."""
    graded = [r for r in chain if r["grade_true"] is not None]
    chained = {
        "n": len(chain),
        "view_accuracy": round(float(np.mean([r["view"] == r["view_true"] for r in chain])), 4),
        "view_confusion": confusion([r["view_true"] for r in chain], [r["view"] for r in chain], views),
        **class_recall([r["view_true"] for r in chain], [r["view"] for r in chain], views),
        "grade_accuracy": round(float(np.mean([r["grade"] == r["grade_true"] for r in graded])), 4)
        if graded else None,
        "grade_confusion": confusion([r["grade_true"] for r in graded], [r["grade"] for r in graded],
                                     grades),
        "decisions_by_true_grade": {str(g): dict(Counter(r["decision"] for r in graded
                                                         if r["grade_true"] == g)) for g in grades},
        "grade3_decided_ok": sum(r["grade_true"] == 3 and r["decision"] == "ok" for r in chain),
        "view_reliability": reliability([r["view_confidence"] for r in chain],
                                        [r["view"] == r["view_true"] for r in chain]),
        "quality_margin_vs_accuracy": reliability(
            [_boundary_distance(r["score"]) for r in graded if r["score"] is not None],
            [r["grade"] == r["grade_true"] for r in graded if r["score"] is not None], 0.0, 0.5),
        "score_vs_truth": [[round(r["score_true"], 3), round(r["score"], 3)] for r in chain
                           if r["score"] is not None and r["score_true"] is not None],
        "dice": [round(r["dice"], 4) for r in chain if r["dice"] is not None],
        "orientation_errors_deg": [round(abs((r["angle"] - r["angle_true"] + 180) % 360 - 180), 2)
                                   for r in chain if r["angle"] is not None
                                   and r["angle_true"] is not None],
    }  # fmt: skip
    per_stage: dict[str, Any] = {}
    for name, items in stages.items():
        if not items:
            per_stage[name] = {"n": 0}
        elif "confidence" in items[0]:
            per_stage[name] = {
                "n": len(items),
                "accuracy": round(float(np.mean([i["true"] == i["pred"] for i in items])), 4),
                "confusion": confusion([i["true"] for i in items], [i["pred"] for i in items], views),
                **class_recall([i["true"] for i in items], [i["pred"] for i in items], views),
                "reliability": reliability([i["confidence"] for i in items],
                                           [i["true"] == i["pred"] for i in items]),
            }  # fmt: skip
        elif "dice" in items[0]:
            d = [i["dice"] for i in items]
            per_stage[name] = {"n": len(items), "dice_mean": round(float(np.mean(d)), 4),
                               "dice": [round(x, 4) for x in d],
                               "box_found": round(float(np.mean([i["box_found"] for i in items])), 4)}
            if "per_class" in items[0]:  # a segmenter with named classes: Dice per structure
                names = sorted({c for i in items for c in i["per_class"]})
                per_stage[name]["dice_per_class"] = {
                    c: round(float(np.mean([i["per_class"][c] for i in items if c in i["per_class"]])), 4)
                    for c in names}  # fmt: skip
        elif "score" in items[0]:
            per_stage[name] = {
                "n": len(items),
                "accuracy": round(float(np.mean([i["true"] == i["pred"] for i in items])), 4),
                "mae": round(float(np.mean([abs(i["score"] - i["score_true"]) for i in items])), 4),
                "confusion": confusion([i["true"] for i in items], [i["pred"] for i in items], grades),
                "score_vs_truth": [[round(i["score_true"], 3), round(i["score"], 3)] for i in items],
            }  # fmt: skip
        else:
            e = [i["error_deg"] for i in items]
            per_stage[name] = {
                "n": len(items), "mae_deg": round(float(np.mean(e)), 2),
                "median_deg": round(float(np.median(e)), 2),
                "p90_deg": round(float(np.percentile(e, 90)), 2),
                "within_10_deg": round(float(np.mean(np.array(e) <= 10)), 4),
                "norm_vs_within_10_deg": reliability([min(i["norm"], 1.5) for i in items],
                                                     [i["error_deg"] <= 10 for i in items], 0.0, 1.5),
            }  # fmt: skip
    ranked = sorted(chain, key=_severity, reverse=True)[:WORST]
    worst = [{k: r[k] for k in ("file", "line", "view_true", "view", "grade_true", "grade",
                                "score_true", "score", "decision", "dice")} for r in ranked]
    return {"chained": chained, "per_stage": per_stage, "worst": worst}


# --- HTML ----------------------------------------------------------------------------------


def _svg(body: str, w: int = 320, h: int = 240) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
            f'viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="11">'
            f'<rect width="{w}" height="{h}" fill="#fff" stroke="#ccc"/>{body}</svg>')  # fmt: skip


def svg_bins(rel: dict[str, Any], title: str, diagonal: bool) -> str:
    """Accuracy per bin (bars), the diagonal of perfect calibration when ``diagonal``."""
    bins = rel["bins"]
    lo, hi = bins[0]["lo"], bins[-1]["hi"]
    x0, y0, pw, ph = 40, 200, 260, 160
    parts = [f'<text x="10" y="16">{html.escape(title)} (n {rel["n"]}, ECE {rel["ece"]})</text>']
    for b in bins:
        if b["n"]:
            x = x0 + (b["lo"] - lo) / (hi - lo) * pw
            bw = (b["hi"] - b["lo"]) / (hi - lo) * pw - 2
            bh = b["accuracy"] * ph
            parts.append(f'<rect x="{x:.1f}" y="{y0 - bh:.1f}" width="{bw:.1f}" height="{bh:.1f}" '
                         f'fill="#4a7bd0"><title>{b["lo"]}-{b["hi"]}: n {b["n"]}, accuracy '
                         f'{b["accuracy"]}</title></rect>')  # fmt: skip
    if diagonal:
        parts.append(f'<line x1="{x0}" y1="{y0}" x2="{x0 + pw}" y2="{y0 - ph}" stroke="#d33" '
                     'stroke-dasharray="4"/>')
    parts += [f'<line x1="{x0}" y1="{y0}" x2="{x0 + pw}" y2="{y0}" stroke="#000"/>',
              f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y0 - ph}" stroke="#000"/>',
              f'<text x="{x0}" y="{y0 + 14}">{lo}</text><text x="{x0 + pw - 20}" y="{y0 + 14}">'
              f'{hi}</text><text x="4" y="{y0 - ph + 4}">1.0</text>',
              f'<text x="{x0 + 60}" y="{y0 + 30}">value (bars: accuracy)</text>']  # fmt: skip
    return _svg("".join(parts))


def svg_scatter(points: list[list[float]], title: str, lo: float = 0.5, hi: float = 3.5) -> str:
    """Predicted score against the labelled one, with the identity line."""
    x0, y0, size = 40, 210, 180
    def px(v: float) -> float:
        return (min(max(v, lo), hi) - lo) / (hi - lo) * size

    parts = [f'<text x="10" y="16">{html.escape(title)} (n {len(points)})</text>',
             f'<line x1="{x0}" y1="{y0}" x2="{x0 + size}" y2="{y0 - size}" stroke="#d33" '
             'stroke-dasharray="4"/>',
             f'<rect x="{x0}" y="{y0 - size}" width="{size}" height="{size}" fill="none" '
             'stroke="#000"/>',
             f'<text x="{x0}" y="{y0 + 14}">truth {lo}-{hi}</text>',
             f'<text x="{x0 + size + 4}" y="{y0 - size + 10}">predicted</text>']  # fmt: skip
    parts += [f'<circle cx="{x0 + px(t):.1f}" cy="{y0 - px(p):.1f}" r="3" fill="#4a7bd0" '
              'fill-opacity="0.6"/>' for t, p in points]
    return _svg("".join(parts))


def svg_histogram(values: list[float], title: str, lo: float = 0.0, hi: float = 1.0) -> str:
    """Counts of ``values`` in ten bins from ``lo`` to ``hi``."""
    counts, edges = np.histogram(np.clip(values, lo, hi), bins=BINS, range=(lo, hi))
    x0, y0, pw, ph = 40, 200, 260, 160
    top = max(1, int(counts.max()) if len(values) else 1)
    parts = [f'<text x="10" y="16">{html.escape(title)} (n {len(values)})</text>']
    for i, c in enumerate(counts):
        bh = c / top * ph
        parts.append(f'<rect x="{x0 + i * pw / BINS:.1f}" y="{y0 - bh:.1f}" width="{pw / BINS - 2:.1f}" '
                     f'height="{bh:.1f}" fill="#4a7bd0"><title>{edges[i]:.2f}-{edges[i + 1]:.2f}: '
                     f'{c}</title></rect>')  # fmt: skip
    parts += [f'<line x1="{x0}" y1="{y0}" x2="{x0 + pw}" y2="{y0}" stroke="#000"/>',
              f'<text x="{x0}" y="{y0 + 14}">{lo}</text><text x="{x0 + pw - 20}" y="{y0 + 14}">'
              f'{hi}</text><text x="4" y="{y0 - ph + 4}">{top}</text>']  # fmt: skip
    return _svg("".join(parts))


def html_confusion(c: dict[str, Any], title: str) -> str:
    """A confusion matrix as a shaded table (rows true, columns predicted)."""
    top = max([1] + [v for row in c["matrix"] for v in row])
    head = "".join(f"<th>{html.escape(p)}</th>" for p in c["predicted"])
    rows = []
    for label, row in zip(c["labels"], c["matrix"]):
        cells = "".join(f'<td style="background:rgba(74,123,208,{v / top:.2f})">{v}</td>' for v in row)
        rows.append(f"<tr><th>{html.escape(label)}</th>{cells}</tr>")
    return (f"<table class=cm><caption>{html.escape(title)} (rows: truth, columns: predicted)"
            f"</caption><tr><th></th>{head}</tr>{''.join(rows)}</table>")  # fmt: skip


def thumbnail(record: dict[str, Any], side: int = 160) -> str:
    """A PNG data URI of the working image with the found box (red) and the true box (green)."""
    image = np.clip(np.asarray(record["thumbnail_source"], np.float32), 0, 1)
    rgb = cv2.cvtColor((image * 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)
    for key, colour in (("truth_box", (0, 200, 0)), ("box", (0, 0, 230))):
        if record.get(key) is not None:
            pts = record[key].corners().astype(np.int32).reshape(-1, 1, 2)
            cv2.polylines(rgb, [pts], True, colour, 2)
    scale = side / max(rgb.shape[:2])
    rgb = cv2.resize(rgb, (max(1, int(rgb.shape[1] * scale)), max(1, int(rgb.shape[0] * scale))),
                     interpolation=cv2.INTER_AREA)  # fmt: skip
    ok, png = cv2.imencode(".png", rgb)
    return "data:image/png;base64," + base64.b64encode(png.tobytes()).decode() if ok else ""


#: Chained figures of the quality grade: a segmented pack (judged by rules) has none.
GRADE_KEYS = ("grade_accuracy", "grade_confusion", "decisions_by_true_grade", "grade3_decided_ok",
              "quality_margin_vs_accuracy", "score_vs_truth")


def _graded_html(c: dict[str, Any]) -> list[str]:
    return [f"<p>view accuracy {c['view_accuracy']}, grade accuracy {c['grade_accuracy']}, "
            f"grade-3 images decided ok: <b>{c['grade3_decided_ok']}</b>; decisions by true grade "
            f"{html.escape(json.dumps(c['decisions_by_true_grade']))}</p>",
            html_confusion(c["view_confusion"], "view"), html_confusion(c["grade_confusion"], "grade"),
            "<div>", svg_bins(c["view_reliability"], "view confidence: reliability", True),
            svg_bins(c["quality_margin_vs_accuracy"], "quality score distance to a grade "
                     "boundary vs grade accuracy", False),
            svg_scatter(c["score_vs_truth"], "quality score vs truth"),
            svg_histogram(c["dice"], "Dice of the found box"), "</div>"]  # fmt: skip


def _ungraded_html(c: dict[str, Any]) -> list[str]:
    """A pack without a quality stage: judged by its rules, or a view (and orientation) pack."""
    rules = c.get("rules")
    summary = (f", rule agreement {rules['all']['agreement']}; decisions by the rules on the "
               f"labelled masks {html.escape(json.dumps(c.get('decisions_by_rule_truth', {})))}"
               if rules else f"; decisions {html.escape(json.dumps(c.get('decisions', {})))}")
    plots = [svg_bins(c["view_reliability"], "view confidence: reliability", True)]
    if c.get("dice"):
        plots.append(svg_histogram(c["dice"], "Dice of the segmentation (chained)"))
    if c.get("orientation_errors_deg"):
        plots.append(svg_histogram(c["orientation_errors_deg"], "orientation error, deg", 0.0, 180.0))
    return [f"<p>view accuracy {c['view_accuracy']}{summary}</p>",
            html_confusion(c["view_confusion"], "view"), "<div>", *plots, "</div>",
            *_rules_html(rules)]  # fmt: skip


def _rules_html(rules: dict[str, Any] | None) -> list[str]:
    """The rule agreement table: per rule, outcomes on the labelled mask against the pack's."""
    if not rules:
        return []
    rows = []
    for code, r in [("all", rules["all"]), *rules["per_rule"].items()]:
        rows.append(f"<tr><th>{html.escape(code)}</th><td>{r['n']}</td><td>{r['agreement']}</td>"
                    f"<td>{r['fail_detected']}</td><td>{r['pass_kept']}</td><td>"
                    f"{html.escape(json.dumps(r['confusion']))}</td></tr>")  # fmt: skip
    return ["<h3>Rules: the pack's outcome against the same rule on the labelled mask</h3>",
            ("<table class=cm><tr><th>rule</th><th>n</th><th>agreement</th><th>fail detected</th>"
             "<th>pass kept</th><th>truth -> predicted</th></tr>"), *rows, "</table>"]


def _probes_html(check: dict[str, Any] | None) -> list[str]:
    """The shortcut probes: the view network's accuracy with one cue removed from every image."""
    if not check:
        return []
    rows = [f"<tr><th>{html.escape(k)}</th><td>{v['accuracy']}</td><td>{v['balanced_accuracy']}</td>"
            f"<td>{v['accuracy_change']}</td></tr>" for k, v in check["probes"].items()]  # fmt: skip
    return [f"<h2>Shortcut check ({html.escape(check['network'])} alone, {check['n']} held-out "
            "images, every one altered)</h2>", "<table class=cm><tr><th>probe</th><th>accuracy"
            "</th><th>balanced</th><th>change</th></tr>", *rows, "</table>"]


def _cut_off_html(cut: dict[str, Any] | None) -> list[str]:
    """The edge rules on held-out images cut on each side (known truth) and as they are."""
    if not cut:
        return []
    rows = []
    for view, sides in cut["per_view"].items():
        for side, t in sides.items():
            rows.append(f"<tr><th>{html.escape(view)} {html.escape(side)}</th><td>{t['cropped']}</td>"
                        f"<td>{t['detection_rate']}</td><td>{t['not_ok_rate']}</td>"
                        f"<td>{t['uncropped']}</td><td>{t['false_alarm_rate']}</td></tr>")  # fmt: skip
    return [f"<h2>Cut-off check (the labelled structure cut by {cut['cut_fraction']:.0%} at one "
            "edge: known truth)</h2>", "<table class=cm><tr><th>view, edge</th><th>cropped</th>"
            "<th>detected</th><th>not ok</th><th>uncropped</th><th>false alarms</th></tr>",
            *rows, "</table>"]


def write_report(folder: Path, result: dict[str, Any], chain: list[dict[str, Any]]) -> tuple[Path, Path]:
    """Write ``evaluation.json`` and ``evaluation.html`` into ``folder``; returns both paths."""
    folder.mkdir(parents=True, exist_ok=True)
    json_path, html_path = folder / "evaluation.json", folder / "evaluation.html"
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    figs, head = result["figures"], result["pack"]
    c = figs["chained"]
    parts = [f"<h1>{html.escape(head['name'])} {html.escape(head['version'])}</h1>",
             f"<p>{html.escape(result['data'])}</p>",
             "<h2>Chained, as the worker runs the pack</h2>",
             *(_graded_html(c) if "grade_accuracy" in c else _ungraded_html(c)),
             "<h2>Per stage (each network alone, truth upstream)</h2>"]  # fmt: skip
    for name, s in figs["per_stage"].items():
        parts.append(f"<h3>{html.escape(name)}</h3><p>{html.escape(json.dumps({k: v for k, v in s.items() if not isinstance(v, (list, dict))}))}</p>")
        if "confusion" in s:
            parts.append(html_confusion(s["confusion"], name))
        if "reliability" in s:
            parts.append(svg_bins(s["reliability"], f"{name}: reliability", True))
        if "score_vs_truth" in s:
            parts.append(svg_scatter(s["score_vs_truth"], f"{name}: score vs truth"))
        if "dice" in s:
            parts.append(svg_histogram(s["dice"], f"{name}: Dice histogram"))
        if "dice_per_class" in s:
            parts.append(f"<p>{html.escape(name)}: mean Dice per class "
                         f"{html.escape(json.dumps(s['dice_per_class']))}</p>")
        if "norm_vs_within_10_deg" in s:
            parts.append(svg_bins(s["norm_vs_within_10_deg"], f"{name}: norm vs within 10 deg", False))
    parts += _probes_html(figs.get("shortcut_check")) + _cut_off_html(c.get("cut_off"))
    parts.append("<h2>The images the pack got most wrong</h2><div class=worst>")
    by_file = {r["file"]: r for r in chain}
    for w in figs["worst"]:
        caption = html.escape(f"{w['file']} (line {w['line']}): view {w['view_true']}->{w['view']}, "
                              f"grade {w['grade_true']}->{w['grade']}, {w['decision']}")
        parts.append(f'<figure><img src="{thumbnail(by_file[w["file"]])}" alt=""><figcaption>'
                     f"{caption}</figcaption></figure>")  # fmt: skip
    parts.append("</div>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:auto}table.cm{border-collapse:"
             "collapse;margin:8px;display:inline-table}table.cm td,table.cm th{border:1px solid "
             "#999;padding:4px 8px;text-align:center}svg{margin:4px}figure{display:inline-block;"
             "width:170px;margin:4px;font-size:11px}")
    html_path.write_text(f"<!doctype html><html><head><meta charset=utf-8><title>evaluation"
                         f"</title><style>{style}</style></head><body>{''.join(parts)}</body></html>\n")
    return json_path, html_path
