"""Fault injection over real loopback sockets: each fault is handled as DESIGN.md promises.

What ``test_connection.py``/``test_bad_input.py`` already cover is not repeated here (one
trickling client's 408, a streaming handler's send timeout, a reset while streaming, a GET
after half-close, request_timeout's 503). This file adds the listed faults around them:

* header trickle: several tricklers at once all get 408, none before ``header_timeout``,
  while a normal client on another connection is served meanwhile;
* slow body: a body that stalls gets 408 after ``body_timeout`` and the handler never sees a
  truncated body as complete; a body that trickles steadily (each gap < body_timeout) is fine;
* a client that never reads a large static file (sendfile path) or a pile of pipelined
  responses: ``send_timeout`` closes it and its fd is freed;
* reset mid-response on the sendfile path and reset mid-upload: the handler stops, no fd
  leaks, nothing is logged at ERROR;
* half-close after a POST with a body, and with a slow handler: still answered; half-close
  inside a head: closed without a response;
* EMFILE: a server in a subprocess whose RLIMIT_NOFILE is lowered (``prlimit``) below what
  the clients need keeps serving those it has, and the waiting ones once fds free up;
* a handler that hangs: other connections are unaffected, the client leaving cancels it, and
  with ``request_timeout`` it is cancelled (its ``finally`` runs) and answered 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import logging
import os
import resource
import socket
import struct
import tempfile
import time
from collections.abc import Callable, Iterator

import pytest
from test_connection import Raw, echo, fd_baseline, get, read_response, running

from loadtest.runner import ServerProcess
from server.exchange import ClientDisconnected, Exchange
from server.staticfiles import StaticFiles


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


# --- header trickle ------------------------------------------------------------------------


async def test_header_tricklers_get_408_and_others_are_served() -> None:
    timeout = 0.6
    async with running(echo, header_timeout=timeout) as port:
        loop = asyncio.get_running_loop()
        tricklers = [await Raw.open(port) for _ in range(8)]
        started = loop.time()
        for c in tricklers:
            c.writer.write(b"GET /slow HTTP/1.1\r\nHost: t\r\n")
        answers = [asyncio.create_task(c.response()) for c in tricklers]
        normal = await Raw.open(port)
        served = 0
        while not all(a.done() for a in answers):
            for c in tricklers:  # one byte each, well inside any per-read timer
                if not c.writer.is_closing():
                    with contextlib.suppress(ConnectionError):
                        c.writer.write(b"x")
            await normal.send(get(f"/n{served}"))
            assert (await normal.response()).body == f"GET /n{served} ".encode()
            served += 1
            await asyncio.wait(answers, timeout=0.05)
        elapsed = loop.time() - started
        for a, c in zip(answers, tricklers, strict=True):
            r = a.result()
            assert r.status == 408 and r.headers[b"connection"] == b"close"
            assert await c.closed()
        assert elapsed >= timeout * 0.9  # never before the deadline (timer slack aside)
        assert served >= 3  # the normal client was served all along
        await normal.close()


# --- slow body -----------------------------------------------------------------------------


async def test_stalled_body_408_and_handler_never_sees_it_complete() -> None:
    seen: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def reader(ex: Exchange) -> None:
        got = b""
        try:
            while chunk := await ex.receive():
                got += chunk
        except Exception as exc:
            seen.set_result(f"{type(exc).__name__} after {len(got)}")
            raise
        seen.set_result(f"complete with {len(got)}")  # must not happen
        ex.respond(200, [], got)

    async with running(reader, body_timeout=0.5) as port:
        c = await Raw.open(port)
        await c.send(b"POST /u HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n" + b"b" * 10)
        r = await c.response()
        assert r.status == 408 and r.headers[b"connection"] == b"close"
        assert await c.closed()
        outcome = await asyncio.wait_for(seen, 10)
        assert not outcome.startswith("complete"), outcome


async def test_body_trickling_within_body_timeout_completes() -> None:
    async with running(echo, body_timeout=1.0) as port:
        c = await Raw.open(port)
        await c.send(b"POST /t HTTP/1.1\r\nHost: t\r\nContent-Length: 8\r\n\r\n")
        for ch in b"trickled":
            await c.send(bytes([ch]))
            await asyncio.sleep(0.15)  # the fault itself: a slow sender (gap < body_timeout)
        assert (await c.response()).body == b"POST /t trickled"
        await c.close()


# --- a client that never reads ---------------------------------------------------------------


@pytest.fixture
def big_static() -> Iterator[StaticFiles]:
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "big.bin"), "wb") as f:
            f.write(os.urandom(1 << 20) * 16)  # 16 MiB: far more than the socket buffers
        files = StaticFiles(d)
        try:
            yield files
        finally:
            files.close()


def small_rcvbuf_socket(port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    return s


async def wait_closed_by_server(sock: socket.socket, limit: float) -> bool:
    """Drain ``sock`` (non-blocking) until EOF/RST; True if that happened within ``limit``."""
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while loop.time() < deadline:
        try:
            if not sock.recv(1 << 20):
                return True
        except BlockingIOError:
            await asyncio.sleep(0.05)  # polling a plain socket we deliberately do not read
        except ConnectionError:
            return True
    return False


@pytest.mark.parametrize("kind", ["sendfile", "pipelined"])
async def test_client_never_reads_is_closed_by_send_timeout(
    kind: str, big_static: StaticFiles, fd_count: Callable[[], int]
) -> None:
    async def handler(ex: Exchange) -> None:
        if ex.head.path == "/big.bin":
            await big_static(ex)
        else:
            ex.respond(200, [], b"p" * 200_000)

    before = await fd_baseline(fd_count)
    async with running(handler, send_timeout=0.5) as port:
        s = small_rcvbuf_socket(port)
        if kind == "sendfile":
            s.sendall(get("/big.bin"))
        else:
            s.sendall(get("/p") * 64)
        await asyncio.sleep(1.5)  # the fault: a client that reads nothing for 3x send_timeout
        assert await wait_closed_by_server(s, 30), "server kept a non-reading client"
        s.close()
        other = await Raw.open(port)
        await other.send(get("/after"))
        assert (await other.response()).status == 200
        await other.close()
    big_static.close()  # the open-file cache keeps big.bin's fd on purpose
    assert fd_count() == before


# --- reset mid-response / mid-upload -----------------------------------------------------------


def rst_close(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


async def test_reset_during_sendfile(
    big_static: StaticFiles, fd_count: Callable[[], int], caplog: pytest.LogCaptureFixture
) -> None:
    before = await fd_baseline(fd_count)
    with caplog.at_level(logging.WARNING):
        async with running(big_static) as port:
            for _ in range(5):
                s = small_rcvbuf_socket(port)
                s.sendall(get("/big.bin"))
                s.settimeout(10)
                first = await asyncio.to_thread(s.recv, 4096)  # the response has begun
                assert first.startswith(b"HTTP/1.1 200")
                rst_close(s)
            c = await Raw.open(port)
            await c.send(get("/big.bin", b"Range: bytes=0-9\r\n"))
            assert (await c.response()).status == 206
            await c.close()
    big_static.close()
    assert fd_count() == before
    assert errors_logged(caplog) == []


async def test_reset_mid_upload_handler_sees_disconnect(
    fd_count: Callable[[], int], caplog: pytest.LogCaptureFixture
) -> None:
    loop = asyncio.get_running_loop()
    reading = asyncio.Event()
    outcome: asyncio.Future[str] = loop.create_future()

    async def upload(ex: Exchange) -> None:
        total = 0
        try:
            while chunk := await ex.receive():
                total += len(chunk)
                reading.set()
        except ClientDisconnected:
            outcome.set_result(f"disconnected after {total}")
            raise
        outcome.set_result(f"complete {total}")
        ex.respond(200, [], b"%d" % total)

    before = await fd_baseline(fd_count)
    with caplog.at_level(logging.WARNING):
        async with running(upload) as port:
            c = await Raw.open(port)
            await c.send(b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\n")
            await c.send(b"u" * 50_000)
            await reading.wait()
            c.reset()
            result = await asyncio.wait_for(outcome, 10)
            assert result.startswith("disconnected"), result
    assert fd_count() == before
    assert errors_logged(caplog) == []


# --- half-close ----------------------------------------------------------------------------------


async def test_half_close_after_post_and_slow_handler() -> None:
    release = asyncio.Event()

    async def slow_echo(ex: Exchange) -> None:
        body = b""
        while chunk := await ex.receive():
            body += chunk
        if ex.head.path == "/slow":
            await release.wait()
        ex.respond(200, [], body)

    async with running(slow_echo) as port:
        c = await Raw.open(port)
        await c.send(b"POST /p HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello")
        c.writer.write_eof()
        assert (await c.response()).body == b"hello"
        assert await c.closed()
        c = await Raw.open(port)
        await c.send(b"POST /slow HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc")
        c.writer.write_eof()
        reply = asyncio.create_task(c.response())
        done, _ = await asyncio.wait([reply], timeout=0.2)
        assert not done  # the handler is still working after the client's EOF
        release.set()
        assert (await reply).body == b"abc"
        assert await c.closed()


async def test_half_close_inside_head_closes_without_response() -> None:
    async with running(echo) as port:
        c = await Raw.open(port)
        await c.send(b"GET /partial HTTP/1.1\r\nHost: t\r\nX-Inc")
        c.writer.write_eof()
        data = await asyncio.wait_for(c.reader.read(), 10)
        assert data == b"" or data.startswith(b"HTTP/1.1 400"), data
        other = await Raw.open(port)
        await other.send(get())
        assert (await other.response()).status == 200
        await other.close()


# --- a handler that hangs -------------------------------------------------------------------------


async def test_hung_handler_isolated_and_cancelled_when_client_leaves(
    fd_count: Callable[[], int],
) -> None:
    loop = asyncio.get_running_loop()
    entered = asyncio.Event()
    finished: asyncio.Future[str] = loop.create_future()

    async def hang(ex: Exchange) -> None:
        if ex.head.path != "/hang":
            ex.respond(200, [], b"ok")
            return
        entered.set()
        try:
            await asyncio.Event().wait()
        finally:
            finished.set_result("finally ran")

    before = await fd_baseline(fd_count)
    async with running(hang) as port:
        stuck = await Raw.open(port)
        await stuck.send(get("/hang"))
        await entered.wait()
        for i in range(3):  # other connections are served while one handler hangs
            c = await Raw.open(port)
            await c.send(get(f"/{i}"))
            assert (await c.response()).body == b"ok"
            await c.close()
        # the client gives up with a reset: the hung handler is cancelled. (A FIN alone is a
        # half-close, after which a client may still wait for its answer: no cancel then.)
        stuck.reset()
        assert await asyncio.wait_for(finished, 10) == "finally ran"
    assert fd_count() == before


async def test_hung_handler_request_timeout_runs_finally_and_keeps_serving() -> None:
    loop = asyncio.get_running_loop()
    finished: asyncio.Future[str] = loop.create_future()

    async def hang(ex: Exchange) -> None:
        if ex.head.path == "/ok":
            ex.respond(200, [], b"ok")
            return
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            finished.set_result("cancelled")
            raise

    async with running(hang, request_timeout=0.3) as port:
        c = await Raw.open(port)
        await c.send(get("/hang"))
        assert (await c.response()).status == 503
        assert await asyncio.wait_for(finished, 10) == "cancelled"
        other = await Raw.open(port)
        await other.send(get("/ok"))
        assert (await other.response()).body == b"ok"
        await other.close()
        await c.close()


# --- EMFILE at the HTTP server level ---------------------------------------------------------------


def fd_count_of(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def http_get(port: int, path: str = "/plaintext") -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        r.read()
        return r.status
    finally:
        conn.close()


def http_get_retrying(port: int, attempts: int = 5) -> int:
    """``http_get``, retried on a reset or close (a loop shedding load at its fd limit)."""
    for attempt in range(attempts):
        try:
            return http_get(port)
        except (ConnectionError, http.client.RemoteDisconnected):
            if attempt == attempts - 1:
                raise
            time.sleep(0.2)  # give the server a moment to free its fds; nothing to wait on
    raise AssertionError("unreachable")


async def held_client(port: int, release: asyncio.Event, answered: list[int]) -> str:
    """One request on a connection kept open until ``release``; ``ok``, ``closed`` or error.
    Appends to ``answered`` when the response arrived."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /plaintext HTTP/1.1\r\nHost: t\r\n\r\n")
        try:
            r = await asyncio.wait_for(read_response(reader), 60)
        except (asyncio.IncompleteReadError, ConnectionError):
            return "closed"
        answered.append(1)
        await release.wait()
        return "ok" if r.status == 200 else f"status {r.status}"
    finally:
        writer.close()


