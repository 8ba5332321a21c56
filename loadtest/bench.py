"""``python -m loadtest bench``: our loop and server side by side with the servers people pick.

Theory of operation
-------------------
The method is the design brief's "How we measure speed" (the reference script is
``shared/anchors/cpubench.py``; this is our own implementation of it):

* the server is pinned to CPU 0 (``taskset -c 0``), ``wrk -t1`` to CPU 1;
* besides requests/s, the server's **CPU time per request** is measured: utime + stime of the
  server's whole process tree, read from ``/proc`` before and after each wrk run, divided by
  the requests wrk completed. On a 2-core machine rps mostly measures wrk; CPU/request
  measures the server;
* pipelined runs send 16 requests per write from a wrk Lua script (the TechEmpower shape);
* every server is measured in turn, ``rounds`` times, and the median is reported, so ratios
  compare runs taken close together on one machine.

A :class:`Server` is a command template plus the workloads it serves. How it gets its port:
``fd`` (we bind ``127.0.0.1:0`` and pass the socket down: no race), ``announce`` (it binds
port 0 and prints ``{"port": N}``: ``loadtest.proto_server``) or ``port`` (we ask the kernel
for a free port and hand the number over: uvicorn, granian, nginx).
Servers whose program or module is missing are skipped with a note in the report, never an
error. Each server is started once per round, answers a check request for each of its
workloads (static files must have the right length), gets a one-second warm-up, then runs
its workloads back to back.

Workloads: ``plaintext`` and ``json`` (wrk -c64), ``pipelined`` (plaintext, 16 per write),
``static-10k`` and ``static-1m`` (wrk -c16). The loop comparison (``loop:netpoll``,
``loop:uvloop``, ``loop:asyncio``, and the pure-Python ``loop:raw-epoll`` floor) runs the
same minimal protocol server, ``loadtest.proto_server``, on each loop.

With ``--loopbench`` (the default for a full run) the bench also runs helper-4's
``python -m loadtest.loopbench`` with the same rounds and duration and appends its table, which
adds the loop's own counters (reads/writes per request, iovecs per ``sendmsg``, events per poll).

Output in ``results/bench-<timestamp>/``: ``bench.md`` (one table per workload: rps, server
CPU µs/request, both as ratios to uvicorn), ``bench.json`` (machine, settings, every round)
and ``bench.png`` (bar charts).
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import importlib.util
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from loadtest.mixed_app import STATIC_FILES, ensure_static_dir
from loadtest.runner import listen_socket, stop_process, wait_http

PEERS = Path(__file__).resolve().parent / "peers"
TICKS = os.sysconf("SC_CLK_TCK")
REFERENCE = "uvicorn"


@dataclass(frozen=True)
class Workload:
    name: str
    path: str
    conns: int  # wrk -c
    pipeline: int = 1  # requests per write
    size: int | None = None  # expected body length, checked once before measuring


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload("plaintext", "/plaintext", 64),
        Workload("pipelined", "/plaintext", 64, pipeline=16),
        Workload("json", "/json", 64),
        Workload("static-10k", "/static/10k.bin", 16, size=STATIC_FILES["10k.bin"]),
        Workload("static-1m", "/static/1m.bin", 16, size=STATIC_FILES["1m.bin"]),
    )
}
ALL = tuple(WORKLOADS)
DYNAMIC = ("plaintext", "pipelined", "json")


@dataclass
class Context:
    """Shared by every server of one bench run."""

    static: str  # the static directory (10k.bin, 1m.bin)
    tmp: Path  # scratch: Lua script, built Go binary, nginx prefix
    pin: bool  # taskset the server to CPU 0 and wrk to CPU 1


@dataclass
class Server:
    """A command template (``{fd}``, ``{port}``, ``{static}``, ``{tmp}``, ``{python}``)."""

    name: str
    argv: list[str]
    workloads: tuple[str, ...] = ALL
    listen: str = "fd"  # "fd" | "port" | "announce"
    env: dict[str, str] = field(default_factory=dict)
    #: returns None when the server can run, else why not (may build or write files)
    prepare: Callable[[Context], str | None] | None = None

    def __repr__(self) -> str:
        return f"<Server {self.name} listen={self.listen} workloads={','.join(self.workloads)}>"


def _module(name: str) -> Callable[[Context], str | None]:
    def check(ctx: Context) -> str | None:
        return None if importlib.util.find_spec(name) else f"python package {name!r} not installed"

    return check


def _build_go(ctx: Context) -> str | None:
    go = shutil.which("go")
    if go is None:
        return "go not installed (apt-get install golang-go)"
    src = PEERS / "gosrv" / "main.go"
    if not src.exists():
        return "loadtest/peers/gosrv/main.go missing (not an editable install?)"
    out = ctx.tmp / "gosrv"
    if out.exists():
        return None
    proc = subprocess.run(
        [go, "build", "-o", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "GO111MODULE": "off"},  # one file, standard library only
    )
    return None if proc.returncode == 0 else f"go build failed: {proc.stderr.strip()[:200]}"


def _nginx_conf(ctx: Context) -> str | None:
    if shutil.which("nginx") is None and not os.path.exists("/usr/sbin/nginx"):
        return "nginx not installed (apt-get install nginx-light)"
    if not (PEERS / "nginx.conf").exists():
        return "loadtest/peers/nginx.conf missing (not an editable install?)"
    (ctx.tmp / "nginx").mkdir(exist_ok=True)
    return None


def servers() -> list[Server]:
    """Every server the bench knows, ours first."""
    ours = ["{python}", "-m", "server", "--fd", "{fd}", "--log-level", "warning"]
    ours += ["--static", "/static={static}"]
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    loop = ["{python}", "-m", "loadtest.proto_server"]
    return [
        Server("netpoll-native", [*ours, "loadtest.apps:app"]),
        Server("netpoll-asgi", [*ours, "--interface", "asgi", "loadtest.apps:asgi_app"]),
        Server(
            "uvicorn",
            # a port, not --fd: uvicorn takes an inherited fd for an AF_UNIX socket, so on TCP
            # it would skip TCP_NODELAY and every keep-alive response would wait for an ACK.
            "{python} -m uvicorn loadtest.peers.asgi_peer:app --host 127.0.0.1 --port {port}"
            " --loop uvloop --http httptools --log-level warning --no-access-log --lifespan off".split(),
            listen="port",
            env={"BENCH_STATIC_DIR": "{static}"},
            prepare=_module("uvicorn"),
        ),
        Server(
            "granian",
            "{python} -m granian --interface rsgi --host 127.0.0.1 --port {port} --workers 1"
            " --no-ws --log-level warning --static-path-route /static --static-path-mount {static}"
            " loadtest.peers.rsgi_peer:app".split(),
            listen="port",
            prepare=_module("granian"),
        ),
        Server(
            "aiohttp",
            "{python} -m loadtest.peers.aiohttp_peer --fd {fd} --static {static}".split(),
            prepare=_module("aiohttp"),
        ),
        Server(
            "go-net/http",
            ["{tmp}/gosrv", "fd:{fd}", "{static}"],
            env={"GOMAXPROCS": "1"},
            prepare=_build_go,
        ),
        Server(
            "nginx",
            [nginx, "-p", "{tmp}/nginx", "-c", "{tmp}/nginx/nginx-{port}.conf"],
            listen="port",
            prepare=_nginx_conf,
        ),
        Server("loop:netpoll", [*loop, "netpoll", "0"], DYNAMIC[:2], "announce"),
        Server(
            "loop:uvloop",
            [*loop, "uvloop", "0"],
            DYNAMIC[:2],
            "announce",
            prepare=_module("uvloop"),
        ),
        Server("loop:asyncio", [*loop, "asyncio", "0"], DYNAMIC[:2], "announce"),
        Server("loop:raw-epoll", [*loop, "raw-epoll", "0"], DYNAMIC[:2], "announce"),
    ]


# --- measuring --------------------------------------------------------------------------------


def _tree(pid: int) -> list[int]:
    out = [pid]
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as f:
                for child in f.read().split():
                    out += _tree(int(child))
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and all its descendants (all threads), in seconds."""
    ticks = 0
    for p in _tree(pid):
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(f"/proc/{p}/stat") as f:
                stat = f.read()
            fields = stat[stat.rindex(")") + 2 :].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / TICKS


