"""Plan the conformance jobs and run them in subprocesses, a few at a time.

A :class:`Job` is one ``python -m tests.conformance.run <target> --loop L [--poller P]`` under one
interpreter. :func:`plan` makes, for every wanted loop and every interpreter we know about
(3.11, 3.12, 3.13: ``interpreters()``), one job per module that interpreter ships, plus the mixins
once on netpoll's ``poll`` backend under 3.11. An interpreter that is not installed still gets its
jobs (so test ids are stable); they report ``missing`` and pytest skips them.

:class:`Pool` runs jobs in a thread pool of ``workers`` subprocesses (2 by default: one per core
on the CI machine; ``$NETPOLL_CONFORMANCE_JOBS`` overrides), heaviest first, and hands out each
job's :class:`Outcome` on request. Interpreters run with ``PYTHONPATH=<repo root>`` and cwd at the
repo root, so ``netpoll`` (stdlib only) and this package import without installation.

Environment knobs: ``NETPOLL_CONFORMANCE_LOOPS`` (default ``netpoll``; ``asyncio,netpoll``
also validates the harness on stock asyncio), ``NETPOLL_CONFORMANCE_JOBS`` (pool size),
``NETPOLL_CONFORMANCE_PYTHONS`` (comma-separated interpreter paths, replacing the defaults).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from . import modules_for

__all__ = ["REPO", "Interpreter", "Job", "Outcome", "Pool", "interpreters", "plan"]

REPO = Path(__file__).resolve().parents[2]
RESULT_MARK = "CONFORMANCE-RESULT "
JOB_TIMEOUT = 900.0  # seconds for one job; the per-test watchdog normally ends hangs far sooner
TEST_TIMEOUT = 60.0  # per-test watchdog limit passed to the runner

#: Where to look for each interpreter, in order (first that exists and ships test.test_asyncio).
_CANDIDATES: dict[tuple[int, int], tuple[str, ...]] = {
    (3, 11): (sys.executable, "python3.11", "/root/.pyenv/versions/3.11.7/bin/python3.11"),
    (3, 12): ("python3.12", "/root/.pyenv/versions/3.12.1/bin/python3.12"),
    (3, 13): ("python3.13", "/root/.pyenv/versions/3.13.0/bin/python3.13"),
}

#: Rough seconds per target (measured on stock asyncio, 3.11, 2 cores): schedules heavy first.
_WEIGHT: dict[str, float] = {
    "test_tasks": 20,
    "test_subprocess": 18,
    "test_ssl": 11,
    "mixins": 11,
    "test_events": 7,
    "test_taskgroups": 6,
    "test_sslproto": 5,
}


@dataclass(frozen=True)
class Interpreter:
    version: tuple[int, int]
    path: str | None  # None: not installed here

    @property
    def label(self) -> str:
        return "%d.%d" % self.version  # noqa: UP031 - reads better than the f-string


@dataclass(frozen=True)
class Job:
    python: Interpreter
    target: str  # a test.test_asyncio module name, or "mixins"
    loop: str  # "netpoll" | "asyncio"
    poller: str | None = None  # netpoll backend; None = default

    @property
    def id(self) -> str:
        loop = self.loop if self.poller is None else f"{self.loop}-{self.poller}"
        return f"py{self.python.label}-{loop}-{self.target}"

    def argv(self) -> list[str]:
        assert self.python.path is not None
        argv = [self.python.path, "-m", "tests.conformance.run", self.target, "--loop", self.loop]
        if self.poller is not None:
            argv += ["--poller", self.poller]
        return [*argv, "--test-timeout", str(TEST_TIMEOUT)]


@dataclass
class Outcome:
    job: Job
    status: str  # "passed" | "failed" | "missing" | "timeout" | "crashed"
    returncode: int | None = None
    output: str = ""
    seconds: float = 0.0
    summary: dict[str, Any] = field(default_factory=dict)  # the runner's CONFORMANCE-RESULT

    @property
    def ok(self) -> bool:
        return self.status == "passed"

    def headline(self) -> str:
        if self.summary:
            s = self.summary
            return (
                f"{self.job.id}: {self.status}: ran {s['ran']}, failures {s['failures']}, "
                f"errors {s['errors']}, skipped {s['skipped']}, excluded {s['excluded']}, "
                f"{s['loops_created']} loops, {self.seconds:.1f} s"
            )
        return f"{self.job.id}: {self.status} (exit {self.returncode}, {self.seconds:.1f} s)"

    def report(self, max_lines: int = 400) -> str:
        """The headline, the failing ids, then the runner's output (trimmed in the middle)."""
        lines = self.output.splitlines()
        if len(lines) > max_lines:
            cut = len(lines) - max_lines
            lines = [*lines[:50], f"... [{cut} lines cut] ...", *lines[-(max_lines - 50) :]]
        failed = self.summary.get("failed_ids", [])
        return "\n".join([self.headline(), *(f"  {f}" for f in failed), "", *lines])


