"""``python -m loadtest soak --minutes N``: a long mixed run that watches for leaks.

Theory of operation
-------------------
1. **Server.** :class:`loadtest.runner.ServerProcess` starts ``python -m server`` with
   ``loadtest.mixed_app`` on a loopback socket (port 0, handed down), or ``--workers N``.
2. **Load**, all against 127.0.0.1 only, all ending by themselves:

   * locust, headless, for exactly the run time, with four user classes of
     ``loadtest/locustfile.py`` at once: ``MixedUser`` (API traffic), ``KeepAliveUser``,
     ``NewConnectionUser`` (a TCP connection per request) and ``StaticLargeUser`` (1 MiB
     static downloads through sendfile);
   * a churn thread here (:class:`Churn`), ``--churn-rate`` actions a second in rotation: a
     well-behaved ``Connection: close`` request (counted: it must succeed), a download reset
     mid-body (RST), a connection opened and closed without a byte, and a garbage request
     (must get 400). Only the well-behaved actions count as failures when they fail.

3. **Samples.** Every ``--interval`` seconds the server's process tree is sampled (psutil):
   resident memory (RSS, summed) and open fds (summed), into ``soak_samples.csv``. Before
   the load and again after it (once keep-alive connections have timed out) the *idle* fd
   count is taken: with no client connected it must come back to where it started, up to the
   few files the open-file cache keeps.
4. **Verdict.** Growth is measured after the warm-up (``--warmup`` minutes, default a tenth of
   the run, at least 1): RSS as the median of the first vs the last ``SPAN`` samples, fds as
   the minimum of each span (samples catch client connections in flight; the minimum is the
   floor). ``soak.png`` plots RSS and fds against minutes with the warm-up marked;
   ``summary.md`` has the figures. Exit 0 only when locust and the churn saw no failed
   well-behaved request, RSS grew by less than ``--max-rss-growth`` MiB and the fd floor and
   the idle count by at most ``--max-fd-growth``.
"""

from __future__ import annotations

import argparse
import csv
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from loadtest.runner import (
    DEFAULT_APP,
    ServerProcess,
    child_processes,
    locust_base,
    read_totals,
    stop_process,
)

USER_CLASSES = ("MixedUser", "KeepAliveUser", "NewConnectionUser", "StaticLargeUser")
SPAN = 10  # samples averaged at each end of the measured interval


@dataclass
class Sample:
    t: float  # seconds since the load started
    rss: int  # bytes, the server's process tree
    fds: int  # open fds, the server's process tree


@dataclass
class ChurnStats:
    ok: int = 0  # well-behaved requests answered correctly
    failed: int = 0  # well-behaved requests that were not
    faults: int = 0  # resets, empty connections and garbage requests sent
    errors: list[str] = field(default_factory=list)  # first few failure descriptions


def tree_usage(pid: int) -> tuple[int, int]:
    """(RSS bytes, open fds) summed over process ``pid`` and its children."""
    import psutil

    rss = fds = 0
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0
    for p in procs:
        try:
            rss += p.memory_info().rss
            fds += p.num_fds()
        except psutil.NoSuchProcess:
            continue
    return rss, fds


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


