"""Issue 5's workers benchmark: throughput with 1 and 2 worker processes, and a reload run.

usage: python -m loadtest.workersbench [--workers 1,2] [--duration 5] [--rounds 1]
                                       [--conns 64] [--threads 2] [--loop netpoll]
                                       [--path /plaintext] [--reload SECONDS] [--out FILE]

Method: ``python -m server`` (the demo app; ``--path`` picks the endpoint) is started with
``--workers N --port 0``; its port is read from the supervisor's ``listening on`` log line and
every worker's ``ready`` line is awaited. ``wrk -tTHREADS -cCONNS -dDURATION`` runs against it
(not pinned: the point is to let N workers use N cores, so on this 2-core machine wrk competes
with the workers for CPU - read the numbers as "what 2 workers buy here", not as the scaling
limit). Figures per run: requests/s, wrk errors (socket errors + non-2xx), server CPU
microseconds per request (utime + stime of the whole process tree from ``/proc``), and each
process's RSS, PSS (fork shares pages; PSS splits them fairly) and open fds, taken after the
run. The median over rounds is printed as one table.

``--reload SECONDS`` instead runs one wrk for that long against 2 workers and sends SIGHUP to
the supervisor every 5 s: the table shows wrk's error count across the reloads (the
zero-downtime check of docs/operations.md, a 30 s run: ``--reload 30``).

Every run is bounded by ``--duration`` (or ``--reload``) plus start-up; servers are stopped
with SIGTERM and, failing that, SIGKILL of their process group.
"""

from __future__ import annotations

import argparse
import os
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from loadtest.loopbench import cpu_seconds, parse_wrk, process_tree
from loadtest.runner import stop_process

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Run:
    """One wrk run against one server."""

    workers: int
    rps: float = 0.0
    requests: int = 0
    errors: int = 0
    cpu_us: float = 0.0  # server CPU per request, microseconds
    procs: list[dict[str, int]] = field(default_factory=list)  # per process: rss/pss/fds kB
    reloads: int = 0


