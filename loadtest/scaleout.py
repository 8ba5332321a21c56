"""``python -m loadtest scaleout``: the docker/compose.yaml topology, on loopback, with real processes.

Theory of operation
-------------------
::

    locust worker ─┐                     ┌─► python -m server loadtest.mixed_app:app  (1)
    locust worker ─┼─► locust master     │
                   └──── HTTP ──► HAProxy ┴─► python -m server loadtest.mixed_app:app  (2)

* **Servers.** N (default 2) :class:`~loadtest.runner.ServerProcess` es, each on a socket this
  process bound to ``127.0.0.1:0`` and handed down, so every port is known up front.
* **HAProxy** runs ``docker/haproxy.cfg`` itself, rendered by :func:`render_haproxy`: each block
  that starts with a ``# scaleout: NAME`` comment and runs to the next blank line is replaced
  (``bind`` and ``stats`` by ``bind fd@N`` on inherited sockets, ``servers`` by one
  ``server`` line per local backend, ``resolvers`` by nothing). Everything else (balancing,
  timeouts, keep-alive, health checks) is exactly what the containers run.
* **Locust.** One master bound to port 0 (the port is read back from the kernel with
  :func:`~loadtest.runner.listening_port`) and two workers, running the ``mixed`` scenario
  headless against HAProxy for a short, fixed time.
* **Verdict** (:class:`ScaleoutResult`): locust exited 0, made requests, none failed, and each
  server's own ``GET /__stats`` counter shows it served at least ``min_share`` of the requests
  the servers saw (round-robin gives each about half). HAProxy's per-server session counts
  (its stats CSV) are reported alongside.

Every process runs in its own session and is stopped in a ``finally``; all waits are bounded.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from loadtest.runner import (
    ServerProcess,
    child_processes,
    listen_socket,
    listening_port,
    locust_base,
    read_totals,
    stop_process,
    wait_http,
)

HAPROXY_CFG = Path(__file__).resolve().parent.parent / "docker" / "haproxy.cfg"
MARK = "# scaleout:"


def render_haproxy(template: str, replacements: dict[str, list[str]]) -> str:
    """Replace each ``# scaleout: NAME`` block (to the next blank line) by ``replacements[NAME]``.

    Raises ``KeyError`` for a block without a replacement and ``ValueError`` when a replacement
    finds no block, so the template and this script cannot drift apart silently.
    """
    out: list[str] = []
    used: set[str] = set()
    skipping = False
    for line in template.splitlines():
        stripped = line.strip()
        if skipping:
            if stripped:
                continue
            skipping = False
        if stripped.startswith(MARK):
            name = stripped[len(MARK) :].strip()
            indent = line[: len(line) - len(line.lstrip())]
            out += [indent + r for r in replacements[name]]
            used.add(name)
            skipping = True
            continue
        out.append(line)
    missing = set(replacements) - used
    if missing:
        raise ValueError(f"no '# scaleout:' block for {sorted(missing)}")
    return "\n".join(out) + "\n"


def _get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return dict(json.loads(resp.read()))


def haproxy_sessions(stats_url: str) -> dict[str, int]:
    """Total sessions per backend server from HAProxy's stats CSV."""
    with urllib.request.urlopen(stats_url + ";csv", timeout=5) as resp:
        text = resp.read().decode().lstrip("# ")
    counts: dict[str, int] = {}
    for row in csv.DictReader(io.StringIO(text)):
        if row.get("pxname") == "web" and row.get("svname") not in ("FRONTEND", "BACKEND"):
            counts[row["svname"]] = int(row.get("stot") or 0)
    return counts


@dataclass
class ScaleoutResult:
    """The outcome of one scale-out run."""

    out_dir: Path
    locust_exit: int
    requests: int  # locust's total
    failures: int  # locust's failed requests
    per_server: dict[str, int] = field(default_factory=dict)  # url -> its /__stats count
    pids: dict[str, int] = field(default_factory=dict)  # url -> pid reported by /__stats
    haproxy: dict[str, int] = field(default_factory=dict)  # HAProxy server -> sessions
    min_share: float = 0.2

    @property
    def balanced(self) -> bool:
        total = sum(self.per_server.values())
        return (
            total > 0
            and len(set(self.pids.values())) == len(self.pids)
            and all(c >= self.min_share * total for c in self.per_server.values())
        )

    @property
    def ok(self) -> bool:
        return self.locust_exit == 0 and self.requests > 0 and self.failures == 0 and self.balanced

    def summary(self) -> str:
        per = ", ".join(f"{u}: {c}" for u, c in self.per_server.items())
        return (
            f"scaleout: {'OK' if self.ok else 'FAILED'}: {self.requests} requests, "
            f"{self.failures} failures (locust exit {self.locust_exit}); per server: {per}; "
            f"haproxy sessions: {self.haproxy}"
        )