LUA = """-- {n} pipelined requests per write
init = function(args)
  local reqs = {{}}
  for i = 1, {n} do reqs[i] = wrk.format(nil, "{path}") end
  pipelined = table.concat(reqs)
end
request = function() return pipelined end
"""


def parse_wrk(out: str) -> tuple[int, float, int]:
    """(requests, requests/s, errors) from wrk's report."""
    requests, rps, errors = 0, 0.0, 0
    for line in out.splitlines():
        line = line.strip()
        if " requests in " in line:
            requests = int(line.split()[0])
        elif line.startswith("Requests/sec:"):
            rps = float(line.split()[1])
        elif line.startswith(("Socket errors:", "Non-2xx or 3xx responses:")):
            errors += sum(int(x) for x in line.replace(",", " ").split() if x.isdigit())
    return requests, rps, errors


def run_wrk(
    ctx: Context, url: str, workload: Workload, duration: int
) -> tuple[int, float, int, str]:
    cmd = (["taskset", "-c", "1"] if ctx.pin else []) + ["wrk", "-t1", f"-c{workload.conns}"]
    cmd += [f"-d{duration}s", "--timeout", "5s"]
    if workload.pipeline > 1:
        lua = ctx.tmp / f"pipeline-{workload.pipeline}.lua"
        lua.write_text(LUA.format(n=workload.pipeline, path=workload.path))
        cmd += ["-s", str(lua)]
    proc = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=duration + 30)
    return (*parse_wrk(proc.stdout), proc.stdout + proc.stderr)


