"""The GPU proof's markdown: one summary table, then per-part latency, from its JSON report."""

from __future__ import annotations

from typing import Any

_PATHS = (("worker_single", "worker, single files"), ("worker_burst", "worker, burst"),
          ("torch_single", "torch reference, single files"), ("torch_burst", "torch reference, burst"))  # fmt: skip


def _ms(stats: dict[str, Any] | None) -> str:
    if not stats or not stats.get("n"):
        return "-"
    return f"{stats['p50']:.1f} / {stats['p99']:.1f}"


def _memory(run: dict[str, Any]) -> str:
    gpu = run["gpu_memory"]
    rss = [m.get("rss_peak_mib") or 0.0 for m in run["station_memory"]]
    text = f"GPU {gpu['stations_mib']} MiB" if gpu.get("measured") else "GPU not measured"
    torch_peak = [m["torch_reserved_peak_mib"] for m in run["station_memory"] if "torch_reserved_peak_mib" in m]
    if torch_peak:
        text += f" (torch reserved {max(torch_peak):.0f} MiB max)"
    return f"{text}; RSS peak {max(rss):.0f} MiB per station"


def _parity(parity: dict[str, Any]) -> str:
    worst = max((o["max_abs_error"] for s in parity["stages"] for o in s.get("outputs", {}).values()),
                default=0.0)  # fmt: skip
    same = sum(d["same"] for d in parity["decisions"].values())
    state = "passed" if parity["passed"] else "REFUSED"
    return f"{state}: max abs error {worst:.2g}, {same}/{len(parity['decisions'])} decisions same"


def markdown(report: dict[str, Any]) -> str:
    """The report as markdown: what ran where, then a row per pack and path."""
    env = report["environment"]
    inputs = report["inputs"]
    lines = [
        f"# GPU proof: {env['mode']}", "",
        (f"{env['date']}; GPU {env.get('gpu') or 'none'}; {env['cpu']} ({env['nproc']} cores); "
         f"backend {env['backend']}; onnxruntime from {env['onnxruntime_distribution']} "
         f"(providers {', '.join(env['onnxruntime_providers'])}); Python {env['python']}."),
        "",
        (f"Inputs: {inputs['phantoms']} phantoms of {inputs['phantom_rows']} rows, "
         f"{len(inputs['real'])} real files" + (f" ({inputs['real_note']})" if inputs["real_note"] else "")
         + (f"; left out: {', '.join(inputs['real_skipped'])}" if inputs["real_skipped"] else "") + "; "
         f"the torch reference read {len(inputs['torch_reference_files'])} of them with plain pydicom."),
        ("Latency is path -> decision in one station process (read and decode included), p50 / p99 in ms;"
         " a burst is one file per station at once, each station its own process."),
        "",
        "| pack | path | stations | end to end | networks | burst makespan | memory | parity (vs CPU EP) |",
        "|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for name, entry in report["packs"].items():
        for key, label in _PATHS:
            run = entry.get(key)
            if run is None:
                continue
            parts = run["parts_ms"]
            burst = _ms(run["makespan_ms"]) if run["stations"] > 1 else "-"
            check = _parity(entry["parity"]) if key == "worker_single" else ""
            lines.append(f"| {name} | {label} | {run['stations']} | {_ms(parts.get('total'))} | "
                         f"{_ms(parts.get('networks'))} | {burst} | {_memory(run)} | {check} |")  # fmt: skip
    lines += ["", "File closed -> verdict received (the real worker per station, on a broker; p50 / p99 ms):", "",
              "| pack | stations | file closed -> verdict | burst makespan | start-up s | memory | decisions |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, entry in report["packs"].items():
        for key in ("e2e_single", "e2e_burst"):
            run = entry.get(key)
            if run is None:
                continue
            gpu = run["gpu_memory"]
            memory = f"GPU {gpu['stations_mib']} MiB" if gpu.get("measured") else "GPU not measured"
            memory += f"; RSS peak {max(m or 0.0 for m in run['rss_peak_mib']):.0f} MiB per worker"
            burst = _ms(run["makespan_ms"]) if run["stations"] > 1 else "-"
            lines.append(f"| {name} | {run['stations']} | {_ms(run['e2e_ms'])} | {burst} | "
                         f"{max(run['startup_s']):.1f} | {memory} | {run['decisions']} |")  # fmt: skip
    lines += ["", "Per part, single files (p50 / p99 ms):", ""]
    for name, entry in report["packs"].items():
        for key, label in _PATHS:
            run = entry.get(key)
            if run is None or run["stations"] != 1:
                continue
            parts = ", ".join(f"{part} {_ms(stats)}" for part, stats in run["parts_ms"].items())
            lines.append(f"* {name}, {label}: {parts}")
    return "\n".join(lines) + "\n"
