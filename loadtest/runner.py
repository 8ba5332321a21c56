"""``python -m loadtest run``: start a server, run a locust scenario headless, write the report.

Theory of operation
-------------------
1. **Target.** Unless ``--target URL`` is given, :class:`ServerProcess` starts
   ``python -m server APP --fd N`` on a listening socket this process bound to
   ``127.0.0.1:0`` and handed down (so the port is known before the server starts and no
   other program can take it), then polls ``GET /plaintext`` until the server answers.
2. **Locust.** The scenario name picks a user class of ``loadtest/locustfile.py``
   (:data:`SCENARIOS`). Locust runs headless, printing its stats table as it goes (the
   progress display), with ``--csv-full-history`` and ``--html`` into the results directory.
   ``--processes N`` starts one locust master and N worker processes here (one per core);
   the master binds port 0 and :func:`listening_port` reads the port back from the kernel.
   ``--master`` / ``--worker`` run one side of a distributed run across machines.
3. **Report.** :func:`loadtest.report.write_run_report` turns the CSVs into PNG plots
   (requests/s and p50/p95/p99 latency over time) and a ``summary.md``.
4. **Verdict.** The exit status is 0 only when locust exited 0 (locust itself exits 1 on any
   failed request), at least one request was made and no request failed. The totals printed
   come from locust's last CSV flush (up to a second before the end); locust's own final
   summary above them and the HTML report count everything.

Every child process is started in its own session and stopped (SIGTERM, then SIGKILL) in a
``finally``, and every wait is bounded, so a run always ends by itself.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
DEFAULT_APP = "loadtest.mixed_app:app"

#: scenario -> locust user class in loadtest/locustfile.py (kept in step by a test; the runner
#: does not import locust itself, which would monkey-patch this process with gevent).
SCENARIOS: dict[str, str] = {
    "plaintext": "PlaintextUser",
    "json": "JsonUser",
    "static-small": "StaticSmallUser",
    "static-large": "StaticLargeUser",
    "mixed": "MixedUser",
    "keepalive": "KeepAliveUser",
    "newconn": "NewConnectionUser",
    "slow": "SlowClientUser",
}


def parse_duration(text: str) -> float:
    """``"60s"``, ``"2m"``, ``"1h30m"``, ``"45"`` -> seconds."""
    text = text.strip().lower()
    if not text:
        raise ValueError("empty duration")
    if text.replace(".", "", 1).isdigit():
        return float(text)
    total, number = 0.0, ""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0}
    for ch in text:
        if ch.isdigit() or ch == ".":
            number += ch
        elif ch in units and number:
            total += float(number) * units[ch]
            number = ""
        else:
            raise ValueError(f"bad duration {text!r} (use e.g. 20s, 2m, 1h30m)")
    if number:
        raise ValueError(f"bad duration {text!r}: trailing number without unit")
    return total


def listen_socket(host: str = "127.0.0.1") -> socket.socket:
    """A listening TCP socket on ``host``, port chosen by the kernel (inheritable)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def wait_http(url: str, proc: subprocess.Popen[Any] | None = None, timeout: float = 20.0) -> None:
    """Poll ``url`` until it answers (any HTTP status); raise if ``proc`` dies or time runs out."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"process exited with status {proc.returncode} before {url} answered"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                resp.read()
            return
        except urllib.error.HTTPError:
            return
        except OSError as exc:
            last = exc
            time.sleep(0.05)  # polling a process we do not control; no event to wait on
    raise TimeoutError(f"{url} did not answer within {timeout:.0f}s ({last})")


def listening_port(pid: int, timeout: float = 15.0) -> int:
    """The TCP port process ``pid`` listens on (read from the kernel via psutil)."""
    import psutil

    proc = psutil.Process(pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for conn in proc.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr:
                return int(conn.laddr.port)
        if not proc.is_running():
            break
        time.sleep(0.05)
    raise TimeoutError(f"process {pid} did not listen within {timeout:.0f}s")


def stop_process(
    proc: subprocess.Popen[Any], grace: float = 10.0, *, leader_only: bool = False
) -> int:
    """Stop ``proc`` and everything in its process group; return its exit status.

    SIGTERM goes to the whole group, or with ``leader_only`` to ``proc`` alone (a supervisor
    that stops its own workers); after ``grace`` seconds, or with ``leader_only`` in any case
    (workers left behind), the group gets SIGKILL. Nothing of it outlives the call.
    """
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if leader_only:
                proc.send_signal(signal.SIGTERM)
            else:
                os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
    if leader_only or proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return proc.returncode


class ServerProcess:
    """``python -m server APP`` on an inherited socket bound to ``host``:0; a context manager."""

    def __init__(
        self,
        app: str = DEFAULT_APP,
        *,
        workers: int = 1,
        loop: str | None = None,
        extra: Sequence[str] = (),
        log: Path | None = None,
        host: str = "127.0.0.1",
        env: dict[str, str] | None = None,
    ) -> None:
        self.app = app
        self.sock = listen_socket(host)
        self.port: int = self.sock.getsockname()[1]  # fixed before the server starts
        self.url = f"http://{host}:{self.port}"
        cmd = [sys.executable, "-m", "server", app, "--fd", str(self.sock.fileno())]
        cmd += ["--workers", str(workers), "--log-level", "warning"]
        if loop:
            cmd += ["--loop", loop]
        cmd += list(extra)
        self.cmd = cmd
        self._log: IO[bytes] | int = open(log, "wb") if log else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            cmd,
            pass_fds=(self.sock.fileno(),),
            stdout=self._log,
            stderr=self._log,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )

    def wait_ready(self, timeout: float = 20.0) -> ServerProcess:
        wait_http(self.url + "/plaintext", self.proc, timeout)
        return self

    def stop(self) -> int:
        status = stop_process(self.proc)
        self.sock.close()
        if not isinstance(self._log, int):
            self._log.close()
        return status

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.proc.poll() is None else f"exited {self.proc.returncode}"
        return f"<ServerProcess {self.app} pid={self.proc.pid} {self.url} {state}>"


@dataclass
class RunResult:
    """What one ``run`` produced."""

    out_dir: Path
    exit_code: int  # locust's own exit status
    requests: int  # total requests, all endpoints
    failures: int  # total failed requests
    rps: float  # mean requests/s over the run

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.requests > 0 and self.failures == 0


def locust_base(scenario: str | None, extra: Sequence[str] = ()) -> list[str]:
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless"]
    cmd += ["--loglevel", "WARNING", *extra]
    if scenario is not None:
        cmd.append(SCENARIOS[scenario])
    return cmd


def read_totals(stats_csv: Path) -> tuple[int, int, float]:
    """(requests, failures, requests/s) of a run: the final totals the locustfile writes when
    locust quits (``PREFIX_totals.json`` beside ``PREFIX_stats.csv``: the same figures as
    locust's final table), else the ``Aggregated`` row of the stats CSV (written once a
    second, so it may miss the run's last requests)."""
    totals = stats_csv.with_name(stats_csv.name.removesuffix("_stats.csv") + "_totals.json")
    if totals.exists():
        with open(totals) as t:
            got = json.load(t)
        return int(got["requests"]), int(got["failures"]), float(got["rps"])
    with open(stats_csv, newline="") as f:
        for row in csv.DictReader(f):
            if row.get("Name") == "Aggregated":
                return (
                    int(row["Request Count"]),
                    int(row["Failure Count"]),
                    float(row["Requests/s"] or 0.0),
                )
    return 0, 0, 0.0


@contextlib.contextmanager
def child_processes() -> Iterator[list[subprocess.Popen[Any]]]:
    procs: list[subprocess.Popen[Any]] = []
    try:
        yield procs
    finally:
        for p in reversed(procs):
            stop_process(p, grace=5.0)


def run_scenario(
    scenario: str,
    *,
    users: int,
    duration: float,
    target: str | None = None,
    processes: int = 0,
    spawn_rate: float | None = None,
    results: Path = Path("results"),
    app: str = DEFAULT_APP,
    server_workers: int = 1,
    loop: str | None = None,
    master: bool = False,
    expect_workers: int = 1,
    master_bind_port: int = 5557,
    quiet: bool = False,
) -> RunResult:
    """Run one scenario to completion and write its report; never raises on request failures."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = results / f"{stamp}-{scenario}"
    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = out_dir / "locust"
    rate = spawn_rate or float(max(1, users))
    run_args = ["-u", str(users), "-r", str(rate), "-t", f"{max(1, round(duration))}s"]
    run_args += ["--csv", str(prefix), "--csv-full-history", "--html", str(out_dir / "report.html")]
    run_args += ["--stop-timeout", "5", "--exit-code-on-error", "1"]
    if quiet:
        run_args.append("--only-summary")
    server: ServerProcess | None = None
    bound = duration + 90.0  # hard bound on the locust master's wall time
    try:
        if target is None:
            server = ServerProcess(
                app, workers=server_workers, loop=loop, log=out_dir / "server.log"
            )
            server.wait_ready()
            target = server.url
        print(f"loadtest: {scenario} with {users} users for {duration:.0f}s against {target}")
        print(f"loadtest: results in {out_dir}/", flush=True)
        with child_processes() as procs:
            if processes > 0 or master:
                n = processes if processes > 0 else expect_workers
                port = 0 if processes > 0 else master_bind_port
                bind_host = "127.0.0.1" if processes > 0 else "*"
                cmd = locust_base(scenario, [*run_args, "--host", target, "--master"])
                cmd += ["--master-bind-host", bind_host, "--master-bind-port", str(port)]
                cmd += ["--expect-workers", str(n), "--expect-workers-max-wait", "30"]
                main = subprocess.Popen(cmd, start_new_session=True)
                procs.append(main)
                if processes > 0:
                    port = listening_port(main.pid)
                    for _ in range(processes):
                        wcmd = locust_base(scenario, ["--worker", "--master-host", "127.0.0.1"])
                        wcmd += ["--master-port", str(port)]
                        procs.append(subprocess.Popen(wcmd, start_new_session=True))
                else:
                    print(f"loadtest: waiting for {n} worker(s) on port {port} (up to 30s)")
            else:
                main = subprocess.Popen(
                    locust_base(scenario, [*run_args, "--host", target]), start_new_session=True
                )
                procs.append(main)
            try:
                code = main.wait(bound)
            except subprocess.TimeoutExpired:
                print("loadtest: locust did not stop in time; killing it", file=sys.stderr)
                stop_process(main)
                code = 124
    finally:
        if server is not None:
            server.stop()
    stats_csv = prefix.with_name("locust_stats.csv")
    requests, failures, rps = read_totals(stats_csv) if stats_csv.exists() else (0, 0, 0.0)
    result = RunResult(out_dir, code, requests, failures, rps)
    from loadtest import report

    try:
        report.write_run_report(out_dir, scenario, users=users, duration=duration, target=target)
    except Exception as exc:  # a broken plot must not hide the run's verdict
        print(f"loadtest: could not draw the plots: {exc!r}", file=sys.stderr)
    verdict = "OK" if result.ok else "FAILED"
    print(
        f"loadtest: {verdict}: {requests} requests, {failures} failures, {rps:.0f} req/s "
        f"(locust exit {code}); report: {out_dir / 'report.html'}"
    )
    return result


def run_worker(scenario: str | None, master_host: str, master_port: int) -> int:
    """One locust worker for a master on another machine; returns locust's exit status."""
    cmd = locust_base(scenario, ["--worker", "--master-host", master_host])
    cmd += ["--master-port", str(master_port)]
    with child_processes() as procs:
        proc = subprocess.Popen(cmd, start_new_session=True)
        procs.append(proc)
        return proc.wait()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scenario", choices=sorted(SCENARIOS), default="mixed")
    p.add_argument("--users", type=int, default=50, help="concurrent locust users (default 50)")
    p.add_argument(
        "--spawn-rate", type=float, help="users started per second (default: all at once)"
    )
    p.add_argument("--duration", default="60s", help="run time, e.g. 20s, 2m (default 60s)")
    p.add_argument("--target", help="URL of a running server (default: start one here)")
    p.add_argument(
        "--processes",
        type=int,
        default=0,
        help="locust worker processes here; -1: one per CPU core",
    )
    p.add_argument("--app", default=DEFAULT_APP, help=f"server target (default {DEFAULT_APP})")
    p.add_argument("--server-workers", type=int, default=1, help="server worker processes")
    p.add_argument("--loop", choices=("netpoll", "uvloop", "asyncio"), help="server event loop")
    p.add_argument("--results", type=Path, default=Path("results"), help="results root directory")
    p.add_argument("--quiet", action="store_true", help="print only locust's final summary")
    dist = p.add_argument_group("several machines")
    dist.add_argument("--master", action="store_true", help="be the master; wait for workers")
    dist.add_argument("--expect-workers", type=int, default=1)
    dist.add_argument("--master-bind-port", type=int, default=5557)
    dist.add_argument("--worker", action="store_true", help="be a worker of --master-host")
    dist.add_argument("--master-host", default="127.0.0.1")
    dist.add_argument("--master-port", type=int, default=5557)


def main(args: argparse.Namespace) -> int:
    try:
        duration = parse_duration(args.duration)
    except ValueError as exc:
        print(f"loadtest run: error: {exc}", file=sys.stderr)
        return 2
    if args.worker:
        return run_worker(args.scenario, args.master_host, args.master_port)
    processes = (os.cpu_count() or 1) if args.processes == -1 else max(0, args.processes)
    result = run_scenario(
        args.scenario,
        users=args.users,
        duration=duration,
        target=args.target,
        processes=processes,
        spawn_rate=args.spawn_rate,
        results=args.results,
        app=args.app,
        server_workers=args.server_workers,
        loop=args.loop,
        master=args.master,
        expect_workers=args.expect_workers,
        master_bind_port=args.master_bind_port,
        quiet=args.quiet,
    )
    return 0 if result.ok else 1