class Running:
    """One started server: its process, base URL and listening socket (if we own it)."""

    def __init__(self, server: Server, ctx: Context, log: Path) -> None:
        self.server = server
        self.sock: socket.socket | None = None
        port = 0
        values = {"python": sys.executable, "static": ctx.static, "tmp": str(ctx.tmp)}
        pass_fds: tuple[int, ...] = ()
        if server.listen == "fd":
            self.sock = listen_socket()
            port = self.sock.getsockname()[1]
            values["fd"] = str(self.sock.fileno())
            pass_fds = (self.sock.fileno(),)
        elif server.listen == "port":
            with socket.socket() as s:  # these servers take a number, not a socket
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
        values["port"] = str(port)
        if server.name == "nginx":
            prefix = ctx.tmp / "nginx"
            conf = (PEERS / "nginx.conf").read_text().replace("@PORT@", str(port))
            conf = conf.replace("@STATIC@", ctx.static).replace("@TMP@", str(prefix))
            (prefix / f"nginx-{port}.conf").write_text(conf)
        argv = [a.format(**values) for a in server.argv]
        env = {**os.environ, **{k: v.format(**values) for k, v in server.env.items()}}
        self.log = open(log, "wb")
        self.proc = subprocess.Popen(
            (["taskset", "-c", "0"] if ctx.pin else []) + argv,
            pass_fds=pass_fds,
            stdout=subprocess.PIPE if server.listen == "announce" else self.log,
            stderr=self.log,
            start_new_session=True,
            env=env,
        )
        if server.listen == "announce":
            assert self.proc.stdout is not None
            line = self.proc.stdout.readline()  # {"port": N, "pid": P}
            port = int(json.loads(line)["port"]) if line else 0
        self.base = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        stop_process(self.proc)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        if self.sock is not None:
            self.sock.close()
        self.log.close()

    def __repr__(self) -> str:
        return f"<Running {self.server.name} pid={self.proc.pid} {self.base}>"


def check(base: str, workload: Workload) -> str | None:
    """None when ``workload.path`` answers 200 with the expected length, else the problem."""
    try:
        with urllib.request.urlopen(base + workload.path, timeout=5) as resp:
            body = resp.read()
    except OSError as exc:
        return f"check failed: {exc}"
    if workload.size is not None and len(body) != workload.size:
        return f"check failed: {len(body)} bytes, expected {workload.size}"
    return None