@cache
def _probe(candidate: str, version: tuple[int, int]) -> str | None:
    path = candidate if os.path.isabs(candidate) else shutil.which(candidate)
    if not path or not os.access(path, os.X_OK):
        return None
    code = "import sys, test.test_asyncio; print('%d.%d' % sys.version_info[:2])"
    try:
        done = subprocess.run(
            [path, "-c", code], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return path if done.stdout.strip() == "%d.%d" % version else None  # noqa: UP031


def interpreters() -> list[Interpreter]:
    """Every interpreter version we test, with the path found for it (or None)."""
    override = os.environ.get("NETPOLL_CONFORMANCE_PYTHONS")
    out = []
    for version, candidates in _CANDIDATES.items():
        options = override.split(",") if override else list(candidates)
        path = next((p for c in options if (p := _probe(c.strip(), version))), None)
        if override and path is None:
            continue  # an explicit list names only what it wants
        out.append(Interpreter(version, path))
    return out


def plan(loops: tuple[str, ...] | None = None) -> list[Job]:
    """The jobs of a full conformance run, in a stable (report) order."""
    if loops is None:
        loops = tuple(os.environ.get("NETPOLL_CONFORMANCE_LOOPS", "netpoll").split(","))
    jobs: list[Job] = []
    for loop in loops:
        for python in interpreters():
            jobs += [Job(python, name, loop) for name in modules_for(python.version)]
            if loop == "netpoll" and python.version == (3, 11):
                jobs.append(Job(python, "mixins", loop, "poll"))
    return jobs


def run_job(job: Job) -> Outcome:
    if job.python.path is None:
        return Outcome(job, "missing")
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    env.pop("NETPOLL_POLLER", None)  # the job says which backend; never inherit one
    started = time.monotonic()
    with subprocess.Popen(
        job.argv(),
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        errors="replace",
    ) as proc:
        try:
            output, _ = proc.communicate(timeout=JOB_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
            return Outcome(job, "timeout", None, output, time.monotonic() - started)
    outcome = Outcome(job, "crashed", proc.returncode, output, time.monotonic() - started)
    for line in output.splitlines():
        if line.startswith(RESULT_MARK):
            outcome.summary = json.loads(line[len(RESULT_MARK) :])
    if outcome.summary:
        outcome.status = "passed" if proc.returncode == 0 else "failed"
    return outcome


class Pool:
    """Runs a set of jobs, ``workers`` at a time, heaviest first; ``result(job)`` waits for one."""

    def __init__(self, jobs: list[Job], workers: int | None = None) -> None:
        if workers is None:
            workers = int(os.environ.get("NETPOLL_CONFORMANCE_JOBS", "2"))
        self.workers = max(1, workers)  # concurrent subprocesses
        self._executor = concurrent.futures.ThreadPoolExecutor(self.workers, "conformance")
        self._futures: dict[Job, concurrent.futures.Future[Outcome]] = {}
        self._lock = threading.Lock()
        for job in sorted(jobs, key=lambda j: -_WEIGHT.get(j.target, 1.0)):
            self._futures[job] = self._executor.submit(run_job, job)

    def __repr__(self) -> str:
        done = sum(f.done() for f in self._futures.values())
        return f"<Pool workers={self.workers} jobs={len(self._futures)} done={done}>"

    def result(self, job: Job) -> Outcome:
        with self._lock:
            future = self._futures.get(job)
            if future is None:  # not planned up front (e.g. selected late): run it now
                future = self._futures[job] = self._executor.submit(run_job, job)
        return future.result()

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
