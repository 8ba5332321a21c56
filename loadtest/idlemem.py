"""``python -m loadtest.idlemem``: server memory per idle keep-alive connection, side by side.

Theory of operation
-------------------
Each server is started in its own process exactly as ``loadtest.bench`` starts it (same
:class:`~loadtest.bench.Server` templates), with its keep-alive idle timeout raised so that
nothing closes during the measurement (ours: ``--keepalive-timeout``; uvicorn:
``--timeout-keep-alive``; Go's ``http.Serve`` has no idle timeout). Then:

1. warm-up: a few hundred requests over a few connections, which are closed again; wait until
   the server holds no client socket; read its memory (**M0**);
2. ``N`` connections are opened by *client processes* (one process holds at most
   ``--per-client`` sockets: the per-process open-file cap is shared by everyone on the
   machine, and the server itself holds ``N`` fds). Each client works in batches of 500:
   connect, send one ``GET`` per socket, read each full response, so every connection is a
   real keep-alive connection that has served one request and is now idle. Each client then
   prints ``ready`` and holds its sockets until its stdin closes;
3. once every client is ready, the server holds ``N`` established sockets (counted in
   ``/proc/PID/fd`` against ``/proc/net/tcp``) and the connections have been idle for
   ``SETTLE`` seconds (ours lets a connection's worker task go after one idle second), its
   memory is read again (**MN**); the table reports
   ``(MN - M0) / N`` in KiB per connection;
4. the clients' stdin is closed, they close their sockets and exit; the server is stopped.

Memory is RSS from ``/proc/PID/status`` and, where the kernel has ``/proc/PID/smaps_rollup``,
PSS and USS (private clean + private dirty), summed over the server's process tree. Kernel
socket buffers are not in any of these (they are the kernel's, and the same for every server).

Everything is bounded: every wait has a deadline, clients die with their stdin, and servers
are stopped (process group SIGTERM, then SIGKILL) whatever happens. Loopback only.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import select
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from loadtest.bench import Context, Running, Server, _tree, servers
from loadtest.bench import select as select_names
from loadtest.mixed_app import ensure_static_dir
from loadtest.runner import wait_http

DEFAULT_SERVERS = ("netpoll-native", "netpoll-asgi", "loop:netpoll", "uvicorn", "go-net/http")
IDLE = "3600"  # keep-alive idle timeout during the run, seconds
SETTLE = 2.5  # seconds the connections stay idle before the second reading
BATCH = 500  # sockets a client connects before it reads their responses
REQUEST = b"GET /plaintext HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


# --- memory of a process tree -------------------------------------------------------------------


def memory_kib(pid: int) -> dict[str, int]:
    """RSS (and PSS, USS when smaps_rollup exists) of ``pid`` and its descendants, in KiB."""
    out = {"rss": 0, "pss": 0, "uss": 0}
    have_rollup = True
    for p in _tree(pid):
        with contextlib.suppress(OSError):
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        out["rss"] += int(line.split()[1])
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    key, _, rest = line.partition(":")
                    if key == "Pss":
                        out["pss"] += int(rest.split()[0])
                    elif key in ("Private_Clean", "Private_Dirty"):
                        out["uss"] += int(rest.split()[0])
        except OSError:
            have_rollup = False
    if not have_rollup:
        out.pop("pss")
        out.pop("uss")
    return out


def _established_inodes() -> set[str]:
    """Socket inodes of every ESTABLISHED TCP connection on the machine."""
    out: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            next(f, None)
            for line in f:
                fields = line.split()
                if len(fields) > 9 and fields[3] == "01":
                    out.add(fields[9])
    return out


def socket_count(pid: int) -> int:
    """Established TCP connections held by ``pid``'s process tree (listeners not counted:
    some servers close a duplicate of their inherited listener at a random later time)."""
    established = _established_inodes()
    n = 0
    for p in _tree(pid):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{p}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"/proc/{p}/fd/{fd}")
                    if link.startswith("socket:[") and link[8:-1] in established:
                        n += 1
    return n


def _settled_sockets(pid: int, timeout: float = 15.0) -> int:
    """``socket_count(pid)`` once it has not changed for one second (closes are asynchronous
    in some servers)."""
    deadline = time.monotonic() + timeout
    last, since = socket_count(pid), time.monotonic()
    while time.monotonic() - since < 1.0 and time.monotonic() < deadline:
        time.sleep(0.1)  # polling another process's /proc: there is no event to wait on
        n = socket_count(pid)
        if n != last:
            last, since = n, time.monotonic()
    return last


def _wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)  # polling another process's /proc: there is no event to wait on


# --- the client side (runs in its own process) ----------------------------------------------------


def _read_response(sock: socket.socket) -> None:
    """Read one complete response with a Content-Length body (blocking, with a timeout)."""
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        data += chunk
        end = data.find(b"\r\n\r\n")
        if end < 0:
            continue
        head = data[:end].lower()
        i = head.find(b"content-length:")
        length = int(head[i + 15 :].split(b"\r\n", 1)[0]) if i >= 0 else 0
        if len(data) >= end + 4 + length:
            return


def client_main(host: str, port: int, count: int) -> int:
    """Open ``count`` keep-alive connections (one request each), print ``ready``, hold them
    until stdin closes, then close them."""
    socks: list[socket.socket] = []
    try:
        while len(socks) < count:
            batch = []
            for _ in range(min(BATCH, count - len(socks))):
                s = socket.create_connection((host, port), timeout=30)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                s.sendall(REQUEST)
                batch.append(s)
            for s in batch:
                _read_response(s)
            socks += batch
        print("ready", len(socks), flush=True)
        sys.stdin.read()  # until the parent closes our stdin (or dies)
    finally:
        for s in socks:
            s.close()
    return 0


# --- the parent side -----------------------------------------------------------------------------


def idle_server(server: Server, connections: int) -> Server:
    """``server`` with its keep-alive idle timeout (and connection limit) out of the way."""
    argv = list(server.argv)
    if server.name.startswith("netpoll-"):
        argv += ["--keepalive-timeout", IDLE, "--max-connections", str(connections + 1000)]
    elif server.name == "uvicorn":
        argv += ["--timeout-keep-alive", IDLE]
    return dataclasses.replace(server, argv=argv)


def _warm_up(host: str, port: int, connections: int = 4, requests: int = 100) -> None:
    for _ in range(connections):
        with socket.create_connection((host, port), timeout=10) as s:
            for _ in range(requests):
                s.sendall(REQUEST)
                _read_response(s)


def _start_clients(port: int, connections: int, per_client: int) -> list[subprocess.Popen[str]]:
    procs = []
    left = connections
    while left > 0:
        n = min(per_client, left)
        left -= n
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "loadtest.idlemem", "--client", f"127.0.0.1:{port}:{n}"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
        )
    return procs


def _wait_ready(procs: list[subprocess.Popen[str]], timeout: float) -> None:
    waiting = {p.stdout.fileno(): p for p in procs if p.stdout is not None}
    deadline = time.monotonic() + timeout
    while waiting:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"{len(waiting)} client process(es) not ready in {timeout:.0f}s")
        readable, _, _ = select.select(list(waiting), [], [], left)
        for fd in readable:
            p = waiting.pop(fd)
            assert p.stdout is not None
            line = p.stdout.readline()
            if not line.startswith("ready"):
                raise RuntimeError(f"client process failed (status {p.wait(10)})")


def _stop_clients(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        with contextlib.suppress(OSError):
            if p.stdin is not None:
                p.stdin.close()
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        if p.stdout is not None:
            p.stdout.close()


def measure(
    server: Server, ctx: Context, connections: int, per_client: int, log: Path, timeout: float
) -> dict[str, Any]:
    """Start ``server``, hold ``connections`` idle keep-alive connections, measure, stop."""
    run = Running(idle_server(server, connections), ctx, log)
    row: dict[str, Any] = {"server": server.name, "connections": connections}
    clients: list[subprocess.Popen[str]] = []
    try:
        port = int(run.base.rsplit(":", 1)[1])
        wait_http(run.base + "/plaintext", run.proc, timeout=30)
        _warm_up("127.0.0.1", port)
        pid = run.proc.pid
        base = _settled_sockets(pid)  # warm-up connections closed, the server settled
        m0 = memory_kib(pid)
        clients = _start_clients(port, connections, per_client)
        _wait_ready(clients, timeout)
        _wait_for(
            lambda: socket_count(pid) >= base + connections, 30, "the server to hold every socket"
        )
        time.sleep(SETTLE)  # idle means idle: servers may free per-request state lazily
        mn = memory_kib(pid)
        held = socket_count(pid) - base
        row.update(held=held, m0=m0, mn=mn)
        for key in m0:
            row[f"{key}_per_conn"] = (mn[key] - m0[key]) / connections
    except (OSError, RuntimeError, TimeoutError) as exc:
        row["note"] = f"{type(exc).__name__}: {exc}"
    finally:
        _stop_clients(clients)
        run.stop()
    return row


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The results as a markdown table (KiB per connection; MiB totals)."""
    lines = [
        "| server | connections held | RSS idle MiB | RSS loaded MiB | RSS KiB/conn "
        "| PSS KiB/conn | USS KiB/conn |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "note" in r:
            lines.append(f"| {r['server']} | {r['note']} | | | | | |")
            continue

        def per(key: str, r: dict[str, Any] = r) -> str:
            v = r.get(f"{key}_per_conn")
            return "n/a" if v is None else f"{v:.2f}"

        lines.append(
            f"| {r['server']} | {r['held']} | {r['m0']['rss'] / 1024:.1f} "
            f"| {r['mn']['rss'] / 1024:.1f} | {per('rss')} | {per('pss')} | {per('uss')} |"
        )
    return "\n".join(lines) + "\n"


def run_idlemem(
    server_names: Sequence[str] | None,
    connections: int,
    per_client: int = 4000,
    timeout: float = 120.0,
    progress: Callable[[str], None] = print,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Measure every chosen server; returns the rows and notes (skipped servers)."""
    known = {s.name: s for s in servers()}
    names = select_names(server_names or list(DEFAULT_SERVERS), list(known), "server")
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="netpoll-idlemem-") as tmp:
        ctx = Context(static=ensure_static_dir(), tmp=Path(tmp), pin=False)
        for name in names:
            server = known[name]
            reason = server.prepare(ctx) if server.prepare else None
            if reason:
                notes.append(f"{name} skipped: {reason}")
                progress(f"idlemem: {name} skipped: {reason}")
                continue
            progress(f"idlemem: {name}: {connections} connections ...")
            row = measure(server, ctx, connections, per_client, Path(tmp) / "server.log", timeout)
            rows.append(row)
            if "note" in row:
                progress(f"idlemem: {name}: {row['note']}")
            else:
                progress(f"idlemem: {name}: {row['rss_per_conn']:.2f} KiB RSS per connection")
    return rows, notes


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--connections", type=int, default=15000, help="idle connections (15000)")
    p.add_argument(
        "--servers",
        default=",".join(DEFAULT_SERVERS),
        help="comma-separated names or globs as in loadtest bench (default: %(default)s)",
    )
    p.add_argument("--per-client", type=int, default=4000, help="sockets per client process")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to open them all")
    p.add_argument("--out", type=Path, help="also write the markdown table to this file")
    p.add_argument("--client", help=argparse.SUPPRESS)  # internal: HOST:PORT:COUNT


def main(args: argparse.Namespace) -> int:
    if args.client:
        host, port, count = args.client.rsplit(":", 2)
        return client_main(host, int(port), int(count))
    names = [x.strip() for x in args.servers.split(",") if x.strip()]
    try:
        rows, notes = run_idlemem(names, args.connections, args.per_client, args.timeout)
    except ValueError as exc:
        print(f"loadtest idlemem: error: {exc}", file=sys.stderr)
        return 2
    text = f"## Memory per idle keep-alive connection ({args.connections} connections)\n\n"
    text += markdown(rows)
    if notes:
        text += "\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0 if all("note" not in r for r in rows) else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m loadtest.idlemem", description=__doc__)
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
