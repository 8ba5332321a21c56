"""The accept path: bursts of connections, a client reset before accept (ECONNABORTED or an
immediately reset connection), and EMFILE back-off in a subprocess with a low fd limit (no
spinning, the back-off counter grows, service resumes once fds are free).
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import Recorder, is_netpoll, loop_factories, recv_exactly

TESTS = Path(__file__).parent
TICK = os.sysconf("SC_CLK_TCK")


class Greeter(asyncio.Protocol):
    def connection_made(self, transport: Any) -> None:
        transport.write(b"hi\n")

    def eof_received(self) -> bool | None:
        return None


@pytest.mark.pollers
async def test_accept_burst_all_served() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Greeter, "127.0.0.1", 0, backlog=512)
    port = server.sockets[0].getsockname()[1]
    before = loop.stats()["accepts"] if is_netpoll(loop) else 0  # type: ignore[attr-defined]
    # connect 100 clients while the loop is busy: they queue in the backlog together
    clients = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(100)]
    greetings = await asyncio.gather(*(asyncio.to_thread(recv_exactly, c, 3) for c in clients[:10]))
    assert greetings == [b"hi\n"] * 10
    rest = await asyncio.to_thread(lambda: [recv_exactly(c, 3) for c in clients[10:]])
    assert rest == [b"hi\n"] * 90
    if is_netpoll(loop):
        assert loop.stats()["accepts"] - before == 100  # type: ignore[attr-defined]
    for c in clients:
        c.close()
    server.close()
    await server.wait_closed()


@pytest.mark.pollers
async def test_client_reset_before_accept_is_ignored() -> None:
    loop = asyncio.get_running_loop()
    contexts: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _l, ctx: contexts.append(ctx))
    try:
        server = await loop.create_server(lambda: Recorder(echo=True), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        for _ in range(20):  # connect + RST while the loop is busy: nothing accepted yet
            s = socket.create_connection(("127.0.0.1", port))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
        good = socket.create_connection(("127.0.0.1", port), timeout=30)
        good.sendall(b"served")
        assert await asyncio.to_thread(recv_exactly, good, 6) == b"served"
        good.close()
        server.close()
        await server.wait_closed()
    finally:
        loop.set_exception_handler(None)
    assert contexts == []


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def _ask(proc: subprocess.Popen[str], command: str) -> dict[str, Any]:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(command + "\n")
    proc.stdin.flush()
    return json.loads(proc.stdout.readline())  # type: ignore[no-any-return]


def _wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)  # polling an external process's state: there is nothing to wait on


@pytest.mark.slow
@pytest.mark.parametrize("name", list(loop_factories()))
def test_emfile_backoff_does_not_spin_and_recovers(name: str) -> None:
    headroom = 8
    proc = subprocess.Popen(
        [sys.executable, "-m", "helpers.emfile_server", name, str(headroom)],
        cwd=TESTS,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    clients: list[socket.socket] = []
    try:
        assert proc.stdout is not None
        hello = json.loads(proc.stdout.readline())
        port, limit = hello["port"], hello["limit"]
        for _ in range(headroom + 24):  # more than the server can hold
            clients.append(socket.create_connection(("127.0.0.1", port), timeout=30))
        # the server is out of fds once its table is full (uvloop keeps one in reserve)
        _wait_for(lambda: len(os.listdir(f"/proc/{proc.pid}/fd")) >= limit - 1, 10, "fd table full")
        netpoll = name.startswith("netpoll")
        if netpoll:
            _wait_for(lambda: _ask(proc, "stats")["stats"]["accept_backoffs"] > 0, 10, "backoff")
            backoffs0 = _ask(proc, "stats")["stats"]["accept_backoffs"]

        cpu0, t0 = _cpu_seconds(proc.pid), time.monotonic()
        time.sleep(1.0)  # a measurement window, not synchronisation
        cpu1, t1 = _cpu_seconds(proc.pid), time.monotonic()
        assert cpu1 - cpu0 < 0.3 * (t1 - t0), f"server used {cpu1 - cpu0:.2f} s CPU in 1 s"
        if netpoll:
            assert _ask(proc, "stats")["stats"]["accept_backoffs"] > backoffs0

        for c in clients:
            c.close()
        clients.clear()
        # Served again within the back-off ceiling. uvloop (libuv) sheds load on EMFILE by
        # accepting and closing with a reserve fd, so a connection that raced the shedding may
        # be closed: other loops get a few tries, netpoll exactly one.
        for attempt in range(1 if netpoll else 5):
            fresh = socket.create_connection(("127.0.0.1", port), timeout=30)
            clients.append(fresh)
            try:
                assert recv_exactly(fresh, 3) == b"hi\n"
                break
            except EOFError:
                if netpoll or attempt == 4:
                    raise
        if netpoll:
            stats = _ask(proc, "stats")["stats"]
            assert stats["accepts"] >= headroom
        assert proc.stdin is not None
        proc.stdin.write("quit\n")
        proc.stdin.flush()
        assert proc.wait(10) == 0
    finally:
        for c in clients:
            c.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for f in (proc.stdin, proc.stdout):
            if f is not None:
                f.close()


EPOLLEXCLUSIVE = 1 << 28


def _epoll_events(epfd: int, fd: int) -> int | None:
    """The event mask the kernel holds for ``fd`` in epoll instance ``epfd`` (from fdinfo)."""
    with open(f"/proc/self/fdinfo/{epfd}") as f:
        for line in f:
            parts = line.split()
            if parts[:1] == ["tfd:"] and int(parts[1]) == fd:
                return int(parts[3], 16)
    return None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="epoll only")
def test_listener_registered_exclusive_and_still_modifiable() -> None:
    import netpoll

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Greeter, "127.0.0.1", 0)
        sock = server.sockets[0]
        epfd = loop._selector.poller.fileno()  # type: ignore[attr-defined]
        events = _epoll_events(epfd, sock.fileno())
        assert events is not None and events & EPOLLEXCLUSIVE and events & select.EPOLLIN
        # EPOLL_CTL_MOD refuses exclusive entries; adding a writer must still work
        loop.add_writer(sock.fileno(), lambda: None)
        loop.remove_writer(sock.fileno())
        events = _epoll_events(epfd, sock.fileno())
        assert events is not None and not events & EPOLLEXCLUSIVE
        port = sock.getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await reader.readexactly(3) == b"hi\n"  # still accepting
        writer.close()
        server.close()
        await server.wait_closed()

    loop = netpoll.Loop(poller="epoll")
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_shared_listener_served_by_two_netpoll_processes() -> None:
    """Two processes polling one listening socket (registered EPOLLEXCLUSIVE) both accept."""
    lsock = socket.create_server(("127.0.0.1", 0), backlog=256)
    port = lsock.getsockname()[1]
    children = []
    code = (
        "import asyncio, os, socket, sys, netpoll\n"
        "s = socket.socket(fileno=int(sys.argv[1]))\n"
        "class P(asyncio.Protocol):\n"
        "    def connection_made(self, t):\n"
        "        t.write(str(os.getpid()).encode() + b'\\n'); t.close()\n"
        "async def main():\n"
        "    srv = await asyncio.get_running_loop().create_server(P, sock=s)\n"
        "    print('ready', flush=True)\n"
        "    await asyncio.sleep(30)\n"
        "netpoll.run(main())\n"
    )
    try:
        for _ in range(2):
            proc = subprocess.Popen(
                [sys.executable, "-c", code, str(lsock.fileno())],
                pass_fds=(lsock.fileno(),),
                stdout=subprocess.PIPE,
                text=True,
            )
            children.append(proc)
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        pids = set()
        for _ in range(200):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
                pids.add(int(c.makefile().readline()))
            if len(pids) == 2:
                break
        assert pids == {p.pid for p in children}
    finally:
        for proc in children:
            proc.kill()
            proc.wait()
        lsock.close()
