"""Supervisor signals over real processes: SIGHUP reload under load, SIGTERM with slow requests.

The load is a few keep-alive ``http.client`` threads (``helpers.serverproc.Load``) for a few
seconds, without retries: any request that does not get a complete 200 is a failure. The 30 s
wrk run of the same scenario is in docs/operations.md.
"""

from __future__ import annotations

import http.client
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers.serverproc import Load, ServerProc
from helpers.workerapp import write_app

Start = Callable[..., ServerProc]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    procs: list[ServerProc] = []

    def launch(*args: str) -> ServerProc:
        p = ServerProc([*args], cwd=tmp_path)
        procs.append(p)
        return p

    yield launch
    for p in procs:
        p.close()


@pytest.mark.parametrize("loop", ["netpoll", "uvloop"])
def test_sighup_under_load_zero_failures_and_new_code(
    start: Start, tmp_path: Path, loop: str
) -> None:
    target = write_app(tmp_path, version="v1")
    p = start(target, "--port", "0", "--workers", "2", "--loop", loop, "--graceful-timeout", "5")
    port = p.port()
    old = set(p.ready_pids(2))
    with Load(port, threads=6, limit=30) as load:
        load.wait_ok(2000)
        write_app(tmp_path, version="version-two")  # a different size: no stale .pyc
        mark = p.mark()
        p.signal(signal.SIGHUP)
        p.wait_for(r"reload complete: generation 2", mark)
        p.wait_count(r"stopped: exit status 0", 2, mark)
        load.wait_ok(2000)
        second = p.mark()
        p.signal(signal.SIGHUP)  # and once more, with the file unchanged
        p.wait_for(r"reload complete: generation 3", second)
        p.wait_count(r"stopped: exit status 0", 2, second)
        load.wait_ok(2000)
    assert load.failures == [], load.failures[:5]
    for r in load.results:
        assert r.last.startswith("version-two "), r.last
        assert int(r.last.split()[-1]) not in old
    bodies = load.bodies()
    assert any(b.startswith("v1 ") for b in bodies)


def test_failed_reload_keeps_the_running_workers(start: Start, tmp_path: Path) -> None:
    target = write_app(tmp_path, version="v1")
    p = start(target, "--port", "0", "--workers", "2")
    port = p.port()
    p.ready_pids(2)
    (tmp_path / "wapp.py").write_text("this is not python (\n")
    mark = p.mark()
    p.signal(signal.SIGHUP)
    p.wait_for(r"reload failed: .*SyntaxError|reload failed: .*error while importing", mark)
    for _ in range(10):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/")
        assert conn.getresponse().read().startswith(b"v1 ")
        conn.close()


def _slow(port: int, ms: int, out: list[tuple[int, str | None, bytes]]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", f"/slow/{ms}")
    r = conn.getresponse()
    out.append((r.status, r.getheader("connection"), r.read()))
    conn.close()


def test_sigterm_finishes_slow_requests_refuses_new_and_exits(start: Start, tmp_path: Path) -> None:
    target = write_app(tmp_path)
    graceful = 6.0
    p = start(target, "--port", "0", "--workers", "2", "--graceful-timeout", str(graceful))
    port = p.port()
    p.ready_pids(2)
    # an idle keep-alive connection: it must be closed by the shutdown
    idle = socket.create_connection(("127.0.0.1", port), timeout=15)
    idle.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert idle.recv(4096).startswith(b"HTTP/1.1 200")
    short: list[tuple[int, str | None, bytes]] = []
    long: list[tuple[int, str | None, bytes]] = []
    threads = [threading.Thread(target=_slow, args=(port, 1500, short)) for _ in range(3)]
    threads.append(threading.Thread(target=_slow, args=(port, 3500, long)))
    mark = p.mark()
    for t in threads:
        t.start()
    p.wait_count(r"^slow-start \d+", 4, mark)
    t0 = time.monotonic()
    p.signal(signal.SIGTERM)
    p.wait_for(r"SIGTERM: graceful shutdown", mark)
    for t in threads[:3]:
        t.join(20)
    # the short ones are done, the long one still runs: the listener is closed by now
    assert p.proc.poll() is None and not long
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    threads[3].join(20)
    rc = p.wait(timeout=graceful + 5)
    elapsed = time.monotonic() - t0
    assert rc == 0
    assert elapsed < graceful, elapsed
    for status, connection, body in [*short, *long]:
        assert status == 200 and body.startswith(b"slow ") and connection == "close"
    assert idle.recv(4096) == b""  # closed by the server (EOF), not left hanging
    idle.close()
