"""Issue 2's loop benchmark: the same minimal protocol server on netpoll, uvloop and stock asyncio.

usage: python -m loadtest.loopbench [--rounds 3] [--duration 4] [--conns 64] [--out FILE]
                                    [--loops netpoll,uvloop,asyncio] [--no-raw] [--warmup 1]

Method (see DESIGN.md, "How we measure speed"): each server (``loadtest/proto_server.py``) runs
pinned to CPU 0 with ``taskset -c 0``; ``wrk -t1 -cCONNS`` runs pinned to CPU 1, once plain
keep-alive and once pipelined x16 (a wrk Lua script that sends 16 requests per write, the
TechEmpower plaintext shape). Servers take turns inside each round so the runs being compared are
close together in time; each figure is the median over rounds. Two figures per run:

- requests/s as wrk reports it (on a 2-core machine this largely measures wrk), and
- server CPU microseconds per request: utime + stime of the server's whole process tree, read
  from ``/proc`` before and after the wrk run, divided by the requests wrk completed.

Both are also shown as a ratio to uvloop (rps: higher is better; CPU: lower is better). For the
netpoll runs the server appends ``loop.stats()`` to a JSON file on SIGUSR1 (sent just before wrk
starts) and SIGTERM (after it ends); the difference between the two is the measured window, and
the summary shows writes and reads per request, buffers per sendmsg and events per poll.
``raw-epoll`` is a reference floor (a bare epoll loop, no asyncio), not a competitor.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TICK = os.sysconf("SC_CLK_TCK")
MODES = {"keep-alive": 1, "pipelined x16": 16}
LUA = """
init = function(args)
  local r = {}
  for i = 1, %d do r[i] = wrk.format(nil, "/") end
  req = table.concat(r)
