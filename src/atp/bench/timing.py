"""Timing and memory of the benchmark: device-synchronised wall times, alternated calls, peak memory,
the per-step timer callback and profiler tables."""

from __future__ import annotations

import os
import resource
import threading
import time
from collections.abc import Callable
from typing import Any

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall seconds of one call, the device queue drained before and after."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def alternate(fns: list[Callable[[int], Any]], steps: int, warmup: int, device: torch.device) -> list[list[float]]:
    """Per-call wall times of each of ``fns``, called in turn (A B C A B C …) ``warmup + steps`` times;
    the first ``warmup`` rounds are not kept."""
    times: list[list[float]] = [[] for _ in fns]
    for step in range(warmup + steps):
        for fn, kept in zip(fns, times, strict=True):
            seconds = timed(lambda fn=fn, step=step: fn(step), device)
            if step >= warmup:
                kept.append(seconds)
    return times


class PeakMemory:
    """Peak memory in MiB while the block runs: CUDA allocator peak, else sampled process RSS."""

    def __init__(self, device: torch.device, interval: float = 0.005) -> None:
        self.device, self.interval = device, interval
        self.peak_mib = 0.0
        self._stop = threading.Event()

    @staticmethod
    def rss_mib() -> float:
        try:
            with open("/proc/self/statm") as statm:
                return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        except OSError:  # not Linux: the process-lifetime peak is the best available
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_mib = max(self.peak_mib, self.rss_mib())

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.peak_mib = self.rss_mib()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            self.peak_mib = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self.peak_mib = max(self.peak_mib, self.rss_mib())


def profile_table(profiler: Any, rows: int = 12) -> str:
    return profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def profile_difference(real: Any, bare: Any, steps: int, rows: int = 15) -> str:
    """Ops by how much more self CPU time per step the real step spends in them than the bare step (ms, calls)."""
    def per_op(profiler: Any) -> dict[str, tuple[float, float]]:
        return {e.key: (e.self_cpu_time_total / 1000 / steps, e.count / steps) for e in profiler.key_averages()}

    real_ops, bare_ops = per_op(real), per_op(bare)
    names = sorted(set(real_ops) | set(bare_ops),
                   key=lambda n: real_ops.get(n, (0, 0))[0] - bare_ops.get(n, (0, 0))[0], reverse=True)
    total = sum(v[0] for v in real_ops.values()) - sum(v[0] for v in bare_ops.values())
    lines = [f"{'op':<48} {'real ms':>9} {'bare ms':>9} {'extra ms':>9} {'real calls':>11} {'bare calls':>11}"]
    for name in names[:rows]:
        (r_ms, r_calls), (b_ms, b_calls) = real_ops.get(name, (0, 0)), bare_ops.get(name, (0, 0))
        lines.append(f"{name[:48]:<48} {r_ms:>9.2f} {b_ms:>9.2f} {r_ms - b_ms:>9.2f} {r_calls:>11.1f} {b_calls:>11.1f}")
    lines.append(f"{'total self CPU per step':<48} {'':>9} {'':>9} {total:>9.2f}")
    return "\n".join(lines)


def step_timer_callback(warmup: int, device: torch.device, bare: Callable[[int], Any] | None, profiler: Any | None):
    """A Lightning callback timing each training batch and, right after it, one call of ``bare(step)``
    (real and bare steps alternate); times from the ``warmup``-th batch on are kept."""
    import pytorch_lightning as pl

    class StepTimer(pl.Callback):
        def __init__(self) -> None:
            self.real: list[float] = []
            self.bare: list[float] = []
            self._seen = 0

        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
            if self._seen == warmup and profiler is not None:
                profiler.start()
            synchronize(device)
            self._start = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            synchronize(device)
            real = time.perf_counter() - self._start
            bare_seconds = timed(lambda: bare(self._seen), device) if bare is not None else None
            if self._seen >= warmup:
                self.real.append(real)
                if bare_seconds is not None:
                    self.bare.append(bare_seconds)
            self._seen += 1

        def on_train_end(self, trainer, module) -> None:
            if profiler is not None and self._seen > warmup:
                profiler.stop()

    return StepTimer()
