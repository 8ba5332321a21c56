"""Listening and running: TLS, Unix sockets, inherited fds, pool limits, shutdown, workers."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import until
from test_connection import TEST_CONFIG, Raw, echo, fd_baseline, get, read_response, running

from server.exchange import Exchange
from server.pool import ConnectionPool
from server.serve import loop_factory, serve

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    d = tmp_path_factory.mktemp("tls")
    crt, key = str(d / "c.pem"), str(d / "k.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", crt],
        check=True, capture_output=True,
    )  # fmt: skip
    return crt, key


async def test_tls_with_sendfile_fallback(cert: tuple[str, str], tmp_path: Path) -> None:
    f = tmp_path / "f.bin"
    f.write_bytes(os.urandom(200_000))

    async def handler(ex: Exchange) -> None:
        if ex.head.path == "/file":
            with open(f, "rb") as fh:
                ex.start(200, [], 150_000)
                await ex.sendfile(fh, 10_000, 150_000)
                await ex.end()
        else:
            await echo(ex)

    async with running(handler, ssl_certfile=cert[0], ssl_keyfile=cert[1]) as port:
        ctx = ssl.create_default_context(cafile=cert[0])
        async with httpx.AsyncClient(verify=ctx, base_url=f"https://127.0.0.1:{port}") as client:
            r = await client.post("/x", content=b"tls")
            assert r.text == "POST /x tls"
            r = await client.get("/file")
            assert r.content == f.read_bytes()[10_000:160_000]


async def test_unix_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    stop = asyncio.Event()
    ready: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        serve(echo, TEST_CONFIG.with_(uds=path), ready=ready.set_result, shutdown=stop)
    )
    assert (await ready) == [(path,)]
    r, w = await asyncio.open_unix_connection(path)
    w.write(get("/u"))
    assert (await read_response(r)).body == b"GET /u "
    w.close()
    stop.set()
    await task
    assert not os.path.exists(path)


async def test_inherited_fd() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    port = sock.getsockname()[1]
    async with running(echo, fd=sock.detach()):
        c = await Raw.open(port)
        await c.send(get("/fd"))
        assert (await c.response()).body == b"GET /fd "
        await c.close()


async def test_overload_503() -> None:
    async with running(echo, max_connections=1) as port:
        a = await Raw.open(port)
        await a.send(get())
        await a.response()
        b = await Raw.open(port)
        await b.send(get())
        r = await b.response()
        assert r.status == 503 and r.headers[b"connection"] == b"close"
        await a.send(get("/still"))
        assert (await a.response()).body == b"GET /still "
        await a.close()


async def test_overload_defer_holds_until_slot_frees() -> None:
    async with running(echo, max_connections=1, overload="defer") as port:
        a = await Raw.open(port)
        await a.send(get("/a"))
        await a.response()
        b = await Raw.open(port)
        await b.send(get("/b"))
        waiting = asyncio.create_task(b.response())
        done, _ = await asyncio.wait([waiting], timeout=0.3)
        assert not done  # held while a is open (bounded wait, not ordering)
        await a.close()
        assert (await waiting).body == b"GET /b "
        await b.close()


async def test_pool_reuses_connection_objects() -> None:
    loop = asyncio.get_running_loop()
    pool = ConnectionPool(echo, TEST_CONFIG.with_(max_connections=4))
    server = await loop.create_server(pool, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    for _ in range(5):
        c = await Raw.open(port)
        await c.send(get("/", b"Connection: close\r\n"))
        await c.response()
        assert await c.closed()
        await c.close()
    for _ in range(100):  # until the last connection_lost ran (bounded)
        if not pool.active:
            break
        await asyncio.sleep(0.01)
    assert pool.created == 1 and pool.reused == 4
    assert "created=1" in repr(pool) and "active=0" in repr(pool)
    server.close()
    await server.wait_closed()


async def test_graceful_shutdown_finishes_in_flight(fd_count: Callable[[], int]) -> None:
    entered = asyncio.Event()
    release = asyncio.Event()

    async def slow(ex: Exchange) -> None:
        if ex.head.path == "/slow":
            entered.set()
            await release.wait()
        ex.respond(200, [], b"done")

    before = await fd_baseline(fd_count)
    stop = asyncio.Event()
    ready: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(slow, TEST_CONFIG, ready=ready.set_result, shutdown=stop))
    port = (await ready)[0][1]
    idle = await Raw.open(port)
    await idle.send(get())
    await idle.response()
    busy = await Raw.open(port)
    await busy.send(get("/slow"))
    await entered.wait()
    stop.set()
    assert await idle.closed()  # idle keep-alive connection closed at once
    release.set()
    r = await busy.response()
    assert r.body == b"done" and r.headers[b"connection"] == b"close"
    await task
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)
    await idle.close()
    await busy.close()
    assert fd_count() == before


async def test_graceful_timeout_forces_close() -> None:
    async def stuck(ex: Exchange) -> None:
        await asyncio.Event().wait()

    async with running(stuck, graceful_timeout=0.2) as port:
        c = await Raw.open(port)
        await c.send(get())
    assert await c.closed()


def test_loop_factory_names() -> None:
    assert loop_factory("asyncio") is asyncio.SelectorEventLoop
    assert callable(loop_factory("uvloop")) and callable(loop_factory("netpoll"))
    with pytest.raises(ValueError):
        loop_factory("tornado")


SCRIPT = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, {root!r})
    from server.config import Config
    from server.serve import run

    async def handler(ex):
        ex.respond(200, [], str(os.getpid()).encode())

    def started():
        os.write(1, b"started\\n")

    run(handler, Config(port={port}, workers={workers}, loop={loop!r}, graceful_timeout=2),
        startup=[started])
    """
)


