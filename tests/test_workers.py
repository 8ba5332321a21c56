"""Prefork workers over real processes and sockets: balance, respawn, recycling, faults.

Every server is ``python -m server`` in its own process group (``helpers.serverproc``), torn
down by a fixture; synchronisation is on the supervisor's log lines.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest
from helpers.serverproc import Load, ServerProc
from helpers.workerapp import write_app

Start = Callable[..., ServerProc]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    procs: list[ServerProc] = []

    def launch(*args: str, app: str | None = None, env: dict[str, str] | None = None) -> ServerProc:
        target = app or write_app(tmp_path)
        p = ServerProc([target, "--port", "0", *args], cwd=tmp_path, env=env)
        procs.append(p)
        return p

    yield launch
    for p in procs:
        p.close()


def get(port: int, path: str = "/", keep: bool = False) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={} if keep else {"Connection": "close"})
        r = conn.getresponse()
        return r.status, r.read().decode()
    finally:
        conn.close()


def _stamp(line: str) -> datetime:
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")


@pytest.mark.parametrize("loop", ["netpoll", "asyncio"])
def test_reuseport_spreads_new_connections(start: Start, loop: str) -> None:
    p = start("--workers", "2", "--loop", loop)
    port = p.port()
    pids = set(p.ready_pids(2))
    seen: Counter[int] = Counter()
    for _ in range(1000):
        status, body = get(port)
        assert status == 200
        seen[int(body.split()[-1])] += 1
    assert set(seen) == pids and p.pid not in seen
    assert min(seen.values()) >= 300, seen


def test_kill_9_under_load_only_its_connections_fail(start: Start) -> None:
    p = start("--workers", "2", "--graceful-timeout", "3")
    port = p.port()
    a, b = p.ready_pids(2)
    with Load(port, threads=6, limit=20) as load:
        load.wait_ok(300)
        on_victim = {i for i, r in enumerate(load.results) if r.last.endswith(f" {a}")}
        mark = p.mark()
        os.kill(a, signal.SIGKILL)
        died = p.wait_for(rf"worker {a} \(slot \d\) died: killed by SIGKILL", mark)
        back = p.wait_for(r"worker (\d+) ready", mark)
        load.wait_ok(300)
    assert int(back.group(1)) not in (a, b)
    # back within 1 s (the supervisor's own timestamps: death noticed -> replacement listening)
    gap = (_stamp(back.string) - _stamp(died.string)).total_seconds()
    assert gap < 1.0, (died.string, back.string)
    # only connections that were on the killed worker saw an error, at most one each
    for i, r in enumerate(load.results):
        if i not in on_victim:
            assert r.failures == [], (i, r.failures)
        else:
            assert len(r.failures) <= 1 and all(pid == a for pid, _ in r.failures), r.failures
    assert load.ok > 600


def test_max_requests_recycles_without_losing_requests(start: Start) -> None:
    p = start("--workers", "2", "--max-requests", "150", "--max-requests-jitter", "50")
    port = p.port()
    first = set(p.ready_pids(2))
    mark = p.mark()
    with Load(port, threads=4, limit=30) as load:
        p.wait_count(r"reached max_requests", 4, mark, timeout=30)
        p.wait_count(r"stopped: exit status 0", 4, mark, timeout=30)
        load.wait_ok(100)
    assert load.failures == []
    pids = {int(b.split()[-1]) for b in load.bodies()}
    assert len(pids - first) >= 2, pids  # replacements answered too


def test_respawn_after_crash_and_restart_metric(start: Start) -> None:
    p = start("--workers", "2", "--metrics", "/metrics")
    port = p.port()
    p.ready_pids(2)
    mark = p.mark()
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        get(port, "/crash")
    p.wait_for(r"died: exit status 9", mark)
    p.wait_for(r"worker \d+ ready", mark)
    _, text = get(port, "/metrics")
    assert "netpoll_worker_restarts_total 1" in text
    assert "netpoll_workers 2" in text


def test_silent_worker_is_killed_and_replaced(start: Start) -> None:
    p = start("--workers", "2", "--worker-timeout", "1.5")
    port = p.port()
    p.ready_pids(2)
    mark = p.mark()

    def blocked() -> None:
        with contextlib.suppress(OSError, http.client.HTTPException):
            get(port, "/block")  # the worker is killed under this request

    t = threading.Thread(target=blocked)
    t.start()
    p.wait_for(r"killing worker (\d+) .*no heartbeat", mark)
    p.wait_for(r"died: killed by SIGKILL", mark)
    p.wait_for(r"worker \d+ ready", mark)
    t.join(15)
    for _ in range(20):
        assert get(port)[0] == 200


CRASH_ON_START = """
@app.on_startup
async def die_soon():
    asyncio.get_running_loop().call_later(0.05, os._exit, 7)
