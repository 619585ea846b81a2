"""Running the rehearsal's steps: as subprocesses (the command; peak RSS of each from ``os.wait4``), or in
this process (the test; the same commands' library functions, peak RSS sampled)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from atp.rehearse.plan import Step

#: What a log says when the process ran out of memory (CPU allocator, CUDA, the kernel's OOM killer: SIGKILL).
OOM_MARKERS = ("can't allocate memory", "out of memory", "outofmemoryerror", "cannot allocate memory")


@dataclass
class StepResult:
    """How one step ended: ``status`` ok | failed | not run."""

    name: str
    kind: str
    status: str
    log: str
    command: str
    returncode: int | None = None
    wall_s: float | None = None
    peak_rss_mib: float | None = None
    out_of_memory: bool = False
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def total_ram_mib() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20


def looks_out_of_memory(returncode: int | None, log: Path) -> bool:
    """Killed by SIGKILL (the kernel's OOM killer), or an allocator's out-of-memory error in the log's tail."""
    if returncode == -9:
        return True
    try:
        with log.open("rb") as handle:
            handle.seek(max(0, log.stat().st_size - 20_000))
            tail = handle.read().decode(errors="replace").lower()
    except OSError:
        return False
    return any(marker in tail for marker in OOM_MARKERS)


def high_water_rss_mib(pid: int) -> float | None:
    """``VmHWM`` of a running process (its own peak RSS since its exec), None when unreadable."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return None


def run_subprocess(step: Step, log: Path, env: dict[str, str] | None = None,
                   poll_s: float = 0.2) -> tuple[int, float, float]:
    """``python -m <command> <overrides>`` with its output in ``log``: (exit status, wall s, peak RSS MiB).

    The peak is the process's own high-water mark (``VmHWM``, read while it runs). ``os.wait4``'s ``ru_maxrss``
    is the fallback only: Linux folds the launching process's peak RSS into a child's ``ru_maxrss`` at its
    ``exec``, so that figure is never below this process's own. Ctrl-C or SIGTERM stops the command with SIGTERM
    (a stage saves its step) and is re-raised."""
    argv = [sys.executable, "-m", step.command, *step.overrides]
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    peak = None
    with log.open("w") as handle:
        handle.write(f"$ {shlex.join(argv)}\n")
        handle.flush()
        process = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        try:
            while True:
                pid, status, usage = os.wait4(process.pid, os.WNOHANG)
                if pid:
                    break
                peak = max(filter(None, (peak, high_water_rss_mib(process.pid))), default=None)
                time.sleep(poll_s)
        except BaseException:
            process.terminate()
            process.wait()
            raise
        process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, time.perf_counter() - started, peak or usage.ru_maxrss / 1024


def run_in_process(step: Step, log: Path) -> tuple[int, float, float]:
    """The step's command as a library call in this process: (exit status, wall s, peak RSS MiB sampled while it
    ran, which includes whatever this process held before). An exception is status 1, its traceback in ``log``."""
    import torch

    from atp.bench.timing import PeakMemory

    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(f"(in process) python -m {step.command} {shlex.join(step.overrides)}\n")
    started = time.perf_counter()
    memory = PeakMemory(torch.device("cpu"), interval=0.05)
    try:
        with memory:
            status = _call(step)
    except Exception:
        with log.open("a") as handle:
            handle.write(traceback.format_exc())
        status = 1
    return status, time.perf_counter() - started, memory.peak_mib


def _call(step: Step) -> int:
    """The library function behind ``step.command``, composed from the same overrides (Hydra's own ``hydra.*``
    keys, which only place the output, are replaced by the step's output folder)."""
    from omegaconf import open_dict

    from atp.config import compose_cli

    overrides = [o for o in step.overrides if not o.startswith("hydra.")]
    if step.command in ("atp.data.check", "atp.data.prepare"):
        from atp.data import check, prepare

        return (check if step.command == "atp.data.check" else prepare).main(overrides)
    if step.command == "atp.train":
        from atp.run import pipeline, run_stage
        from atp.train import apply_per_stage

        cfg = compose_cli(overrides, "train")
        with open_dict(cfg):
            cfg.run_dir = str(step.out_dir)
        run_stage(apply_per_stage(cfg, overrides), step.out_dir, key=pipeline.chain_key(overrides))
        return 0
    if step.command == "atp.evaluate":
        from atp.evaluate import evaluate, export

        cfg = compose_cli(overrides, "evaluate")
        with open_dict(cfg):
            cfg.output_dir = str(step.out_dir)
        (export if cfg.export is not None else evaluate)(cfg, step.out_dir, progress=False)
        return 0
    if step.command == "atp.predict":
        from atp.predict import predict

        summary = predict(compose_cli(overrides, "predict"))
        return 1 if summary.skipped else 0
    raise ValueError(f"rehearse: no in-process runner for {step.command}")


def run_step(step: Step, log: Path, in_process: bool = False) -> StepResult:
    """Run ``step`` and say how it ended; a run that ran out of memory says so with its peak RSS."""
    runner = run_in_process if in_process else run_subprocess
    returncode, wall_s, peak_mib = runner(step, log)
    command = f"python -m {step.command} {shlex.join(step.overrides)}"
    result = StepResult(step.name, step.kind, "ok" if returncode == 0 else "failed", str(log), command,
                        returncode, round(wall_s, 2), round(peak_mib, 1))
    if returncode != 0 and looks_out_of_memory(returncode, log):
        result.out_of_memory = True
        result.note = (f"out of memory: peak RSS {peak_mib / 1024:.1f} GiB of {total_ram_mib() / 1024:.1f} GiB RAM"
                       + (" (killed: SIGKILL)" if returncode == -9 else ""))
    elif returncode != 0:
        result.note = f"exit status {returncode}"
    return result
