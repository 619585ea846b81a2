"""Running the ladder's jobs as subprocesses, up to N at once, with one progress line per step event and
each job's output in its log file."""

from __future__ import annotations

import os
import subprocess
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from atp.ladder.plan import Job, Step

TAIL_LINES = 20
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def format_duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


def threads_per_job(slots: int) -> int:
    """The CPU threads each of ``slots`` concurrent jobs gets: its share of the cores, at least one."""
    return max(1, (os.cpu_count() or 1) // slots)


def job_environment(slots: int) -> dict[str, str] | None:
    """The environment of a job when ``slots`` run at once (None, the ladder's own, for one at a time)."""
    if slots <= 1:
        return None
    threads = str(threads_per_job(slots))
    return {**os.environ, **dict.fromkeys(THREAD_VARIABLES, threads)}


@dataclass
class Progress:
    """Prints ``time [finished/N] family seed step status elapsed`` lines, counts the outcomes, estimates the rest.

    One line per event, each complete in itself, so the lines of concurrent jobs interleave readably.
    The ETA extrapolates the wall time per step trained in this invocation to the steps still to train;
    steps that had finished before it started are not counted, as they will only be skipped.
    """

    steps: list[Step]
    stream: TextIO | None = None
    counts: dict[str, int] = field(default_factory=dict)
    started: float = field(default_factory=time.time)
    to_train: int = field(init=False)

    def __post_init__(self) -> None:
        self.to_train = sum(step.manifest() is None for step in self.steps)

    def report(self, step: Step, status: str, elapsed: float | None = None, note: str = "") -> None:
        if status != "running":
            self.counts[status] = self.counts.get(status, 0) + 1
        finished, total = sum(self.counts.values()), len(self.steps)
        text = (f"{time.strftime('%H:%M:%S')} [{finished:>{len(str(total))}}/{total}] {step.family:<12} "
                f"seed {step.seed:<5} {step.label:<10} {status:<8}")
        if elapsed is not None:
            text += f" {format_duration(elapsed):>8}"
        eta = self.eta() if status == "done" else None
        notes = [note] if note else []
        notes += [f"ETA {format_duration(eta)}"] if eta is not None else []
        self.say(text + (f"  {'; '.join(notes)}" if notes else ""))

    def eta(self) -> float | None:
        """Seconds until the last step, at the mean wall time per step trained so far; None before the first."""
        trained = self.counts.get("done", 0)
        ended = trained + self.counts.get("failed", 0) + self.counts.get("not run", 0)
        remaining = max(0, self.to_train - ended)
        return (time.time() - self.started) / trained * remaining if trained else None

    def say(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def overall(self) -> str:
        parts = ", ".join(f"{n} {status}" for status, n in self.counts.items())
        return f"{sum(self.counts.values())}/{len(self.steps)} steps: {parts or 'none'}"


@dataclass
class JobOutcome:
    job: Job
    ok: bool
    returncode: int | None = None  # None: nothing to run, or (not ok) its prerequisite failed


class RunningJob:
    """One job's subprocess and the steps it has still to finish, reported as they finish."""

    def __init__(self, job: Job, progress: Progress, env: dict[str, str] | None = None):
        self.job, self.progress, self.env = job, progress, env
        self.pending: deque[Step] = deque()
        self.process: subprocess.Popen | None = None
        self.started = time.time()

    def start(self) -> bool:
        """Report the finished steps as skipped and start the job on the others; False when none is left."""
        for step in self.job.steps:
            if step.manifest() is not None:
                self.progress.report(step, "skipped", note="(finished earlier)")
            else:
                self.pending.append(step)
        if not self.pending:
            return False
        self.job.run_dir.mkdir(parents=True, exist_ok=True)
        with self.job.log.open("a") as log:
            log.write(f"\n### {time.strftime('%Y-%m-%d %H:%M:%S')} $ {' '.join(self.job.command)}\n")
            log.flush()
            self.process = subprocess.Popen(self.job.command, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=self.env)
        self.started = time.time()
        self.progress.report(self.pending[0], "running")
        return True

    def poll(self) -> int | None:
        """Report the steps finished since the last poll; the exit status once the job has ended."""
        returncode = self.process.poll()
        while self.pending and self.pending[0].manifest() is not None:
            self.progress.report(self.pending.popleft(), "done", time.time() - self.started)
            self.started = time.time()
            if self.pending and returncode is None:
                self.progress.report(self.pending[0], "running")
        return returncode

    def finish(self, returncode: int) -> JobOutcome:
        """The outcome of the ended job; an unfinished step is reported failed with the log's tail."""
        if returncode == 0 and not self.pending:
            return JobOutcome(self.job, ok=True, returncode=0)
        if self.pending:
            self.progress.report(self.pending.popleft(), "failed", time.time() - self.started,
                                 note=f"(exit {returncode})")
        report_not_run(self.pending, self.progress, "an earlier stage of its job failed")
        self.progress.say(f"    log: {self.job.log} (last {TAIL_LINES} lines):")
        for line in tail(self.job.log, TAIL_LINES):
            self.progress.say(f"    | {line}")
        return JobOutcome(self.job, ok=False, returncode=returncode)


def report_not_run(steps, progress: Progress, why: str) -> None:
    for step in steps:
        progress.report(step, "not run", note=f"({why})")


def run_job(job: Job, progress: Progress, poll_s: float = 1.0, env: dict[str, str] | None = None) -> JobOutcome:
    """Run ``job`` unless all its steps finished; report each step as it is skipped, starts, finishes or fails."""
    return run_jobs([job], progress, poll_s=poll_s, env=env)[0]


def run_jobs(jobs: list[Job], progress: Progress, slots: int = 1, poll_s: float = 1.0,
             env: dict[str, str] | None = None,
             on_end: Callable[[JobOutcome], None] | None = None) -> list[JobOutcome]:
    """Run ``jobs`` up to ``slots`` at once, starting each, in list order, once the job it waits for has ended.

    A job whose prerequisite failed is not run. ``on_end`` is called with each outcome as its job ends
    (the ladder evaluates there; its slot stays taken meanwhile). Ctrl-C or SIGTERM of the ladder stops
    every running job (each saves its step) and waits for them.
    """
    waiting, running, ended = list(jobs), [], {}
    planned = {job.run_dir for job in jobs}

    def end(outcome: JobOutcome) -> None:
        ended[outcome.job.run_dir] = outcome
        if on_end is not None:
            on_end(outcome)

    try:
        while waiting or running:
            for job in [j for j in waiting if j.after not in planned or j.after in ended]:
                if len(running) >= slots:
                    break
                waiting.remove(job)
                unfinished = any(step.manifest() is None for step in job.steps)
                if job.after in ended and not ended[job.after].ok and unfinished:
                    report_not_run([s for s in job.steps if s.manifest() is None], progress,
                                   f"the job it starts from failed: {job.after}")
                    end(JobOutcome(job, ok=False))
                    continue
                runner = RunningJob(job, progress, env)
                if runner.start():
                    running.append(runner)
                else:
                    end(JobOutcome(job, ok=True))
            for runner in list(running):
                returncode = runner.poll()
                if returncode is not None:
                    running.remove(runner)
                    end(runner.finish(returncode))
            if running:
                time.sleep(poll_s)
    except BaseException:
        stop([runner.process for runner in running])
        raise
    return [ended[job.run_dir] for job in jobs]


def stop(processes: list[subprocess.Popen], grace_s: float = 120.0) -> None:
    """SIGTERM running jobs (a stage saves its last step and marks itself interrupted), then wait for them."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    deadline = time.time() + grace_s
    for process in processes:
        try:
            process.wait(timeout=max(0.0, deadline - time.time()))
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