"""


def test_crash_loop_stops_with_one_clear_line(start: Start, tmp_path: Path) -> None:
    p = start("--workers", "2", app=write_app(tmp_path, name="crashy", extra=CRASH_ON_START))
    assert p.wait(timeout=60) == 1
    errors = [ln for ln in p.lines if ln.startswith("netpoll-server: error:")]
    assert len(errors) == 1 and "crash loop" in errors[0] and "exit status 7" in errors[0]


BOOT_FAILS = """
@app.on_startup
async def no_database():
    raise RuntimeError("database unreachable")
"""


def test_boot_error_stops_with_status_3(start: Start, tmp_path: Path) -> None:
    p = start("--workers", "2", app=write_app(tmp_path, name="noboot", extra=BOOT_FAILS))
    assert p.wait(timeout=60) == 3
    assert "database unreachable" in p.text()
    assert any("could not start" in ln for ln in p.lines if ln.startswith("netpoll-server:"))


def test_ttin_ttou_change_the_worker_count(start: Start) -> None:
    p = start("--workers", "1", "--supervise", "--metrics", "/metrics")
    port = p.port()
    p.ready_pids(1)
    mark = p.mark()
    p.signal(signal.SIGTTIN)
    p.wait_for(r"SIGTTIN: 2 workers", mark)
    p.ready_pids(1, mark)
    assert "netpoll_workers 2" in get(port, "/metrics")[1]
    mark = p.mark()
    p.signal(signal.SIGTTOU)
    p.wait_for(r"SIGTTOU: 1 workers", mark)
    p.wait_for(r"\(slot 1\) stopped: exit status 0", mark)
    assert "netpoll_workers 1" in get(port, "/metrics")[1]
    for _ in range(20):
        assert get(port)[0] == 200


def test_workers_end_when_the_supervisor_is_killed(start: Start) -> None:
    """A supervisor killed with SIGKILL leaves no orphan workers holding the port (as
    gunicorn's notice a new parent); SIGUSR1 (gunicorn's "reopen logs") kills nothing."""
    p = start("--workers", "2")
    port = p.port()
    pids = p.ready_pids(2)
    mark = p.mark()
    p.signal(signal.SIGUSR1)
    p.wait_for(r"SIGUSR1 ignored", mark)
    assert get(port)[0] == 200
    p.signal(signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in pids), pids


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][:1] != "Z"  # (a zombie has ended)
    except FileNotFoundError:
        return False


def answering_pids(fetch: Callable[[str], tuple[int, str]]) -> set[int]:
    """The pids of the workers that answer on a shared listener. Which idle worker accepts a
    connection is the kernel's choice (one may win every time), so one worker's loop is held
    by ``/spin`` while ``/`` is asked: the other one must accept those."""
    seen = set()
    spun: list[tuple[int, str]] = []
    spinner = threading.Thread(target=lambda: spun.append(fetch("/spin/600")))
    spinner.start()
    try:
        time.sleep(0.2)  # (accepted by then)
        for _ in range(10):
            status, body = fetch("/")
            assert status == 200
            seen.add(int(body.split()[-1]))
    finally:
        spinner.join(10)
    assert spun and spun[0][0] == 200
    seen.add(int(spun[0][1].split()[-1]))
    return seen


def test_unix_socket_shared_by_workers(start: Start, tmp_path: Path) -> None:
    path = str(tmp_path / "w.sock")
    p = start("--workers", "2", "--uds", path)
    pids = set(p.ready_pids(2))

    def uds_get(target: str) -> tuple[int, str]:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(path)
            s.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % target.encode())
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        return int(data.split(b" ", 2)[1]), data.decode()

    assert answering_pids(uds_get) == pids
    p.signal(signal.SIGTERM)
    assert p.wait() == 0
    assert not os.path.exists(path)


def test_inherited_fd_shared_by_workers(tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        port = listener.getsockname()[1]
        fd = str(listener.fileno())
        p = ServerProc(
            [write_app(tmp_path), "--workers", "2", "--fd", fd],
            cwd=tmp_path,
            pass_fds=[listener.fileno()],
        )
        try:
            p.wait_for(r"listening on fd \d+ \(shared listener\)")
            pids = set(p.ready_pids(2))
            assert answering_pids(lambda target: get(port, target)) == pids
            p.signal(signal.SIGTERM)
            assert p.wait() == 0
        finally:
            p.close()