def run_scaleout(
    *,
    servers: int = 2,
    workers: int = 2,
    users: int = 20,
    duration: int = 10,
    results: Path = Path("results"),
    min_share: float = 0.2,
    haproxy: str | None = None,
) -> ScaleoutResult:
    """Stand the topology up, run the mixed scenario through it, tear it down."""
    haproxy_bin = haproxy or shutil.which("haproxy")
    if haproxy_bin is None:
        raise FileNotFoundError("haproxy is not installed (apt-get install haproxy)")
    out_dir = results / f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-scaleout"
    out_dir.mkdir(parents=True, exist_ok=True)
    backends: list[ServerProcess] = []
    front = listen_socket()
    stats = listen_socket()
    front_url = f"http://127.0.0.1:{front.getsockname()[1]}"
    stats_url = f"http://127.0.0.1:{stats.getsockname()[1]}/stats"
    code = 1
    try:
        for i in range(servers):
            backends.append(ServerProcess(log=out_dir / f"server{i + 1}.log"))
        for b in backends:
            b.wait_ready()
        cfg = render_haproxy(
            HAPROXY_CFG.read_text(),
            {
                "resolvers": [],
                "bind": [f"bind fd@{front.fileno()}"],
                "stats": [f"bind fd@{stats.fileno()}"],
                "servers": [
                    f"server web{i + 1} 127.0.0.1:{b.port} check" for i, b in enumerate(backends)
                ],
            },
        )
        (out_dir / "haproxy.cfg").write_text(cfg)
        with child_processes() as procs, open(out_dir / "haproxy.log", "wb") as hlog:
            # -n: the file's maxconn (20000) needs ~40k fds, more than a default ulimit here.
            hap = subprocess.Popen(
                [haproxy_bin, "-db", "-n", "4096", "-f", str(out_dir / "haproxy.cfg")],
                pass_fds=(front.fileno(), stats.fileno()),
                stdout=hlog,
                stderr=hlog,
                start_new_session=True,
            )
            procs.append(hap)
            wait_http(front_url + "/plaintext", hap)
            prefix = out_dir / "locust"
            cmd = locust_base("mixed", ["--host", front_url, "--master"])
            cmd += ["--master-bind-host", "127.0.0.1", "--master-bind-port", "0"]
            cmd += ["--expect-workers", str(workers), "--expect-workers-max-wait", "30"]
            cmd += ["-u", str(users), "-r", str(users), "-t", f"{duration}s", "--only-summary"]
            cmd += ["--csv", str(prefix), "--html", str(out_dir / "report.html")]
            cmd += ["--stop-timeout", "5", "--exit-code-on-error", "1"]
            with open(out_dir / "locust.log", "wb") as llog:
                master = subprocess.Popen(cmd, stdout=llog, stderr=llog, start_new_session=True)
                procs.append(master)
                port = listening_port(master.pid)
                for _ in range(workers):
                    wcmd = locust_base("mixed", ["--worker", "--master-host", "127.0.0.1"])
                    wcmd += ["--master-port", str(port)]
                    procs.append(
                        subprocess.Popen(wcmd, stdout=llog, stderr=llog, start_new_session=True)
                    )
                try:
                    code = master.wait(duration + 60)
                except subprocess.TimeoutExpired:
                    stop_process(master)
                    code = 124
            requests, failures, _ = read_totals(prefix.with_name("locust_stats.csv"))
            result = ScaleoutResult(out_dir, code, requests, failures, min_share=min_share)
            for b in backends:
                info = _get_json(b.url + "/__stats")
                result.per_server[b.url] = int(info["requests"])
                result.pids[b.url] = int(info["pid"])
            result.haproxy = haproxy_sessions(stats_url)
    finally:
        for b in backends:
            b.stop()
        front.close()
        stats.close()
    (out_dir / "scaleout.json").write_text(
        json.dumps(
            {
                "ok": result.ok,
                "locust_exit": result.locust_exit,
                "requests": result.requests,
                "failures": result.failures,
                "per_server": result.per_server,
                "pids": result.pids,
                "haproxy_sessions": result.haproxy,
            },
            indent=2,
        )
    )
    return result


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--servers", type=int, default=2, help="server processes behind HAProxy")
    p.add_argument("--workers", type=int, default=2, help="locust worker processes")
    p.add_argument("--users", type=int, default=20)
    p.add_argument("--duration", type=int, default=10, help="seconds of load (default 10)")
    p.add_argument("--results", type=Path, default=Path("results"))
    p.add_argument("--haproxy", help="haproxy binary (default: from PATH)")


def main(args: argparse.Namespace) -> int:
    try:
        result = run_scaleout(
            servers=args.servers,
            workers=args.workers,
            users=args.users,
            duration=args.duration,
            results=args.results,
            haproxy=args.haproxy,
        )
    except FileNotFoundError as exc:
        print(f"loadtest scaleout: error: {exc}", file=sys.stderr)
        return 2
    print(result.summary())
    print(f"scaleout: details in {result.out_dir}/")
    return 0 if result.ok else 1
