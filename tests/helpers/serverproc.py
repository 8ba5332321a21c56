"""``python -m server`` in a subprocess, its log lines, and a bounded keep-alive load.

Theory of operation: :class:`ServerProc` starts the CLI in a new session (so the supervisor and
every worker it forks share one process group that teardown can kill as a whole, leaving no
orphans), reads stderr on a thread into a list of lines and lets a test *wait* for a log line
(:meth:`ServerProc.wait_for`) instead of sleeping. The supervisor logs every state change
(``listening on``, ``worker N ready``, ``reload complete``...), so those lines are the
synchronisation points.

:class:`Load` runs a few threads, each with one keep-alive ``http.client`` connection sending
GETs back to back, until :meth:`Load.stop` or its own time limit. Every request either gets a
complete response (recorded with the connection's previous worker pid) or counts as a failure
with the exception; there are no retries, so a lost request shows.
"""

from __future__ import annotations

import http.client
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from loadtest.runner import stop_process

ROOT = Path(__file__).resolve().parents[2]


class ServerProc:
    """A ``python -m server ...`` subprocess (see the module docstring)."""

    def __init__(
        self,
        args: Sequence[str],
        cwd: Path | str | None = None,
        env: dict[str, str] | None = None,
        pass_fds: Sequence[int] = (),
    ) -> None:
        path = os.pathsep.join(p for p in (str(cwd or ""), str(ROOT)) if p)
        full_env = {**os.environ, "PYTHONPATH": path, **(env or {})}
        full_env.pop("NETPOLL_POLLER", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server", *args],
            cwd=cwd or ROOT,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            pass_fds=tuple(pass_fds),
        )
        self.lines: list[str] = []  # stderr so far
        self._cond = threading.Condition()
        self._eof = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def __repr__(self) -> str:
        return f"<ServerProc pid={self.proc.pid} rc={self.proc.poll()} lines={len(self.lines)}>"

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def mark(self) -> int:
        """The index of the next log line (pass as ``start`` to wait for later lines only)."""
        with self._cond:
            return len(self.lines)

    def wait_for(self, pattern: str, start: int = 0, timeout: float = 20.0) -> re.Match[str]:
        """The first log line at index >= ``start`` matching ``pattern``; AssertionError on
        timeout or when the process ends first."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        i = start
        with self._cond:
            while True:
                while i < len(self.lines):
                    m = rx.search(self.lines[i])
                    if m:
                        return m
                    i += 1
                left = deadline - time.monotonic()
                if self._eof or left <= 0:
                    tail = "\n".join(self.lines[-30:])
                    raise AssertionError(f"no log line matching {pattern!r}; last lines:\n{tail}")
                self._cond.wait(left)

    def wait_count(self, pattern: str, n: int, start: int = 0, timeout: float = 20.0) -> list[str]:
        """Wait for ``n`` lines (from ``start``) matching ``pattern``; return them."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [ln for ln in self.lines[start:] if rx.search(ln)]
                if len(found) >= n:
                    return found
                left = deadline - time.monotonic()
                if self._eof or left <= 0:
                    tail = "\n".join(self.lines[-30:])
                    raise AssertionError(f"{len(found)}/{n} lines matching {pattern!r}:\n{tail}")
                self._cond.wait(left)

    def port(self) -> int:
        return int(self.wait_for(r"listening on https?://[^ ]*:(\d+) ").group(1))

    def ready_pids(self, n: int, start: int = 0) -> list[int]:
        lines = self.wait_count(r"worker \d+ ready", n, start)
        return [int(re.search(r"worker (\d+) ready", ln).group(1)) for ln in lines]  # type: ignore[union-attr]

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    def wait(self, timeout: float = 30.0) -> int:
        rc = self.proc.wait(timeout)
        self._reader.join(5)
        return rc

    def text(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def close(self) -> None:
        """Teardown: SIGTERM, then SIGKILL the whole process group (supervisor and workers)."""
        stop_process(self.proc, 10, leader_only=True)  # and SIGKILL to workers left behind
        self._reader.join(5)


@dataclass
class Result:
    """What one load thread saw."""

    ok: int = 0
    bodies: list[str] = field(default_factory=list)  # distinct bodies, in order of first sight
    failures: list[tuple[int, str]] = field(default_factory=list)  # (pid of the conn, error)
    last: str = ""  # the last body


class Load:
    """``threads`` keep-alive clients GETting ``path`` until stopped (or ``limit`` seconds)."""

    def __init__(self, port: int, threads: int = 4, path: str = "/", limit: float = 20.0) -> None:
        self.port = port
        self.path = path
        self.limit = limit  # hard bound on the run, whatever happens
        self.results = [Result() for _ in range(threads)]
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(r,), daemon=True) for r in self.results
        ]
        self._started = threading.Barrier(threads + 1)

    def __repr__(self) -> str:
        return f"<Load threads={len(self._threads)} ok={self.ok} failed={len(self.failures)}>"

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        self._started.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    @property
    def ok(self) -> int:
        return sum(r.ok for r in self.results)

    @property
    def failures(self) -> list[tuple[int, str]]:
        return [f for r in self.results for f in r.failures]

    def bodies(self) -> list[str]:
        return [b for r in self.results for b in r.bodies]

    def wait_ok(self, n: int, timeout: float = 20.0) -> None:
        """Block until at least ``n`` more requests succeeded in total."""
        target = self.ok + n
        deadline = time.monotonic() + timeout
        while self.ok < target:
            if time.monotonic() > deadline:
                raise AssertionError(f"load stalled at {self.ok} of {target} responses")
            time.sleep(0.01)

    def _run(self, r: Result) -> None:
        deadline = time.monotonic() + self.limit
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        pid = 0
        self._started.wait(10)
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                conn.request("GET", self.path)
                resp = conn.getresponse()
                body = resp.read().decode()
                if resp.status != 200:
                    raise RuntimeError(f"status {resp.status}: {body[:80]}")
            except Exception as exc:
                r.failures.append((pid, f"{type(exc).__name__}: {exc}"))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                pid = 0
                continue
            r.ok += 1
            r.last = body
            if body not in r.bodies:
                r.bodies.append(body)
            parts = body.split()
            pid = int(parts[-1]) if parts and parts[-1].isdigit() else 0
        conn.close()
