"""The report as the tables of BENCHMARKS.md's "Pipeline" section (``edge-worker bench --markdown``)."""

from __future__ import annotations

from typing import Any

from edge_worker.bench.inputs import ENCODINGS


def _p(summary: dict[str, Any] | None, key: str = "p50") -> str:
    if not summary or not summary.get("n"):
        return "-"
    return f"{summary[key]:.0f}" if summary[key] >= 10 else f"{summary[key]:.1f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def _runs(report: dict[str, Any]) -> list[tuple[dict[str, Any], str, dict[str, Any]]]:
    return [(p, e, p[e]) for p in report.get("packs", []) for e in ENCODINGS if e in p]


def _e2e(report: dict[str, Any]) -> list[str]:
    rows = []
    for pack, enc, run in _runs(report):
        naive = run.get("naive", {}).get("stages_ms", {}).get("total")
        rows.append([
            pack["pack"], enc, _p(run["e2e_ms"]), _p(run["e2e_ms"], "p99"), _p(run["watch_ms"]),
            _p(run["judge_ms"]), _p(run["deliver_ms"]), _p(run["stages_ms"]["total"]),
            _p(naive), str(run.get("ratio_naive_to_ours_e2e", "-")),
            str(run.get("ratio_naive_to_ours_in_process", "-")),
        ])  # fmt: skip
    return _table(["pack", "input", "e2e p50", "e2e p99", "watch", "judge", "deliver",
                   "ours in-process p50", "straightforward p50", "ratio e2e", "ratio in-process"],
                  rows)  # fmt: skip


def _stages(report: dict[str, Any]) -> list[str]:
    rows = []
    for pack, enc, run in _runs(report):
        s = run["stages_ms"]
        nets = ", ".join(f"{k[4:]} {_p(v)}" for k, v in s.items() if k.startswith("net:"))
        rows.append([pack["pack"], enc, _p(s["read"]), _p(s["decode"]), _p(s["normalise"]),
                     _p(s["resize"]), nets, _p(s["pre_post"]), _p(s["total"]),
                     _p(s["total"], "p99")])  # fmt: skip
    # Packs exported from the same checkpoints share one straightforward run: show it once.
    first = next((pack for pack, _, run in _runs(report) if "naive" in run), None)
    for pack, enc, run in _runs(report):
        if "naive" not in run or pack is not first:
            continue
        s = run["naive"]["stages_ms"]
        nets = ", ".join(f"{k[4:]} {_p(v)}" for k, v in s.items() if k.startswith("net:"))
        rows.append(["straightforward (torch)", enc, "-", _p(s["read_decode"]) + " (read+decode)",
                     _p(s["normalise"]), "-", nets, "-", _p(s["total"]), _p(s["total"], "p99")])  # fmt: skip
    return _table(["pack", "input", "read", "decode", "normalise", "resize", "networks",
                   "pre/post", "total p50", "total p99"], rows)  # fmt: skip


def _backlog(report: dict[str, Any]) -> list[str]:
    rows = []
    for pack, enc, run in _runs(report):
        for key in sorted(k for k in run if k.startswith("backlog_batch")):
            b = run[key]
            rows.append([pack["pack"], enc, key.removeprefix("backlog_batch"), str(b["files"]),
                         f"{b['seconds']:.1f}", f"{b['files_per_s']:.1f}",
                         f"{b['first_verdict_s']:.2f}"])  # fmt: skip
    return _table(["pack", "input", "batch_files", "files", "s", "files/s", "first verdict s"], rows)


def _memory(report: dict[str, Any]) -> list[str]:
    rows = []
    for pack in report.get("packs", []):
        peaks = [
            str(pack[e].get("peak_rss_mb")) + (f" / {pack[e]['peak_rss_mb_batch1']}" if "peak_rss_mb_batch1" in pack[e] else "")
            for e in ENCODINGS if e in pack
        ]  # fmt: skip
        warm = [str(pack[e].get("startup_warm_s")) for e in ENCODINGS if e in pack]
        rows.append([pack["pack"], " / ".join(peaks), str(pack.get("startup_cold_s", "-")), " / ".join(warm)])
    return _table(["pack", "peak RSS MiB (uncompressed [/ batch 1] / JPEG 2000)",
                   "start-up s, cold cache", "start-up s, warm cache"], rows)  # fmt: skip


def _targets(report: dict[str, Any]) -> list[str]:
    rows = [[t["target"], t["where"], str(t["value"]), str(t["goal"]),
             "met" if t["met"] else f"**missed** ({t['missed_by']})"]
            for t in report.get("targets", [])]  # fmt: skip
    return _table(["target", "where", "measured", "goal", ""], rows)


def _whole_file(report: dict[str, Any]) -> list[str]:
    whole = report.get("optimisations", {}).get("whole_file")
    if not whole:
        return []
    rows = [[label, f"{whole['settle_s']:g}", _p(whole[key]["watch_ms"]), _p(whole[key]["e2e_ms"]),
             _p(whole[key]["e2e_ms"], "p99")]
            for key, label in (("settle", "off: every file waits"), ("skip", "on (default)"))]  # fmt: skip
    return [
        "",
        (f"**Whole-file check** (`watch.skip_settle_when_whole`, {report['packs'][0]['pack']}, "
         "uncompressed; ms):"),
        "",
        *_table(["check", "settle_seconds", "watch p50", "e2e p50", "e2e p99"], rows),
    ]


def format_markdown(report: dict[str, Any]) -> str:
    """Markdown tables of one report: end to end, stages, backlog, memory, targets."""
    m = report["machine"]
    lines = [
        f"Command: `{report.get('command', 'edge-worker bench')}` ({report.get('seconds', '?')} s). "
        f"Date {m['date']}; CPU {m['cpu']}, nproc {m['nproc']}; load average before "
        f"{m['load_before']}, after {m.get('load_after')}; broker {report.get('broker')}; "
        f"onnxruntime {m['onnxruntime']}, pydicom {m['pydicom']}, OpenCV {m['opencv']}.",
        "",
        "**File closed -> verdict received** (ms; watch = settle + watcher, judge = queue + read + "
        "networks, deliver = journal + outbox + MQTT):",
        "",
        *_e2e(report),
        "",
        "**Per stage, in-process** (p50 ms):",
        "",
        *_stages(report),
        "",
        "**Backlog** (files moved into the watch folder at once, until the last verdict arrived):",
        "",
        *_backlog(report),
        "",
        "**Memory and start-up**:",
        "",
        *_memory(report),
        "",
        "**Targets**:",
        "",
        *_targets(report),
        *_whole_file(report),
    ]
    return "\n".join(lines)
