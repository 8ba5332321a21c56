"""The accept path: bursts of connections, a client reset before accept (ECONNABORTED or an
immediately reset connection), and EMFILE back-off in a subprocess with a low fd limit (no
spinning, the back-off counter grows, service resumes once fds are free).
"""

from __future__ import annotations

import asyncio
import json
import os
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