end
request = function() return req end
"""


@dataclass
class Run:
    """One wrk run against one server."""

    rps: float
    requests: int
    cpu_us_per_req: float
    errors: int
    stats: dict[str, float] | None  # netpoll's counter deltas over the wrk window


@dataclass
class Series:
    """All rounds of one (server, mode) pair."""

    server: str
    mode: str
    runs: list[Run] = field(default_factory=list)
    failures: int = 0

    def __repr__(self) -> str:
        return f"<Series {self.server} {self.mode} runs={len(self.runs)} failed={self.failures}>"

    def median(self, attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in self.runs)


# ------------------------------------------------------------------ /proc accounting


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (from /proc/PID/task/*/children)."""
    out = [pid]
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                children = f.read().split()
        except OSError:
            continue
        for child in children:
            out += process_tree(int(child))
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of ``pid``'s process tree, in seconds."""
    ticks = 0
    for p in process_tree(pid):
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{p}/task/{tid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            ticks += int(fields[11]) + int(fields[12])
    return ticks / TICK


# ------------------------------------------------------------------ running one server


def parse_wrk(out: str) -> tuple[int, float, int]:
    """(requests, requests/s, errors) from wrk's text output."""
    requests, rps, errors = 0, 0.0, 0
    for line in out.splitlines():
        line = line.strip()
        if " requests in " in line:
            requests = int(line.split()[0])
        elif line.startswith("Requests/sec:"):
            rps = float(line.split()[1])
        elif line.startswith(("Socket errors:", "Non-2xx")):
            errors += sum(int(x) for x in line.replace(",", " ").split() if x.isdigit())
    return requests, rps, errors


def _stats_lines(path: Path) -> list[dict[str, Any] | None]:
    try:
        return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    except (OSError, ValueError):
        return []


def _wait_lines(path: Path, n: int, timeout: float = 5.0) -> list[dict[str, Any] | None]:
    deadline = time.monotonic() + timeout
    while True:
        lines = _stats_lines(path)
        if len(lines) >= n or time.monotonic() > deadline:
            return lines
        time.sleep(0.01)


def _delta(a: dict[str, Any] | None, b: dict[str, Any] | None) -> dict[str, float] | None:
    if not a or not b:
        return None
    return {k: b[k] - a[k] for k in b if isinstance(b[k], (int, float)) and k in a}


def run_one(server: str, depth: int, a: argparse.Namespace, tmp: Path) -> Run | None:
    stats_path = tmp / f"{server}-{depth}.jsonl"
    stats_path.unlink(missing_ok=True)
    pin = ["taskset", "-c", "0"] if a.pin else []
    log = open(tmp / f"{server}.log", "a")  # closed in finally
    cmd = [sys.executable, "-m", "loadtest.proto_server", server, "0", "--stats", str(stats_path)]
    proc = subprocess.Popen(
        [*pin, *cmd],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        start_new_session=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            return None
        port = json.loads(line)["port"]
        url = f"http://127.0.0.1:{port}/"
        with urllib.request.urlopen(url, timeout=5) as r:
            if r.read() != b"Hello, World!":
                return None
        wrk = ["taskset", "-c", "1"] if a.pin else []
        wrk += ["wrk", "-t1", f"-c{a.conns}"]
        if depth > 1:
            lua = tmp / f"pipeline-{depth}.lua"
            lua.write_text(LUA % depth)
            wrk += ["-s", str(lua)]
        if a.warmup > 0:
            subprocess.run([*wrk, f"-d{a.warmup}s", url], capture_output=True, check=False)
        os.kill(proc.pid, signal.SIGUSR1)
        before_stats = _wait_lines(stats_path, 1)
        c0 = cpu_seconds(proc.pid)
        out = subprocess.run(
            [*wrk, f"-d{a.duration}s", url], capture_output=True, text=True, check=False
        ).stdout
        c1 = cpu_seconds(proc.pid)
        requests, rps, errors = parse_wrk(out)
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(10)
        lines = _wait_lines(stats_path, 2)
        if not requests:
            return None
        stats = _delta(
            before_stats[0] if before_stats else None, lines[1] if len(lines) > 1 else None
        )
        return Run(rps, requests, (c1 - c0) * 1e6 / requests, errors, stats)
    finally:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        log.close()


# ------------------------------------------------------------------ report


def _ratio(x: float, ref: float | None) -> str:
    return f"{x / ref:.2f}" if ref else "-"


def render(results: dict[tuple[str, str], Series], a: argparse.Namespace) -> str:
    lines = [
        f"### Loop benchmark: proto_server, wrk -t1 -c{a.conns}, {a.duration} s x {a.rounds} "
        f"rounds (median){'' if a.pin else ', NOT pinned'}",
        "",
        "| mode | server | requests/s | rps vs uvloop | server CPU µs/req | CPU vs uvloop | wrk errors |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for mode in MODES:
        ref = results.get(("uvloop", mode))
        ref_rps = ref.median("rps") if ref and ref.runs else None
        ref_cpu = ref.median("cpu_us_per_req") if ref and ref.runs else None
        for server in a.servers:
            s = results[(server, mode)]
            if not s.runs:
                lines.append(f"| {mode} | {server} | FAILED | | | | |")
                continue
            rps, cpu = s.median("rps"), s.median("cpu_us_per_req")
            errors = sum(r.errors for r in s.runs)
            lines.append(
                f"| {mode} | {server} | {rps:,.0f} | {_ratio(rps, ref_rps)} | {cpu:.2f} "
                f"| {_ratio(cpu, ref_cpu)} | {errors} |"
            )
    lines += [
        "",
        "`loop.stats()` over the measured window (netpoll; raw-epoll counts its own syscalls), "
        "median of rounds:",
        "",
    ]
    lines += [
        "| mode | server | reads/req | writes/req | iovecs/write | events/poll | turns/req | bytes out/req |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for mode in MODES:
        for server in a.servers:
            s = results[(server, mode)]
            deltas = [(r.stats, r.requests) for r in s.runs if r.stats]
            if not deltas:
                continue

            def cell(fn: Any, fmt: str, deltas: list[tuple[dict[str, float], int]] = deltas) -> str:
                values = [fn(d, n) for d, n in deltas]
                values = [v for v in values if v is not None]
                return format(statistics.median(values), fmt) if values else "-"

            def per(k: str) -> Any:
                return lambda d, n: d[k] / n if k in d and n else None

            def div(k: str, j: str) -> Any:
                return lambda d, n: d[k] / d[j] if k in d and d.get(j) else None

            lines.append(
                f"| {mode} | {server} | {cell(per('reads'), '.3f')} | {cell(per('writes'), '.3f')} "
                f"| {cell(div('iovecs', 'writes'), '.2f')} | {cell(div('events', 'polls'), '.2f')} "
                f"| {cell(per('turns'), '.3f')} | {cell(per('bytes_out'), '.1f')} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=4, help="seconds per wrk run")
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--warmup", type=float, default=1.0, help="seconds of wrk before measuring")
    ap.add_argument("--loops", default="netpoll,uvloop,asyncio")
    ap.add_argument("--no-raw", action="store_true", help="leave out the raw-epoll floor")
    ap.add_argument("--out", help="also write the markdown table here")
    a = ap.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    a.pin = shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
    if not a.pin:
        print("warning: fewer than 2 CPUs or no taskset: runs are not pinned", file=sys.stderr)
    a.servers = [s for s in a.loops.split(",") if s] + ([] if a.no_raw else ["raw-epoll"])
    results = {(s, m): Series(s, m) for s in a.servers for m in MODES}
    with tempfile.TemporaryDirectory(prefix="loopbench-") as d:
        tmp = Path(d)
        for r in range(a.rounds):
            for mode, depth in MODES.items():
                for server in a.servers:
                    run = run_one(server, depth, a, tmp)
                    series = results[(server, mode)]
                    if run is None:
                        series.failures += 1
                        log = (tmp / f"{server}.log").read_text()[-2000:]
                        print(f"{server} {mode} round {r + 1}: FAILED\n{log}", file=sys.stderr)
                        continue
                    series.runs.append(run)
                    print(
                        f"round {r + 1} {mode:14} {server:12} {run.rps:>12,.0f} rps "
                        f"{run.cpu_us_per_req:6.2f} µs/req errors={run.errors}",
                        file=sys.stderr,
                    )
    table = render(results, a)
    sys.stdout.write(table)
    if a.out:
        Path(a.out).write_text(table)
    return 0 if all(s.runs for s in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