def measure_server(
    server: Server, ctx: Context, workloads: Sequence[str], duration: int, log: Path
) -> Iterator[dict[str, Any]]:
    """Start ``server``, yield one result dict per workload, stop it."""
    todo = [WORKLOADS[w] for w in workloads if w in server.workloads]
    if not todo:
        return
    run = Running(server, ctx, log)
    try:
        try:
            wait_http(run.base + todo[0].path, run.proc, timeout=30)
        except (RuntimeError, TimeoutError) as exc:
            for w in todo:
                yield {"server": server.name, "workload": w.name, "note": f"did not start: {exc}"}
            return
        warmed = False
        for w in todo:
            problem = check(run.base, w)
            if problem:
                yield {"server": server.name, "workload": w.name, "note": problem}
                continue
            if not warmed:
                run_wrk(ctx, run.base + w.path, w, 1)
                warmed = True
            c0 = cpu_seconds(run.proc.pid)
            requests, rps, errors, out = run_wrk(ctx, run.base + w.path, w, duration)
            c1 = cpu_seconds(run.proc.pid)
            if not requests:
                yield {"server": server.name, "workload": w.name, "note": "wrk: " + out[-200:]}
                continue
            yield {
                "server": server.name,
                "workload": w.name,
                "rps": rps,
                "cpu_us": (c1 - c0) * 1e6 / requests,
                "errors": errors,
                "requests": requests,
            }
    finally:
        run.stop()