def _status_kb(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def memory(pid: int) -> list[dict[str, int]]:
    """RSS, PSS (kB) and fd count of the supervisor (first) and each worker."""
    out = []
    for p in process_tree(pid):
        try:
            fds = len(os.listdir(f"/proc/{p}/fd"))
        except OSError:
            continue
        out.append({"pid": p, "rss": _status_kb(p, "VmRSS"), "pss": _pss_kb(p), "fds": fds})
    return out


class Server:
    """``python -m server`` with N workers in its own process group."""

    def __init__(self, workers: int, loop: str) -> None:
        args = [sys.executable, "-m", "server", "--port", "0", "--loop", loop]
        args += ["--workers", str(workers), "--log-level", "info"]
        if workers == 1:
            args.append("--supervise")  # same process layout as N > 1: supervisor + worker
        self.workers = workers
        self.proc = subprocess.Popen(
            args,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.port = 0
        self._buf = ""

    def __repr__(self) -> str:
        return f"<Server workers={self.workers} pid={self.proc.pid} port={self.port}>"

    def _lines(self, timeout: float) -> list[str]:
        assert self.proc.stderr is not None
        ready, _, _ = select.select([self.proc.stderr], [], [], timeout)
        if not ready:
            return []
        chunk = os.read(self.proc.stderr.fileno(), 65536).decode()
        if not chunk:
            raise RuntimeError(f"server exited: {self._buf[-2000:]}")
        self._buf += chunk
        return chunk.splitlines()

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        ready = 0
        while ready < self.workers or not self.port:
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready: {self._buf[-2000:]}")
            for line in self._lines(0.2):
                if m := re.search(r"listening on http://[^ ]*:(\d+)", line):
                    self.port = int(m.group(1))
                if re.search(r"worker \d+ ready", line):
                    ready += 1

    def drain_log(self) -> None:
        """Read what the server logged so far (keeps its stderr pipe from filling)."""
        while self._lines(0):
            pass

    def stop(self) -> None:
        stop_process(self.proc, 15, leader_only=True)


def wrk(port: int, path: str, a: argparse.Namespace, duration: float) -> subprocess.Popen[str]:
    cmd = ["wrk", f"-t{a.threads}", f"-c{a.conns}", f"-d{int(duration)}s", "--latency"]
    cmd.append(f"http://127.0.0.1:{port}{path}")
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def run_one(workers: int, a: argparse.Namespace) -> Run:
    server = Server(workers, a.loop)
    try:
        server.wait_ready()
        # warm-up: one short run so imports, pools and caches are in place
        subprocess.run(
            ["wrk", "-t1", "-c8", "-d1s", f"http://127.0.0.1:{server.port}{a.path}"],
            capture_output=True,
            timeout=30,
        )
        cpu0 = cpu_seconds(server.proc.pid)
        w = wrk(server.port, a.path, a, a.duration)
        out, _ = w.communicate(timeout=a.duration + 30)
        cpu = cpu_seconds(server.proc.pid) - cpu0
        requests, rps, errors = parse_wrk(out)
        server.drain_log()
        run = Run(workers, rps, requests, errors, cpu / max(requests, 1) * 1e6)
        run.procs = memory(server.proc.pid)
        return run
    finally:
        server.stop()


def run_reload(a: argparse.Namespace) -> Run:
    server = Server(2, a.loop)
    try:
        server.wait_ready()
        w = wrk(server.port, a.path, a, a.reload)
        start = time.monotonic()
        reloads = 0
        while w.poll() is None and time.monotonic() - start < a.reload + 30:
            server.drain_log()
            elapsed = time.monotonic() - start
            if elapsed >= 5 * (reloads + 1) and elapsed < a.reload - 2:
                os.kill(server.proc.pid, signal.SIGHUP)
                reloads += 1
            time.sleep(0.2)
        out, _ = w.communicate(timeout=30)
        requests, rps, errors = parse_wrk(out)
        server.drain_log()
        completes = len(re.findall(r"reload complete", server._buf))
        run = Run(2, rps, requests, errors, reloads=completes)
        run.procs = memory(server.proc.pid)
        if completes != reloads:
            print(f"warning: {reloads} SIGHUPs, {completes} reloads completed", file=sys.stderr)
        print(out)
        return run
    finally:
        server.stop()


def render(runs: dict[int, list[Run]], a: argparse.Namespace) -> str:
    lines = [
        f"workers benchmark: demo app {a.path}, loop={a.loop}, wrk -t{a.threads} -c{a.conns} "
        f"-d{a.duration}s, median of {a.rounds} round(s), {os.cpu_count()} CPUs",
        "",
        "| workers | requests/s | vs 1 | errors | CPU us/req | worker RSS MiB | worker PSS MiB "
        "| worker fds | supervisor RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    base = None
    for n, rs in sorted(runs.items()):
        rps = statistics.median(r.rps for r in rs)
        base = base or rps
        last = rs[-1]
        sup, workers = last.procs[0], last.procs[1:] or [{"rss": 0, "pss": 0, "fds": 0}]
        rss = statistics.mean(p["rss"] for p in workers) / 1024
        pss = statistics.mean(p["pss"] for p in workers) / 1024
        fds = statistics.mean(p["fds"] for p in workers)
        lines.append(
            f"| {n} | {rps:,.0f} | {rps / base:.2f}x | {sum(r.errors for r in rs)} "
            f"| {statistics.median(r.cpu_us for r in rs):.1f} | {rss:.1f} | {pss:.1f} "
            f"| {fds:.0f} | {sup['rss'] / 1024:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.workersbench", description=__doc__)
    p.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    p.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--conns", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--loop", default="netpoll", choices=("netpoll", "uvloop", "asyncio"))
    p.add_argument("--path", default="/plaintext")
    p.add_argument("--reload", type=int, default=0, metavar="SECONDS")
    p.add_argument("--out", help="also write the table to this file")
    a = p.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    if a.reload:
        run = run_reload(a)
        text = (
            f"reload run: {a.reload}s of wrk -t{a.threads} -c{a.conns} on 2 workers, "
            f"SIGHUP every 5 s\n\n| reloads | requests | requests/s | wrk errors |\n"
            f"|---|---|---|---|\n| {run.reloads} | {run.requests:,} | {run.rps:,.0f} "
            f"| {run.errors} |"
        )
    else:
        counts = [int(x) for x in a.workers.split(",") if x.strip()]
        runs: dict[int, list[Run]] = {n: [] for n in counts}
        for _ in range(a.rounds):
            for n in counts:  # alternate within a round so compared runs are close in time
                runs[n].append(run_one(n, a))
        text = render(runs, a)
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