class Churn:
    """Connection churn and faults from a thread of this process (see the module docstring)."""

    def __init__(self, port: int, rate: float) -> None:
        self.port = port
        self.pause = 1.0 / rate if rate > 0 else 0.0
        self.stats = ChurnStats()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="churn", daemon=True)

    def __repr__(self) -> str:
        s = self.stats
        return f"<Churn port={self.port} ok={s.ok} failed={s.failed} faults={s.faults}>"

    def start(self) -> None:
        if self.pause:
            self.thread.start()

    def join(self) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join(30)

    def _run(self) -> None:
        actions = (self._good, self._reset_download, self._good, self._empty, self._garbage)
        i = 0
        while not self.stop.wait(self.pause):
            action = actions[i % len(actions)]
            i += 1
            try:
                action()
            except Exception as exc:
                if action == self._good or action == self._garbage:
                    self._fail(f"{action.__name__}: {exc!r}")

    def _fail(self, why: str) -> None:
        self.stats.failed += 1
        if len(self.stats.errors) < 10:
            self.stats.errors.append(why)

    def _connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=30)

    def _good(self) -> None:
        with self._connect() as s:
            s.sendall(b"GET /plaintext HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n")
            data = _read_all(s)
        if data.startswith(b"HTTP/1.1 200") and data.endswith(b"Hello, World!"):
            self.stats.ok += 1
        else:
            self._fail(f"good: unexpected response {data[:80]!r}")

    def _reset_download(self) -> None:
        self.stats.faults += 1
        with self._connect() as s:
            s.sendall(b"GET /static/1m.bin HTTP/1.1\r\nHost: soak\r\n\r\n")
            s.recv(16384)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    def _empty(self) -> None:
        self.stats.faults += 1
        with self._connect():
            pass

    def _garbage(self) -> None:
        self.stats.faults += 1
        with self._connect() as s:
            s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http\r\n\r\n")
            data = _read_all(s)
        if not data.startswith(b"HTTP/1.1 400"):
            raise ValueError(f"garbage answered {data[:60]!r}")


def idle_fds(pid: int, settle: float) -> int:
    """Open fds of the server tree once no client is connected (after ``settle`` seconds)."""
    time.sleep(settle)  # keep-alive connections of finished clients time out server-side
    return tree_usage(pid)[1]


def growth(samples: list[Sample], warmup: float) -> dict[str, float]:
    """RSS (median) and fd floor (min) at the start and end of the measured interval."""
    measured = [s for s in samples if s.t >= warmup] or samples
    head, tail = measured[:SPAN], measured[-SPAN:]
    rss0 = statistics.median(s.rss for s in head)
    rss1 = statistics.median(s.rss for s in tail)
    fd0 = min(s.fds for s in head)
    fd1 = min(s.fds for s in tail)
    return {
        "rss_start_mib": rss0 / 2**20,
        "rss_end_mib": rss1 / 2**20,
        "rss_growth_mib": (rss1 - rss0) / 2**20,
        "fd_start": fd0,
        "fd_end": fd1,
        "fd_growth": fd1 - fd0,
        "fd_max": max(s.fds for s in measured),
    }


