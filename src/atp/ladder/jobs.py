"""Running the ladder's jobs as subprocesses, with one progress line per step and the output in a log file."""

from __future__ import annotations

import subprocess
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from atp.ladder.plan import Job, Step

TAIL_LINES = 20


def format_duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


@dataclass
class Progress:
    """Prints ``[k/N] family seed step status elapsed`` lines and counts the outcomes."""

    steps: list[Step]
    stream: TextIO | None = None
    counts: dict[str, int] = field(default_factory=dict)

    def report(self, step: Step, status: str, elapsed: float | None = None, note: str = "") -> None:
        if status != "running":
            self.counts[status] = self.counts.get(status, 0) + 1
        ordinal = self.steps.index(step) + 1
        width = len(str(len(self.steps)))
        text = (f"{time.strftime('%H:%M:%S')} [{ordinal:>{width}}/{len(self.steps)}] {step.family:<12} "
                f"seed {step.seed:<5} {step.name:<10} {status:<8}")
        if elapsed is not None:
            text += f" {format_duration(elapsed):>8}"
        self.say(text + (f"  {note}" if note else ""))

    def say(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def overall(self) -> str:
        parts = ", ".join(f"{n} {status}" for status, n in self.counts.items())
        return f"{sum(self.counts.values())}/{len(self.steps)} steps: {parts or 'none'}"


@dataclass
class JobOutcome:
    job: Job
    ok: bool
    returncode: int | None = None  # None: nothing to run


def run_job(job: Job, progress: Progress, poll_s: float = 1.0) -> JobOutcome:
    """Run ``job`` unless all its steps finished; report each step as it is skipped, starts, finishes or fails."""
    pending = deque()
    for step in job.steps:
        if step.manifest() is not None:
            progress.report(step, "skipped", note="(finished earlier)")
        else:
            pending.append(step)
    if not pending:
        return JobOutcome(job, ok=True)
    job.run_dir.mkdir(parents=True, exist_ok=True)
    with job.log.open("a") as log:
        log.write(f"\n### {time.strftime('%Y-%m-%d %H:%M:%S')} $ {' '.join(job.command)}\n")
        log.flush()
        process = subprocess.Popen(job.command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        started = time.time()
        progress.report(pending[0], "running")
        try:
            while True:
                returncode = process.poll()
                while pending and pending[0].manifest() is not None:
                    progress.report(pending.popleft(), "done", time.time() - started)
                    started = time.time()
                    if pending and returncode is None:
                        progress.report(pending[0], "running")
                if returncode is not None:
                    break
                time.sleep(poll_s)
        except BaseException:  # Ctrl-C or SIGTERM of the ladder: the job saves its step and stops with it
            stop(process)
            raise
    if returncode == 0 and not pending:
        return JobOutcome(job, ok=True, returncode=0)
    if pending:
        progress.report(pending.popleft(), "failed", time.time() - started, note=f"(exit {returncode})")
    for step in pending:
        progress.report(step, "not run", note="(an earlier stage of its job failed)")
    progress.say(f"    log: {job.log} (last {TAIL_LINES} lines):")
    for line in tail(job.log, TAIL_LINES):
        progress.say(f"    | {line}")
    return JobOutcome(job, ok=False, returncode=returncode)


def stop(process: subprocess.Popen, grace_s: float = 120.0) -> None:
    """SIGTERM a running job (a stage saves its last step and marks itself interrupted), then wait for it."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def tail(path: Path, count: int) -> list[str]:
    """The last ``count`` lines of a text file (progress-bar carriage returns keep their last state)."""
    lines: deque[str] = deque(maxlen=count)
    with path.open(errors="replace") as handle:
        for line in handle:
            lines.append(line.rstrip("\r\n").rsplit("\r", 1)[-1])
    return list(lines)
