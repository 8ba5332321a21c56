"""Pipe-backed bodies (PipeResponse -> exchange.splice) and zero-copy evidence, every loop."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from server import App, Request, Response
from server.response import PipeResponse
from server.testing import live_server

pytestmark = pytest.mark.timeout(60)

N = 3 * 1024 * 1024 + 5
PRODUCER = (
    "import sys\n"
    "n = int(sys.argv[1])\n"
    "block = bytes(range(256)) * 4096\n"
    "while n > 0:\n"
    "    k = min(n, len(block))\n"
    "    sys.stdout.buffer.write(block[:k]); n -= k\n"
)


def expected(n: int) -> bytes:
    block = bytes(range(256)) * 4096
    return (block * (n // len(block) + 1))[:n]


def producer(n: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", PRODUCER, str(n)], stdout=subprocess.PIPE)


def pipe_app(procs: list[subprocess.Popen[bytes]]) -> App:
    app = App()

    @app.get("/known")
    async def known(request: Request) -> Response:
        p = producer(N)
        procs.append(p)
        return PipeResponse(p.stdout, content_length=N)

    @app.get("/chunked")
    async def chunked(request: Request) -> Response:
        p = producer(N)
        procs.append(p)
        return PipeResponse(p.stdout)

    @app.get("/short")
    async def short(request: Request) -> Response:
        p = producer(1000)
        procs.append(p)
        return PipeResponse(p.stdout, content_length=N)

    return app


async def test_pipe_bodies() -> None:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        async with live_server(pipe_app(procs)) as url, httpx.AsyncClient(base_url=url) as c:
            r = await c.get("/known")
            assert r.status_code == 200 and r.headers["content-length"] == str(N)
            assert r.content == expected(N)
            r = await c.get("/chunked")
            assert r.headers["transfer-encoding"] == "chunked" and r.content == expected(N)
            r = await c.head("/known")
            assert r.status_code == 200 and r.content == b""
            loop = asyncio.get_running_loop()
            if hasattr(loop, "stats"):  # netpoll: the bytes went through os.splice
                assert loop.stats()["splice"] > 0
            host, port = url.removeprefix("http://").rsplit(":", 1)

            def short_client() -> tuple[int, bool]:
                s = socket.create_connection((host, int(port)), timeout=20)
                s.sendall(b"GET /short HTTP/1.1\r\nHost: x\r\n\r\n")
                got = b""
                while True:
                    try:
                        chunk = s.recv(65536)
                    except ConnectionResetError:
                        break
                    if not chunk:
                        break
                    got += chunk
                s.close()
                return len(got.partition(b"\r\n\r\n")[2]), True

            body_len, closed = await asyncio.to_thread(short_client)
            assert closed and body_len == 1000  # the promised length was not met: closed
    finally:
        for p in procs:
            p.wait(10)


@pytest.mark.asyncio(loop_factories=["netpoll"])
async def test_static_uses_sendfile_on_netpoll(tmp_path: Path) -> None:
    (tmp_path / "big.bin").write_bytes(b"z" * (2 * 1024 * 1024))
    app = App()
    app.static("/s", tmp_path)
    async with live_server(app) as url, httpx.AsyncClient(base_url=url) as c:
        before = asyncio.get_running_loop().stats()["sendfile"]  # type: ignore[attr-defined]
        r = await c.get("/s/big.bin")
        assert r.content == b"z" * (2 * 1024 * 1024)
        assert asyncio.get_running_loop().stats()["sendfile"] > before  # type: ignore[attr-defined]


async def test_asgi_pathsend_shares_the_static_path(tmp_path: Path) -> None:
    import os

    data = os.urandom(300_000)
    (tmp_path / "f.bin").write_bytes(data)
    os.mkfifo(tmp_path / "fifo")

    async def app(scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
        if scope["type"] != "http":
            return
        name = "fifo" if scope["path"] == "/fifo" else "f.bin"
        headers = [(b"content-type", b"application/octet-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})  # type: ignore[operator]
        await send({"type": "http.response.pathsend", "path": str(tmp_path / name)})  # type: ignore[operator]

    async with live_server(app) as url, httpx.AsyncClient(base_url=url) as c:
        r = await c.get("/f")
        assert r.content == data and r.headers["content-length"] == str(len(data))
        r = await c.head("/f")
        assert r.content == b"" and r.headers["content-length"] == str(len(data))
        r = await c.get("/fifo")  # refused without blocking the loop on open()
        assert r.status_code == 500
        assert (await c.get("/f")).content == data  # and the server carries on


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    d = tmp_path_factory.mktemp("cert")
    crt, key = str(d / "c.pem"), str(d / "k.pem")
    args = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"]
    subprocess.run(
        ["openssl", *args, "-keyout", key, "-out", crt],
        check=True,
        capture_output=True,
    )
    return crt, key


async def test_static_over_tls_uses_the_fallback(cert: tuple[str, str], tmp_path: Path) -> None:
    import os
    import ssl

    data = os.urandom(2 * 1024 * 1024 + 3)
    (tmp_path / "big.bin").write_bytes(data)
    app = App()
    app.static("/s", tmp_path)
    ctx = ssl.create_default_context(cafile=cert[0])
    async with live_server(app, ssl_certfile=cert[0], ssl_keyfile=cert[1]) as url:
        url = url.replace("http://127.0.0.1", "https://localhost")
        async with httpx.AsyncClient(base_url=url, verify=ctx) as c:
            assert (await c.get("/s/big.bin")).content == data
            r = await c.get("/s/big.bin", headers={"range": "bytes=10-19,-5"})
            assert r.status_code == 206 and data[10:20] in r.content and data[-5:] in r.content