@pytest.mark.skipif(not hasattr(resource, "prlimit"), reason="needs Linux prlimit")
@pytest.mark.asyncio(loop_factories=["asyncio"])  # the client side; the server's loop varies
@pytest.mark.parametrize("server_loop", ["netpoll", "asyncio", "uvloop"])
async def test_emfile_server_keeps_serving_once_fds_free_up(server_loop: str) -> None:
    """netpoll and asyncio back off and leave the excess connections in the kernel backlog,
    so every client is served once others leave; uvloop (libuv) accepts-and-closes the excess
    while at the limit (libuv's reserved-fd trick), so those clients see a close, never a hang.
    """
    headroom = 12
    extra = ["--loop", server_loop, "--keepalive-timeout", "60", "--header-timeout", "60"]
    with ServerProcess("loadtest.mixed_app:app", extra=extra) as server:
        await asyncio.to_thread(server.wait_ready)
        pid = server.proc.pid
        base = fd_count_of(pid)
        hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)[1]
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (base + headroom, hard))
        try:
            n = headroom * 3  # three times what the server can hold at once
            release = asyncio.Event()
            answered: list[int] = []
            clients = [
                asyncio.create_task(held_client(server.port, release, answered)) for _ in range(n)
            ]
            # the first ones are served and hold their fds; the rest wait (or are dropped)
            await asyncio.wait(clients, timeout=2)
            # (+2: fds the server had open transiently when its base count was taken)
            assert 0 < len(answered) <= headroom + 2, f"limit did not bite: {len(answered)}"
            assert server.proc.poll() is None
            release.set()  # everyone answered leaves as soon as answered: fds free up
            results = await asyncio.wait_for(asyncio.gather(*clients), 90)
            ok = results.count("ok")
            if server_loop == "uvloop":
                assert set(results) <= {"ok", "closed"} and ok >= headroom // 2, results
            else:
                assert results == ["ok"] * n, results
            assert server.proc.poll() is None
            for _ in range(3):  # and new clients are served as usual
                if server_loop == "uvloop":
                    # libuv may still be shedding the last of the wave (accept, close): a
                    # client that races it is reset; the next attempts must be served
                    assert await asyncio.to_thread(http_get_retrying, server.port) == 200
                else:
                    assert await asyncio.to_thread(http_get, server.port) == 200
        finally:
            with contextlib.suppress(ProcessLookupError):
                resource.prlimit(pid, resource.RLIMIT_NOFILE, (hard, hard))
