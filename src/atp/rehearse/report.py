"""The rehearsal's record: ``rehearsal.json`` (everything) and ``rehearsal.md`` (the tables a reader wants)."""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

from atp.evaluation.stats import markdown_table

#: DAFormer's published peak GPU memory of MiT-B5 UDA training at batch 2 (its crops are 512²).
DAFORMER_GPU_GB = 9.7


def machine() -> dict[str, Any]:
    """What ran it: host, CPU model, cores, RAM, threads, load average at the start, GPU."""
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"host": platform.node(), "cpu": cpu, "cores": os.cpu_count(),
            "ram_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "load_average_at_start": [round(v, 2) for v in os.getloadavg()]}
    import torch

    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def step_time(seconds: list[float]) -> dict[str, float | None]:
    """``s_per_step``: the median of the steps after the first (the first carries one-off costs: allocator
    growth, cuDNN autotuning), or the only step; ``first_step_s`` on its own."""
    if not seconds:
        return {"s_per_step": None, "first_step_s": None}
    steady = seconds[1:] or seconds
    return {"s_per_step": round(statistics.median(steady), 3), "first_step_s": round(seconds[0], 3)}


def stage_row(step, result, record: dict | None) -> dict[str, Any]:
    """One stage of the report: timing and memory of the run, and what its probe recorded."""
    record = record or {}
    return {
        "name": step.name, "dataset": step.dataset, "stage": step.stage, "status": result.status,
        **step_time(record.get("step_seconds", [])), "step_seconds": record.get("step_seconds", []),
        "peak_rss_mib": result.peak_rss_mib, "peak_gpu_gib": record.get("peak_gpu_gib"), "wall_s": result.wall_s,
        "losses": record.get("losses", []), "shapes": record.get("shapes", {}),
        "hard_weights": record.get("hard_weights", []), "log": result.log,
    }


def _gib(mib: float | None) -> str:
    return "-" if mib is None else f"{mib / 1024:.2f}"


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _crops(shapes: dict) -> str:
    inputs = shapes.get("student_encoder_inputs") or []
    unique = sorted({"×".join(map(str, s)) for s in inputs})
    return ", ".join(unique) or "-"


def _batch(shapes: dict) -> str:
    batch = shapes.get("batch") or {}

    def text(entry: dict) -> str:
        return " ".join(f"{k} {'×'.join(map(str, v))}" for k, v in entry.items())

    if "img" in batch:
        return text(batch)
    return "; ".join(f"{stream}: {text(entry)}" for stream, entry in batch.items())


def markdown(report: dict[str, Any]) -> str:
    """``rehearsal.md``: the setting, per stage time and memory and shapes, the other runs, the checks."""
    options, host = report["options"], report["machine"]
    gpu = options["device"] == "cuda"
    lines = [
        f"# Full-size rehearsal: {'passed' if report['ok'] else 'FAILED' if report['complete'] else 'running'}",
        "",
        f"{report['date']}; model `{options['model']}`, batch {options['batch']}, precision {options['precision']}, "
        f"device {options['device']}, {options['steps']} step(s) per stage, datasets {', '.join(options['datasets'])}; "
        f"{'in this process' if options['in_process'] else 'one process per command'}.",
        f"Machine: {host['host']}, {host['cpu']}, {host['cores']} cores, {host['ram_gib']} GiB RAM"
        + (f", {host['gpu']}" if host.get("gpu") else "")
        + f"; OMP_NUM_THREADS={host['omp_num_threads']}; load average at the start {host['load_average_at_start']}.",
        (f"Total {report['total_s']:.0f} s" if report["complete"] else
         f"{len(report['steps'])} of {report['commands']} commands done after {report['total_s']:.0f} s")
        + f" (data {report['data']['write_s']:.0f} s: {report['data']['images']} images "
        "at the real sizes).",
        "",
        "## Stages",
        "",
        "s/step: the stage's own step timer (the median of the steps after the first); peak RSS: the stage's process"
        + (" (in-process runs: this process, all it held before)" if options["in_process"] else "")
        + ("; peak GPU: `torch.cuda.max_memory_allocated` over the steps, against DAFormer's published "
           f"{DAFORMER_GPU_GB} GB at batch 2" if gpu else "") + ".",
        "",
    ]
    header = ["run", "s/step", "first step s", "peak RSS GiB", *(["peak GPU GiB"] if gpu else []), "wall s",
              "loader batch", "student inputs"]
    rows = [[s["name"], _num(s["s_per_step"]), _num(s["first_step_s"]), _gib(s["peak_rss_mib"]),
             *([_num(s["peak_gpu_gib"])] if gpu else []), _num(s["wall_s"], 1), _batch(s["shapes"]),
             _crops(s["shapes"])] for s in report["stages"]]
    lines += [markdown_table(header, rows), "", "## The other commands", ""]
    others = [r for r in report["steps"] if r["kind"] != "train"]
    lines += [markdown_table(["run", "status", "wall s", "peak RSS GiB"],
                             [[r["name"], r["status"], _num(r["wall_s"], 1), _gib(r["peak_rss_mib"])] for r in others])]
    lines += ["", "## Checks", "", markdown_table(
        ["check", "result", "detail"],
        [[c["name"], "ok" if c["ok"] else "**FAILED**", c["detail"].replace("|", "/")] for c in report["checks"]])]
    if report["failures"]:
        lines += ["", "## Failures", "", *[f"* {f}" for f in report["failures"]]]
    return "\n".join(lines) + "\n"


def gpu_memory_lines(report: dict[str, Any]) -> list[str]:
    """One line per stage: its peak GPU memory against DAFormer's published figure."""
    lines = []
    for stage in report["stages"]:
        peak = stage.get("peak_gpu_gib")
        if peak is not None:
            gigabytes = peak * 2**30 / 1e9
            lines.append(f"peak GPU memory {stage['name']}: {peak:.2f} GiB = {gigabytes:.2f} GB "
                         f"({gigabytes / DAFORMER_GPU_GB:.2f}× DAFormer's published {DAFORMER_GPU_GB} GB at batch 2)")
    return lines


def now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z")