def median_results(rounds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median rps and CPU/request per (workload, server) over the rounds that succeeded."""
    keyed: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rounds:
        keyed.setdefault((r["workload"], r["server"]), []).append(r)
    out = []
    for (workload, server), rs in keyed.items():
        good = [r for r in rs if r.get("rps")]
        if not good:
            out.append({"workload": workload, "server": server, "note": rs[-1].get("note", "")})
            continue
        out.append(
            {
                "workload": workload,
                "server": server,
                "rps": statistics.median(r["rps"] for r in good),
                "cpu_us": statistics.median(r["cpu_us"] for r in good),
                "errors": sum(r["errors"] for r in good),
                "rounds": len(good),
            }
        )
    order = {w: i for i, w in enumerate(WORKLOADS)}
    out.sort(key=lambda r: order.get(r["workload"], 99))
    return out


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def select(names: Sequence[str] | None, known: Sequence[str], what: str) -> list[str]:
    if not names:
        return list(known)
    chosen = [k for k in known if any(fnmatch.fnmatch(k, n) for n in names)]
    if not chosen:
        raise ValueError(f"no {what} matches {', '.join(names)} (known: {', '.join(known)})")
    return chosen


def run_bench(
    *,
    server_names: Sequence[str] | None = None,
    workload_names: Sequence[str] | None = None,
    rounds: int = 2,
    duration: int = 3,
    results: Path = Path("results"),
    pin: bool | None = None,
    loopbench: bool = False,
    progress: Callable[[str], None] = print,
) -> Path:
    """Run the comparison; returns the output directory (bench.md, bench.json, bench.png)."""
    from loadtest import report

    if shutil.which("wrk") is None:
        raise FileNotFoundError("wrk is not installed (apt-get install wrk)")
    all_servers = servers()
    names = select(server_names, [s.name for s in all_servers], "server")
    workloads = select(workload_names, ALL, "workload")
    if pin is None:
        pin = shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
    out_dir = results / f"bench-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    out_dir.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    if not pin:
        notes.append("not pinned (taskset missing or fewer than 2 CPUs): ratios are noisier")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="netpoll-bench-") as tmp:
        ctx = Context(static=ensure_static_dir(), tmp=Path(tmp), pin=pin)
        chosen = []
        for s in all_servers:
            if s.name not in names:
                continue
            reason = s.prepare(ctx) if s.prepare else None
            if reason:
                notes.append(f"{s.name} skipped: {reason}")
                progress(f"bench: {s.name} skipped: {reason}")
            else:
                chosen.append(s)
        for r in range(rounds):
            for s in chosen:
                log = out_dir / f"{s.name.replace(':', '-').replace('/', '-')}.log"
                for res in measure_server(s, ctx, workloads, duration, log):
                    res["round"] = r + 1
                    rows.append(res)
                    if res.get("rps"):
                        progress(
                            f"bench: round {r + 1}/{rounds} {res['workload']:<11} {s.name:<15} "
                            f"{res['rps']:>10,.0f} req/s {res['cpu_us']:>7.2f} µs/req "
                            f"errors={res['errors']}"
                        )
                    else:
                        progress(f"bench: {res['workload']} {s.name}: {res.get('note')}")
    summary = median_results(rows)
    meta = {
        "machine": machine(),
        "rounds": rounds,
        "duration_s": duration,
        "pinned": pin,
        "reference": REFERENCE,
        "workloads": {w: vars(WORKLOADS[w]) for w in workloads},
        "started": out_dir.name[len("bench-") :],
    }
    (out_dir / "bench.json").write_text(
        json.dumps({"meta": meta, "results": summary, "rounds": rows, "notes": notes}, indent=2)
    )
    m = meta["machine"]
    head = [
        "# netpoll benchmark",
        "",
        f"{m['cpu']} ({m['cpus']} CPUs), Linux {m['kernel']}, Python {m['python']}. "
        f"Server {'pinned to CPU 0, wrk -t1 to CPU 1' if pin else 'not pinned'}; "
        f"{rounds} round(s) of {duration} s per cell, median shown. Server CPU µs/req = "
        "utime+stime of the server's process tree / requests (lower is better). "
        "Connections: 64 (16 for static files); pipelined = 16 requests per write.",
        "",
    ]
    text = "\n".join(head)
    text += f"## Summary: server CPU µs per request (ratio to {REFERENCE})\n\n"
    text += report.bench_summary([r for r in summary if r.get("rps")], REFERENCE) + "\n"
    text += report.bench_markdown(summary, REFERENCE, notes)
    if loopbench:
        progress("bench: running python -m loadtest.loopbench")
        text += "\n" + run_loopbench(out_dir, rounds, duration)
    (out_dir / "bench.md").write_text(text)
    report.plot_bench([r for r in summary if r.get("rps")], out_dir / "bench.png")
    return out_dir


def run_loopbench(out_dir: Path, rounds: int, duration: int) -> str:
    """Run ``loadtest.loopbench`` (its own method, same settings); its markdown, or why not."""
    if importlib.util.find_spec("loadtest.loopbench") is None:
        return "Loop benchmark: loadtest.loopbench is not available.\n"
    out = out_dir / "loopbench.md"
    cmd = [sys.executable, "-m", "loadtest.loopbench", "--rounds", str(rounds)]
    cmd += ["--duration", str(duration), "--out", str(out)]
    with open(out_dir / "loopbench.log", "wb") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=log, timeout=1800)
    if proc.returncode != 0 or not out.exists():
        return f"Loop benchmark: loadtest.loopbench failed (status {proc.returncode}).\n"
    return "## Loop benchmark (python -m loadtest.loopbench)\n\n" + out.read_text()


def add_arguments(p: argparse.ArgumentParser) -> None:
    names = ", ".join(s.name for s in servers())
    p.add_argument("--quick", action="store_true", help="1 round of 1 s per cell (a smoke run)")
    p.add_argument("--rounds", type=int, default=2, help="rounds, median reported (default 2)")
    p.add_argument("--duration", type=int, default=3, help="seconds per wrk run (default 3)")
    p.add_argument("--servers", help=f"comma-separated names or globs among: {names}")
    p.add_argument("--workloads", help=f"comma-separated among: {', '.join(ALL)}")
    p.add_argument("--results", type=Path, default=Path("results"))
    p.add_argument("--no-pin", action="store_true", help="do not taskset server/wrk")
    p.add_argument(
        "--loopbench",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also run loadtest.loopbench and append its table (default: on unless --quick)",
    )


def main(args: argparse.Namespace) -> int:
    rounds, duration = (1, 1) if args.quick else (args.rounds, args.duration)
    split = lambda s: [x.strip() for x in s.split(",") if x.strip()] if s else None  # noqa: E731
    try:
        out = run_bench(
            server_names=split(args.servers),
            workload_names=split(args.workloads),
            rounds=rounds,
            duration=duration,
            results=args.results,
            pin=False if args.no_pin else None,
            loopbench=not args.quick if args.loopbench is None else args.loopbench,
        )
    except (FileNotFoundError, ValueError) as exc:
        print(f"loadtest bench: error: {exc}", file=sys.stderr)
        return 2
    print((out / "bench.md").read_text())
    print(f"bench: wrote {out}/bench.md, bench.json, bench.png")
    return 0