def plot(samples: list[Sample], warmup: float, out: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [s.t / 60 for s in samples]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    ax1.plot(minutes, [s.rss / 2**20 for s in samples], color="tab:blue")
    ax1.set_ylabel("server RSS (MiB)")
    ax2.plot(minutes, [s.fds for s in samples], color="tab:orange")
    ax2.set_ylabel("server open fds")
    ax2.set_xlabel("minutes")
    for ax in (ax1, ax2):
        ax.axvline(warmup / 60, color="grey", linestyle="--", linewidth=1)
        ax.grid(alpha=0.3)
    ax1.set_title(title)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--minutes", type=float, default=10.0, help="run time (default 10)")
    p.add_argument("--warmup", type=float, help="warm-up minutes (default: a tenth, >= 1)")
    p.add_argument("--users", type=int, default=24, help="locust users over 4 classes")
    p.add_argument("--churn-rate", type=float, default=40.0, help="churn actions per second")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between samples")
    p.add_argument("--app", default=DEFAULT_APP, help=f"server target (default {DEFAULT_APP})")
    p.add_argument("--workers", type=int, default=1, help="server worker processes")
    p.add_argument("--loop", choices=("netpoll", "uvloop", "asyncio"), help="server event loop")
    p.add_argument("--results", type=Path, default=Path("results"), help="results root")
    p.add_argument("--max-rss-growth", type=float, default=8.0, help="MiB allowed (default 8)")
    p.add_argument("--max-fd-growth", type=int, default=8, help="fds allowed (default 8)")


def main(args: argparse.Namespace) -> int:
    duration = args.minutes * 60.0
    warmup = args.warmup * 60.0 if args.warmup is not None else max(60.0, duration / 10)
    warmup = min(warmup, duration / 2)
    out_dir = args.results / f"{datetime.now():%Y%m%d-%H%M%S}-soak"
    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = out_dir / "locust"
    run = ["-u", str(args.users), "-r", str(max(1, args.users)), "-t", f"{round(duration)}s"]
    run += ["--csv", str(prefix), "--stop-timeout", "5", "--exit-code-on-error", "1"]
    run += ["--only-summary"]
    samples: list[Sample] = []
    with ServerProcess(
        args.app, workers=args.workers, loop=args.loop, log=out_dir / "server.log"
    ) as server:
        server.wait_ready()
        pid = server.proc.pid
        idle_before = idle_fds(pid, 0.5)
        print(f"soak: {args.minutes:g} min against {server.url}; results in {out_dir}/")
        churn = Churn(server.port, args.churn_rate)
        with child_processes() as procs:
            cmd = [*locust_base(None, [*run, "--host", server.url]), *USER_CLASSES]
            locust = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL)
            procs.append(locust)
            churn.start()
            start = time.monotonic()
            try:
                while locust.poll() is None and time.monotonic() - start < duration + 90:
                    rss, fds = tree_usage(pid)
                    samples.append(Sample(time.monotonic() - start, rss, fds))
                    locust_wait(locust, args.interval)
            finally:
                churn.join()
                code = stop_process(locust) if locust.poll() is None else locust.returncode
        idle_after = idle_fds(pid, 6.0)
        alive = server.proc.poll() is None
    requests, failures, _ = read_totals(prefix.with_name("locust_stats.csv"))
    g = growth(samples, warmup)
    png = plot(samples, warmup, out_dir / "soak.png", f"soak {args.minutes:g} min: {server.url}")
    with open(out_dir / "soak_samples.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["seconds", "rss_bytes", "fds"])
        w.writerows([round(s.t, 2), s.rss, s.fds] for s in samples)
    ok = (
        alive
        and code == 0
        and failures == 0
        and churn.stats.failed == 0
        and g["rss_growth_mib"] < args.max_rss_growth
        and g["fd_growth"] <= args.max_fd_growth
        and idle_after - idle_before <= args.max_fd_growth
    )
    lines = [
        f"# soak: {args.minutes:g} minutes, warm-up {warmup / 60:.1f} min, {len(samples)} samples",
        "",
        f"- verdict: {'OK' if ok else 'FAILED'} (server alive: {alive}, locust exit {code})",
        f"- locust: {requests} requests, {failures} failures ({', '.join(USER_CLASSES)})",
        f"- churn: {churn.stats.ok} good requests, {churn.stats.failed} failed, "
        f"{churn.stats.faults} faults injected {churn.stats.errors or ''}",
        f"- RSS after warm-up {g['rss_start_mib']:.1f} MiB, at the end {g['rss_end_mib']:.1f} "
        f"MiB: growth {g['rss_growth_mib']:+.2f} MiB",
        f"- open fds (floor) after warm-up {g['fd_start']:.0f}, at the end {g['fd_end']:.0f}: "
        f"growth {g['fd_growth']:+.0f} (peak {g['fd_max']:.0f})",
        f"- idle fds before the load {idle_before}, after it {idle_after}",
        f"- plot: {png}",
    ]
    text = "\n".join(lines) + "\n"
    (out_dir / "summary.md").write_text(text)
    print(text)
    return 0 if ok else 1


def locust_wait(proc: subprocess.Popen[Any], seconds: float) -> None:
    """Sleep until the next sample is due, or until locust exits."""
    try:
        proc.wait(seconds)
    except subprocess.TimeoutExpired:
        pass


if __name__ == "__main__":  # pragma: no cover - normally run as ``python -m loadtest soak``
    from loadtest.cli import main as cli_main

    sys.exit(cli_main(["soak", *sys.argv[1:]]))
