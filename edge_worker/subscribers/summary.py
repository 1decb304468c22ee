"""One human-readable line per published message: for logs, ``tail`` and the demo.

Shared by the daemon (its log line per verdict), ``edge-worker tail`` and ``edge-worker demo``;
it reads only the published payloads (verdict@1 and @2, error), so a subscriber and the daemon
say the same thing.
"""

from __future__ import annotations

#: How the summary line names a pack's ``training_data`` kind (the manifest's own words).
TRAINED_ON = {"synthetic-phantom": "synthetic phantoms", "real": "real radiographs, not clinically validated"}


def reason_texts(payload: dict) -> list[str]:  # type: ignore[type-arg]
    """The sentences of a verdict's reasons (objects since verdict@2; plain strings before)."""
    texts = []
    for reason in payload.get("reasons", []):
        texts.append(str(reason.get("text", reason.get("code", ""))) if isinstance(reason, dict) else str(reason))
    return texts


def rules_tally(rules: object) -> tuple[int, list[str]] | None:
    """``(how many rules, codes of those that did not pass)`` of a verdict's ``rules``, or
    ``None`` when it has none (a pack without a rules stage)."""
    if not isinstance(rules, list) or not rules:
        return None
    rows = [r for r in rules if isinstance(r, dict)]
    return len(rows), [str(r.get("code")) for r in rows if r.get("status") != "pass"]


def summary_line(kind: str, p: dict) -> str:  # type: ignore[type-arg]
    """One human-readable line for a verdict or error payload."""
    if kind == "error":
        return f"REJECTED {p['reason']}: {p['detail']}"
    series = p.get("series")
    if isinstance(series, dict):  # an MR series verdict (edge_worker.publish.series_verdict)
        flagged = ", ".join(series.get("flagged") or []) or "none"
        return (f"{str(p['decision']).upper()} series of {series.get('slices')} slices, quality "
                f"{float(series.get('score', 0.0)):.1f}, flagged: {flagged} - {' '.join(reason_texts(p))}")
    quality = p.get("quality") or {}
    q = f"quality {quality['score']:.2f} (grade {quality['grade']})" if quality else "quality -"
    tally = rules_tally(p.get("rules"))
    if tally is not None and not quality:
        total, failed = tally
        q = f"rules {total - len(failed)}/{total} passed" + (f" (not: {', '.join(failed)})" if failed else "")
    o = p.get("orientation") or {}
    orient = f"rotated {o['angle_deg']:.0f} deg" if o else ""
    data = str((p.get("pack") or {}).get("training_data") or "unknown")
    trained_on = TRAINED_ON.get(data, f"{data} data")
    flag = f" [not for clinical use: pack trained on {trained_on}]" if p.get("not_for_clinical_use") else ""
    decision = str(p["decision"]).replace("_", " ").upper()
    facts = ", ".join(x for x in (f"view {p['view']['label']} ({p['view']['confidence']:.2f})", q, orient) if x)
    return f"{decision} {facts} - {' '.join(reason_texts(p))}{flag}"