def _spawn(port: int, workers: int = 1, loop: str = "asyncio") -> subprocess.Popen[str]:
    code = SCRIPT.format(root=str(ROOT), port=port, workers=workers, loop=loop)
    return subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_port_in_use_clear_error() -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    p = _spawn(port)
    _out, err = p.communicate(timeout=30)
    taken.close()
    assert p.returncode == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0] and "in use" in lines[0], err


@pytest.mark.parametrize("loop", ["netpoll", "uvloop", "asyncio"])
def test_workers_share_port_and_stop_on_sigterm(loop: str) -> None:
    # Reserve a port for the test's lifetime with a bound (not listening) SO_REUSEPORT socket.
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind(("127.0.0.1", 0))
    port = holder.getsockname()[1]
    p = _spawn(port, workers=2, loop=loop)
    try:
        assert p.stdout is not None
        for _ in range(2):
            assert p.stdout.readline().strip() == "started"
        pids = set()
        for _ in range(200):
            with httpx.Client(timeout=10) as client:
                for _ in range(10):
                    try:
                        pids.add(client.get(f"http://127.0.0.1:{port}/").text)
                        break
                    except httpx.ConnectError:  # a worker announced startup before listening
                        continue
            if len(pids) == 2:
                break
        assert len(pids) == 2 and str(p.pid) not in pids
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=20) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        holder.close()


@pytest.fixture
def pools(monkeypatch: pytest.MonkeyPatch) -> list[ConnectionPool]:
    """Every ConnectionPool made during the test (the server's, to look at its counts)."""
    made: list[ConnectionPool] = []
    init = ConnectionPool.__init__

    def record(self: ConnectionPool, *a: Any, **kw: Any) -> None:
        init(self, *a, **kw)
        made.append(self)

    monkeypatch.setattr(ConnectionPool, "__init__", record)
    return made


async def test_tls_failed_handshakes_take_no_connection_place(
    cert: tuple[str, str], pools: list[ConnectionPool]
) -> None:
    """A TLS handshake that never completes (a TCP probe, plain HTTP to the TLS port, a client
    refusing the certificate) never reaches the protocol: it must not hold one of the
    ``max_connections`` places, or the server ends up answering 503 to everyone."""
    async with running(echo, ssl_certfile=cert[0], ssl_keyfile=cert[1], max_connections=3) as port:
        ctx = ssl.create_default_context(cafile=cert[0])
        for _ in range(4):
            _, w = await asyncio.open_connection("127.0.0.1", port)  # connect, close
            w.close()
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(get("/plain"))  # plain HTTP to the TLS port
            await r.read()
            w.close()
            with pytest.raises(ssl.SSLError):  # the client refuses the certificate
                await asyncio.open_connection("127.0.0.1", port, ssl=ssl.create_default_context())
        async with httpx.AsyncClient(verify=ctx, base_url=f"https://127.0.0.1:{port}") as c:
            for i in range(3):
                assert (await c.get(f"/ok{i}")).text == f"GET /ok{i} "
        [pool] = pools
        await until(lambda: not pool.active)
        assert len(pool.active) == 0


@pytest.mark.parametrize("overload", ["503", "defer"])
async def test_tls_connections_beyond_the_limit(
    cert: tuple[str, str], pools: list[ConnectionPool], overload: str
) -> None:
    """Counted when their handshakes are done, TLS connections still keep max_connections,
    even when they all arrive at once: those beyond it are answered 503, or held until a
    place frees up (``overload="defer"``), as plain ones are."""
    release = asyncio.Event()

    async def held(ex: Exchange) -> None:
        await release.wait()
        await echo(ex)

    async with running(
        held, ssl_certfile=cert[0], ssl_keyfile=cert[1], max_connections=2, overload=overload
    ) as port:
        ctx = ssl.create_default_context(cafile=cert[0])

        async def one(i: int) -> int:
            r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
            w.write(get(f"/{i}", b"Connection: close\r\n"))
            answer = await r.read()
            w.close()
            return int(answer.split(b" ", 2)[1])

        tasks = [asyncio.create_task(one(i)) for i in range(6)]
        [pool] = pools
        await until(lambda: pool.refused + pool.held == 4)
        assert len(pool.active) == 2
        release.set()
        statuses = sorted(await asyncio.gather(*tasks))
        assert statuses == ([200] * 6 if overload == "defer" else [200, 200, 503, 503, 503, 503])


async def test_tls_handshake_has_header_timeout(cert: tuple[str, str]) -> None:
    """A client that connects to the TLS port and says nothing is closed after
    ``header_timeout`` (asyncio's own default would hold it for 60 s)."""
    async with running(echo, ssl_certfile=cert[0], ssl_keyfile=cert[1], header_timeout=0.5) as port:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        t0 = asyncio.get_running_loop().time()
        assert await asyncio.wait_for(r.read(), 10) == b""
        assert asyncio.get_running_loop().time() - t0 < 5
        w.close()
