"""The HTTP/1.1 connection layer over real loopback sockets, on netpoll, uvloop and asyncio.

The helpers at the top (``running``, ``Raw``, ``read_response``) are imported by
``test_bad_input.py`` and ``test_serve.py`` too.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import http.client
import logging
import os
import socket
import struct
import tempfile
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from helpers import until

from server.config import Config
from server.exchange import ClientDisconnected, Exchange, RequestHead
from server.serve import serve

Handler = Callable[[Exchange], Awaitable[None]]
TEST_CONFIG = Config(port=0, graceful_timeout=2.0)


@contextlib.asynccontextmanager
async def running(
    handler: Handler, config: Config = TEST_CONFIG, **changes: Any
) -> AsyncIterator[int]:
    """Serve ``handler`` on 127.0.0.1:<ephemeral>; yield the port; shut down on exit."""
    cfg = config.with_(port=0, **changes)
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[list[tuple[Any, ...]]] = loop.create_future()
    stop = asyncio.Event()
    task = asyncio.create_task(serve(handler, cfg, ready=ready.set_result, shutdown=stop))
    await asyncio.wait([ready, task], return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()
    try:
        yield ready.result()[0][1]
    finally:
        stop.set()
        await task


@dataclass
class Response:
    status: int
    headers: dict[bytes, bytes]
    body: bytes
    head: bytes


async def read_response(reader: asyncio.StreamReader, *, head_request: bool = False) -> Response:
    """Read one response (Content-Length, chunked or close-delimited)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ")[1])
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        if line:
            k, v = line.split(b":", 1)
            headers[k.strip().lower()] = v.strip()
    if head_request or status in (100, 204, 304):
        return Response(status, headers, b"", head)
    if headers.get(b"transfer-encoding") == b"chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            body += await reader.readexactly(size)
            assert await reader.readexactly(2) == b"\r\n"
        return Response(status, headers, body, head)
    if b"content-length" in headers:
        return Response(
            status, headers, await reader.readexactly(int(headers[b"content-length"])), head
        )
    return Response(status, headers, await reader.read(), head)


class Raw:
    """A raw client connection (asyncio streams) for byte-exact requests."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Raw:
        r, w = await asyncio.open_connection("127.0.0.1", port, limit=1 << 24)
        return cls(r, w)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def response(self, **kw: Any) -> Response:
        return await asyncio.wait_for(read_response(self.reader, **kw), 10)

    async def closed(self) -> bool:
        """True if the server closes the connection (EOF or reset) with nothing more sent."""
        try:
            data = await asyncio.wait_for(self.reader.read(65536), 10)
        except ConnectionResetError:
            return True
        return data == b""

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()

    def reset(self) -> None:
        """Close with RST (SO_LINGER 0)."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()


@contextlib.asynccontextmanager
async def unread_pipeline(
    port: int, data: bytes, made: Callable[[], int]
) -> AsyncIterator[tuple[int, asyncio.StreamReader]]:
    """A client that pipelines ``data`` with a 4 KiB receive buffer and reads nothing for
    0.5 s: yields ``made()`` at that moment (the work the server did meanwhile) and a reader
    for the answers."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, ("127.0.0.1", port))
        await loop.sock_sendall(sock, data)
        await asyncio.sleep(0.5)
        done = made()
        reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 24)
        try:
            yield done, reader
        finally:
            writer.close()
    finally:
        sock.close()


async def fd_baseline(fd_count: Callable[[], int]) -> int:
    """fd count after one full server/client cycle (loops open some fds lazily, e.g. uvloop's
    resolver thread pool), so that before/after comparisons see only leaks."""
    async with running(echo) as port:
        c = await Raw.open(port)
        await c.send(get())
        await c.response()
        await c.close()
        async with httpx.AsyncClient() as client:
            await client.get(f"http://127.0.0.1:{port}/")
    return fd_count()


def get(path: str = "/", extra: bytes = b"") -> bytes:
    return b"GET " + path.encode() + b" HTTP/1.1\r\nHost: t\r\n" + extra + b"\r\n"


async def echo(ex: Exchange) -> None:
    """Echo method, path and body; header ``x-status`` chooses the status."""
    body = b""
    while chunk := await ex.receive():
        body += chunk
    status = int(ex.head.get_header(b"x-status", b"200"))  # type: ignore[arg-type]
    ex.respond(
        status,
        [(b"content-type", b"text/plain")],
        f"{ex.head.method} {ex.head.path} ".encode() + body,
    )


# --- keep-alive, pipelining, versions ---


async def test_keep_alive_with_httpx(fd_count: Callable[[], int]) -> None:
    before = await fd_baseline(fd_count)
    async with running(echo) as port:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            for i in range(5):
                r = await client.post(f"/p{i}", content=b"x" * i)
                assert r.status_code == 200 and r.text == f"POST /p{i} " + "x" * i
                assert "date" in r.headers and r.headers["server"] == "netpoll"
                assert r.headers.get("connection") is None
    assert fd_count() == before


async def test_pipelined_in_order() -> None:
    async def slow_first(ex: Exchange) -> None:
        if ex.head.path == "/0":
            await asyncio.sleep(0.01)  # a slower first handler must not reorder responses
        ex.respond(200, [], ex.head.path.encode())

    async with running(slow_first) as port:
        c = await Raw.open(port)
        await c.send(b"".join(get(f"/{i}") for i in range(40)))
        for i in range(40):
            assert (await c.response()).body == f"/{i}".encode()
        await c.close()


async def test_http10_and_connection_close() -> None:
    async with running(echo) as port:
        c = await Raw.open(port)
        await c.send(b"GET /a HTTP/1.0\r\n\r\n")
        r = await c.response()
        assert r.status == 200 and r.headers[b"connection"] == b"close" and await c.closed()
        c = await Raw.open(port)
        await c.send(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" * 2)
        for _ in range(2):
            r = await c.response()
            assert r.headers[b"connection"] == b"keep-alive"
        await c.close()
        c = await Raw.open(port)
        await c.send(get("/c", b"Connection: close\r\n") + get("/ignored"))
        r = await c.response()
        assert r.body == b"GET /c " and r.headers[b"connection"] == b"close" and await c.closed()


async def test_max_requests_per_connection() -> None:
    async with running(echo, max_requests_per_connection=3) as port:
        c = await Raw.open(port)
        await c.send(get() * 5)
        for _ in range(2):
            assert b"connection" not in (await c.response()).headers
        assert (await c.response()).headers[b"connection"] == b"close"
        assert await c.closed()


async def test_upgrade_request_is_answered_and_the_connection_goes_on() -> None:
    """We do not switch protocols (RFC 9110 7.8): an Upgrade request is answered as HTTP/1.1
    and the connection goes on (what was pipelined after it is answered), as nginx and Go
    do: a client offering h2c (``curl --http2`` over http://) keeps its connection."""
    async with running(echo) as port:
        c = await Raw.open(port)
        await c.send(get("/ws", b"Connection: upgrade\r\nUpgrade: websocket\r\n") + get("/next"))
        r = await c.response()
        assert r.status == 200 and r.body == b"GET /ws " and b"connection" not in r.headers
        assert (await c.response()).body == b"GET /next "
        await c.send(get("/again"))
        assert (await c.response()).body == b"GET /again "
        await c.close()


async def test_upgrade_request_with_a_body_is_answered_with_it() -> None:
    """An h2c upgrade of a POST (what ``curl --http2 -d`` sends over http://): we stay on
    HTTP/1.1, the handler gets the whole body, the request after it is answered too."""
    async with running(echo) as port:
        c = await Raw.open(port)
        await c.send(
            b"POST /form HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, HTTP2-Settings\r\n"
            b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n"
            b"Content-Length: 11\r\n\r\nhello world" + get("/after")
        )
        r = await c.response()
        assert r.status == 200 and r.body == b"POST /form hello world"
        assert (await c.response()).body == b"GET /after "
        await c.close()


async def test_max_requests_cuts_a_pipelined_batch() -> None:
    """Repeated heads are taken from the parser's head cache in batches; the request that
    reaches max_requests_per_connection is still the last one answered (and run)."""
    ran: list[bytes] = []

    async def counted(ex: Exchange) -> None:
        ran.append(ex.head.raw_path)
        ex.respond(200, [], b"ok")

    async with running(counted, max_requests_per_connection=4) as port:
        c = await Raw.open(port)
        await c.send(get("/p"))  # the head is cached from here on
        assert (await c.response()).body == b"ok"
        await c.send(get("/p") * 8)
        for _ in range(2):
            assert b"connection" not in (await c.response()).headers
        assert (await c.response()).headers[b"connection"] == b"close"
        assert await c.closed()
    assert ran == [b"/p"] * 4


async def test_http_client_head_and_1_0_stream() -> None:
    async def stream(ex: Exchange) -> None:
        ex.start(200, [(b"x-kind", b"stream")])
        await ex.write(b"part1-")
        await ex.write(b"")
        await ex.write(b"part2")
        await ex.end()

    async with running(stream) as port:

        def client() -> list[Any]:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            c.request("GET", "/")
            r1 = c.getresponse()
            b1 = r1.read()
            c.request("HEAD", "/")
            r2 = c.getresponse()
            b2 = r2.read()
            return [r1.getheader("transfer-encoding"), b1, r2.getheader("transfer-encoding"), b2]

        assert await asyncio.to_thread(client) == ["chunked", b"part1-part2", "chunked", b""]
        c = await Raw.open(port)
        await c.send(b"GET / HTTP/1.0\r\n\r\n")
        r = await c.response()
        assert r.body == b"part1-part2" and b"transfer-encoding" not in r.headers


async def test_streamed_body_of_204_and_304_is_never_sent(tmp_path: Any) -> None:
    """A 204 or 304 ends at its head (RFC 9112 6.3): a handler that streams a body anyway
    (write, sendfile, end) has it dropped, as a whole body given to respond() is, so the next
    response on the connection starts right after the head."""
    path = os.path.join(tmp_path, "f")
    with open(path, "wb") as f:
        f.write(b"file-bytes")

    async def stream(ex: Exchange) -> None:
        status = int(ex.head.path[1:]) if ex.head.path[1:].isdigit() else 200
        ex.start(status, [(b"x-kind", b"stream")])
        await ex.write(b"part1-")
        with open(path, "rb") as f:
            await ex.sendfile(f, 0, 10)
        await ex.write(b"part2")
        await ex.end()

    async with running(stream) as port:
        c = await Raw.open(port)
        await c.send(get("/204") + get("/304") + get("/ok") + get("/204"))
        for status in (204, 304, 200, 204):
            r = await c.response()  # each head starts right where the one before ended
            assert r.head.startswith(b"HTTP/1.1 %d " % status), r.head
            assert r.headers[b"x-kind"] == b"stream"
            if status != 200:
                assert b"transfer-encoding" not in r.headers
                assert b"content-length" not in r.headers
            else:
                assert r.body == b"part1-file-bytespart2"
        await c.send(get("/ok"))
        r = await c.response()
        assert r.head.startswith(b"HTTP/1.1 200 ") and r.body == b"part1-file-bytespart2"
        await c.close()


async def test_head_same_headers_no_body() -> None:
    async with running(echo) as port:
        c = await Raw.open(port)
        await c.send(get("/x") + b"HEAD /x HTTP/1.1\r\nHost: t\r\n\r\n" + get("/y"))
        g = await c.response()
        h = await c.response(head_request=True)
        assert h.headers[b"content-length"] == b"8" and g.body == b"GET /x "
        assert (await c.response()).body == b"GET /y "
        await c.close()


# --- request bodies ---


async def test_chunked_request_body_and_backpressure() -> None:
    seen: list[int] = []

    async def slow_reader(ex: Exchange) -> None:
        total = 0
        while chunk := await ex.receive():
            total += len(chunk)
            seen.append(len(chunk))
            await asyncio.sleep(0)
        ex.respond(200, [], str(total).encode())

    async with running(slow_reader, max_body_size=64 << 20) as port:
        c = await Raw.open(port)
        await c.send(b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        piece = b"y" * 65536
        for _ in range(128):  # 8 MiB
            c.writer.write(b"10000\r\n" + piece + b"\r\n")
        c.writer.write(b"0\r\n\r\n")
        await c.writer.drain()
        r = await c.response()
        assert r.body == str(128 * 65536).encode() and b"connection" not in r.headers
        await c.send(get())  # the connection goes on after a big chunked body
        assert (await c.response()).body == b"0"
        await c.close()


async def test_http_client_chunked_uploads_keep_the_connection() -> None:
    """http.client's chunked uploads (``encode_chunked``) of any size, whether the handler reads
    the body or not, and the next requests on the same connection: each gets its own answer
    (a chunked body is never counted as chunk framing)."""
    async with running(echo) as port:

        def client() -> list[tuple[int, int]]:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            got = []
            for size in (10, 4127, 8000, 70000):
                body = b"c" * size
                pieces = (body[i : i + 3000] for i in range(0, size, 3000))
                c.request("POST", "/u", body=pieces, encode_chunked=True)
                r = c.getresponse()
                got.append((r.status, len(r.read())))
                c.request("GET", "/after")
                r = c.getresponse()
                got.append((r.status, len(r.read())))
            c.close()
            return got

        got = await asyncio.to_thread(client)
        assert got == [x for size in (10, 4127, 8000, 70000) for x in ((200, 8 + size), (200, 11))]


async def test_expect_100_continue() -> None:
    async with running(echo) as port:
        c = await Raw.open(port)
        await c.send(
            b"POST /e HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n"
        )
        line = await asyncio.wait_for(c.reader.readuntil(b"\r\n\r\n"), 10)
        assert line == b"HTTP/1.1 100 Continue\r\n\r\n"
        await c.send(b"body")
        assert (await c.response()).body == b"POST /e body"
        await c.close()


async def test_unread_body_drained_or_closed() -> None:
    async def ignore_body(ex: Exchange) -> None:
        ex.respond(200, [], b"ok")

    async with running(ignore_body, max_drain_body=1024) as port:
        c = await Raw.open(port)
        body = b"z" * 1000
        await c.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n" + body + get())
        assert b"connection" not in (await c.response()).headers
        assert (await c.response()).status == 200
        await c.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n")
        r = await c.response()
        assert r.headers[b"connection"] == b"close" and await c.closed()


async def test_disconnect_mid_body_raises() -> None:
    got: asyncio.Future[BaseException | bytes] = asyncio.get_running_loop().create_future()

    async def reader(ex: Exchange) -> None:
        try:
            while await ex.receive():
                pass
            got.set_result(b"complete?!")
        except ClientDisconnected as exc:
            got.set_result(exc)
            raise

    async with running(reader) as port:
        c = await Raw.open(port)
        await c.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nonly-some")
        await c.close()
        assert isinstance(await asyncio.wait_for(got, 10), ClientDisconnected)


async def test_half_close_still_answered() -> None:
    async with running(echo) as port:
        c = await Raw.open(port)
        await c.send(get("/h1") + get("/h2"))
        c.writer.write_eof()
        assert (await c.response()).body == b"GET /h1 "
        assert (await c.response()).body == b"GET /h2 "
        assert await c.closed()


# --- responses: streaming, flow control, sendfile ---


async def test_slow_reader_pauses_handler() -> None:
    blocked = asyncio.Event()
    total = 64 << 20

    async def big(ex: Exchange) -> None:
        ex.start(200, [], content_length=total)
        chunk = b"w" * (1 << 20)
        for _ in range(total >> 20):
            write = asyncio.ensure_future(ex.write(chunk))
            done, _ = await asyncio.wait([write], timeout=0.5)
            if not done:
                blocked.set()  # the client is not reading: write waits for the drain
            await write
        await ex.end()

    async with running(big) as port:
        c = await Raw.open(port)
        await c.send(get())
        await asyncio.wait_for(blocked.wait(), 20)
        r = await c.response()
        assert len(r.body) == total
        await c.close()


@pytest.mark.parametrize("length", [True, False])
async def test_sendfile(length: bool) -> None:
    data = os.urandom(300_000)
    with tempfile.TemporaryFile() as f:
        f.write(data)
        f.flush()

        async def send(ex: Exchange) -> None:
            ex.start(
                200, [(b"content-type", b"application/octet-stream")], 200_000 if length else None
            )
            await ex.sendfile(f, 50_000, 100_000)
            await ex.sendfile(f, 150_000, 100_000)
            await ex.end()

        async with running(send) as port:
            c = await Raw.open(port)
            await c.send(get() + get())
            for _ in range(2):
                r = await c.response()
                assert r.body == data[50_000:250_000]
            await c.close()


async def test_current_task_inside_handler() -> None:
    async def task_info(ex: Exchange) -> None:
        ex.respond(200, [], b"yes" if asyncio.current_task() is not None else b"no")

    async with running(task_info) as port:
        c = await Raw.open(port)
        await c.send(get())
        assert (await c.response()).body == b"yes"
        await c.close()


async def test_handler_returning_a_generator_based_coroutine_or_nothing_awaitable() -> None:
    """Handlers are called and their result driven like ``await`` would: an ``async def``
    coroutine, a generator-based one (``types.coroutine``) that suspends or not, and, as a
    handler bug, a result that is not awaitable (500, the connection stays usable)."""

    @types.coroutine
    def gen_handler(ex: Exchange) -> Generator[Any, None, None]:
        if ex.head.path == "/wait":
            yield from asyncio.sleep(0.01).__await__()
        ex.respond(200, [], b"gen " + ex.head.path.encode())

    def broken(ex: Exchange) -> None:
        return None

    def handler(ex: Exchange) -> Any:
        return broken(ex) if ex.head.path == "/broken" else gen_handler(ex)

    async with running(handler) as port:
        c = await Raw.open(port)
        for path in ("/now", "/wait", "/broken", "/after"):
            await c.send(get(path))
            r = await c.response()
            if path == "/broken":
                assert r.status == 500
            else:
                assert (r.status, r.body) == (200, b"gen " + path.encode())
        await c.close()


_request_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_var", default="unset")


async def test_each_request_has_its_own_context() -> None:
    """Like a task per request (uvicorn, aiohttp): a context variable a handler sets survives
    its awaits and is not seen by the next request, whether handlers complete without
    suspending, suspend, or wait in a pipelined queue; variables set around the server are."""
    _request_var.set("server")  # the test's context: the server task copies it

    async def handler(ex: Exchange) -> None:
        before = _request_var.get()
        _request_var.set(ex.head.path)
        if ex.head.path.startswith("/wait"):
            await asyncio.sleep(0.01)  # suspends: the rest runs on the worker task
        ex.respond(200, [], f"{before} {_request_var.get()}".encode())

    async with running(handler) as port:
        c = await Raw.open(port)
        for path in ("/a", "/wait1", "/b", "/wait2", "/c"):
            await c.send(get(path))
            assert (await c.response()).body == f"server {path}".encode()
        for paths in (
            ("/wait3", "/d", "/wait4", "/e"),  # queued behind a suspended handler
            ("/f", "/g", "/h"),  # a batch of handlers run inline, one after the other
        ):
            await c.send(b"".join(get(p) for p in paths))
            for path in paths:
                assert (await c.response()).body == f"server {path}".encode()
        await c.close()
    assert _request_var.get() == "server"


async def test_plain_callable_handler_runs_in_the_request_context() -> None:
    """A handler that is a plain callable returning a coroutine (a wrapper object, a
    decorator) runs its synchronous part in the request's context too, as
    ``asyncio.create_task(handler(ex))`` would have it: the coroutine sees what that part set,
    and the next request does not. If that part raises, the answer is a 500 and the connection
    goes on, as for an exception in the coroutine."""
    _request_var.set("server")

    class Wrapper:
        def __call__(self, ex: Exchange) -> Awaitable[None]:
            before = _request_var.get()
            _request_var.set(ex.head.path)
            if ex.head.path.startswith("/raise"):
                raise RuntimeError("broken wrapper")
            return self.inner(ex, before)

        async def inner(self, ex: Exchange, before: str) -> None:
            if ex.head.path.startswith("/wait"):
                await asyncio.sleep(0.01)
            ex.respond(200, [], f"{before} {_request_var.get()}".encode())

    async with running(Wrapper()) as port:
        c = await Raw.open(port)
        for path in ("/a", "/wait1", "/b", "/raise1", "/c"):
            await c.send(get(path))
            r = await c.response()
            if path.startswith("/raise"):
                assert r.status == 500
            else:
                assert r.body == f"server {path}".encode()
        for paths in (("/wait2", "/d", "/raise2", "/e"), ("/f", "/g", "/h")):
            await c.send(b"".join(get(p) for p in paths))
            for path in paths:
                r = await c.response()
                if path.startswith("/raise"):
                    assert r.status == 500
                else:
                    assert r.body == f"server {path}".encode()
        await c.close()
    assert _request_var.get() == "server"


async def test_static_mounts_keep_each_request_in_its_own_context(tmp_path: Any) -> None:
    """Behind ``--static`` mounts (which hand back the inner handler's coroutine, outside the
    request's context when that handler is an ``async def``), a handler's context variables
    are still its request's own; a plain-callable inner handler still runs its synchronous
    part in the request's context. Mount and app answers interleave correctly on one
    keep-alive connection, also when the mounts' per-path memo is cleared in between."""
    from server.cli import StaticMounts
    from server.worker import only_makes_a_coroutine

    (tmp_path / "f.txt").write_bytes(b"file")
    cfg = TEST_CONFIG.with_(static=(("/files", str(tmp_path)),))
    _request_var.set("server")

    async def handler(ex: Exchange) -> None:
        before = _request_var.get()
        _request_var.set(ex.head.path)
        if ex.head.path.startswith("/wait"):
            await asyncio.sleep(0.01)
        ex.respond(200, [], f"{before} {_request_var.get()}".encode())

    class Wrapper:  # a sync callable: what it sets is seen by its coroutine, not the next request
        def __call__(self, ex: Exchange) -> Awaitable[None]:
            before = _request_var.get()
            _request_var.set(ex.head.path)
            return self.inner(ex, before)

        async def inner(self, ex: Exchange, before: str) -> None:
            ex.respond(200, [], f"{before} {_request_var.get()}".encode())

    for inner, marked in ((handler, True), (Wrapper(), False)):
        mounts = StaticMounts(inner, cfg)
        assert only_makes_a_coroutine(mounts.__call__) is marked
        mounts._where.limit = 3  # cleared every 3 paths: answers must not depend on it
        async with running(mounts, cfg) as port:
            c = await Raw.open(port)
            for i, path in enumerate(("/a", "/files/f.txt", "/wait1", "/b", "/files/f.txt") * 3):
                await c.send(get(path if i % 5 != 3 else f"/b{i}"))
                r = await c.response()
                if path.startswith("/files/"):
                    assert (r.status, r.body) == (200, b"file")
                else:
                    want = path if i % 5 != 3 else f"/b{i}"
                    assert (r.status, r.body) == (200, f"server {want}".encode()), (path, r)
            await c.close()
        assert len(mounts._where.memo) <= 3
    assert _request_var.get() == "server"


async def test_request_context_survives_reading_the_body() -> None:
    """A handler that resumes reading (a body bigger than the buffered high-water mark) must
    not make later requests start from its context (stock asyncio's resume_reading makes a new
    reader handle in the caller's context)."""

    async def handler(ex: Exchange) -> None:
        before = _request_var.get()
        _request_var.set(ex.head.path)
        await asyncio.sleep(0.05)  # let the body pile up: reading pauses
        size = 0
        while chunk := await ex.receive():
            size += len(chunk)
        ex.respond(200, [], f"{before} {size}".encode())

    async with running(handler) as port:
        c = await Raw.open(port)
        body = b"x" * 600_000
        await c.send(b"POST /big HTTP/1.1\r\nHost: t\r\nContent-Length: 600000\r\n\r\n" + body)
        assert (await c.response()).body == b"unset 600000"
        await c.send(get("/next"))
        assert (await c.response()).body == b"unset 0"
        await c.close()


@pytest.mark.parametrize("where", ["first step", "second request"])
async def test_handler_cancelling_its_own_task(where: str) -> None:
    """asyncio.current_task().cancel() in a handler (what a timeout does): the handler gets the
    CancelledError at its next await, whether or not the connection's worker task had taken
    over yet, may catch it and answer; the connection goes on serving."""

    async def handler(ex: Exchange) -> None:
        if ex.head.path == "/cancel":
            task = asyncio.current_task()
            assert task is not None
            task.cancel()
            try:
                await asyncio.sleep(0)
            except asyncio.CancelledError:
                ex.respond(200, [], b"cancelled %d" % task.cancelling())
                return
            ex.respond(200, [], b"not cancelled")
            return
        await asyncio.sleep(0)
        ex.respond(200, [], b"ok %d" % asyncio.current_task().cancelling())  # type: ignore[union-attr]

    async with running(handler) as port:
        c = await Raw.open(port)
        if where == "second request":
            await c.send(get("/"))
            assert (await c.response()).body == b"ok 0"
        await c.send(get("/cancel"))
        r = await asyncio.wait_for(c.response(), 5)
        assert r.body == b"cancelled 1"  # as with a task per request
        await c.send(get("/"))
        assert (await asyncio.wait_for(c.response(), 5)).body == b"ok 0"
        await c.close()


async def test_stale_cancel_does_not_reach_the_next_request() -> None:
    """A handler that cancels its own task and finishes without awaiting again (inline or on
    the worker, with the worker idle or not started yet) leaves no cancel for the pipelined
    request after it, as with a task per request."""

    async def handler(ex: Exchange) -> None:
        if ex.head.path.startswith("/w"):
            await asyncio.sleep(0)  # on the worker from here
        if ex.head.path.endswith("cancel"):
            asyncio.current_task().cancel()  # type: ignore[union-attr]
            ex.respond(200, [], b"cancel")
            return
        await asyncio.sleep(0)
        ex.respond(200, [], b"ok")

    async with running(handler) as port:
        for warm in (False, True):
            for first in ("/cancel", "/wcancel"):
                c = await Raw.open(port)
                if warm:  # the worker exists and waits for a job
                    await c.send(get("/w") + get("/w"))
                    assert [(await c.response()).body for _ in range(2)] == [b"ok", b"ok"]
                await c.send(get(first) + get("/b") + get("/c"))
                bodies = [(await asyncio.wait_for(c.response(), 5)).body for _ in range(3)]
                assert bodies == [b"cancel", b"ok", b"ok"], (warm, first)
                await c.close()


async def test_cancel_before_the_worker_started_then_client_gone() -> None:
    """A handler cancels its own task in its inline first step and the connection is lost
    before the worker ever ran: the handler still gets the CancelledError (not a GeneratorExit
    from garbage collection) and its finally block runs."""
    seen: list[str] = []

    async def handler(ex: Exchange) -> None:
        asyncio.current_task().cancel()  # type: ignore[union-attr]
        ex._conn._transport.abort()  # type: ignore[attr-defined]
        try:
            await asyncio.sleep(0)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise
        except GeneratorExit:
            seen.append("generatorexit")
            raise
        finally:
            seen.append("finally")

    async with running(handler) as port:
        c = await Raw.open(port)
        await c.send(get("/x"))
        assert await c.closed()
        await asyncio.sleep(0.1)
        await c.close()
    assert seen == ["cancelled", "finally"]


async def test_request_timeout_applies_to_pipelined_requests_run_by_the_worker() -> None:
    async def handler(ex: Exchange) -> None:
        await asyncio.sleep(0.01 if ex.head.path == "/a" else 3)
        ex.respond(200, [], b"done")

    async with running(handler, request_timeout=0.3) as port:
        c = await Raw.open(port)
        await c.send(get("/a") + get("/hang"))
        assert (await c.response()).body == b"done"
        assert (await asyncio.wait_for(c.response(), 2)).status == 503
        await c.close()


# --- timeouts ---


async def test_keepalive_idle_closes_silently() -> None:
    async with running(echo, keepalive_timeout=0.3) as port:
        c = await Raw.open(port)
        await c.send(get())
        await c.response()
        assert await c.closed()


async def test_keepalive_after_idle_second_parser_and_worker_released() -> None:
    """After a second idle the connection lets its worker task and llhttp parser go; the next
    requests (a plain one and one whose handler suspends) are parsed and answered as before."""
    from server import connection as connection_module

    async def slow(ex: Exchange) -> None:
        await asyncio.sleep(0)  # suspends: runs on the worker task
        await echo(ex)

    async with running(slow) as port:
        c = await Raw.open(port)
        await c.send(get("/one"))
        assert (await c.response()).status == 200
        await asyncio.sleep(connection_module._WORKER_IDLE + 0.3)  # the idle time is the point
        await c.send(
            get("/two") + b"POST /three HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc"
        )
        two, three = await c.response(), await c.response()
        assert (two.status, three.status) == (200, 200)
        assert b"/two" in two.body and b"/three" in three.body and b"abc" in three.body


async def test_send_timeout_aborts_non_reader() -> None:
    outcome: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def flood(ex: Exchange) -> None:
        ex.start(200, [])
        try:
            while True:
                await ex.write(b"f" * 65536)
        except ClientDisconnected:
            outcome.set_result("disconnected")
            raise

    async with running(flood, send_timeout=0.5) as port:
        c = await Raw.open(port)
        await c.send(get())
        assert await asyncio.wait_for(outcome, 20) == "disconnected"
        await c.close()


async def test_request_timeout_503() -> None:
    async def stuck(ex: Exchange) -> None:
        await asyncio.Event().wait()

    async with running(stuck, request_timeout=0.3) as port:
        c = await Raw.open(port)
        await c.send(get())
        assert (await c.response()).status == 503


async def test_request_timeout_of_a_closed_connection_does_not_reach_the_next_one() -> None:
    """Connection objects are pooled: a request deadline armed for a client that has gone must
    not cancel a request of the next client served by the same object."""
    timeout = 1.0

    async def handler(ex: Exchange) -> None:
        if ex.head.path == "/body":
            while await ex.receive():  # the client stops sending, then leaves
                pass
        await asyncio.sleep(0.6 * timeout)
        ex.respond(200, [], b"done")

    async with running(handler, request_timeout=timeout, max_connections=1) as port:
        a = await Raw.open(port)
        await a.send(b"POST /body HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc")
        await asyncio.sleep(0.5 * timeout)
        await a.close()  # its deadline (at 1.0 s) is still ahead; the object goes back to the pool
        await asyncio.sleep(0.05)
        b = await Raw.open(port)  # served by the same connection object (max_connections=1)
        await b.send(get("/slow"))  # takes 0.6 s: ends at ~1.15 s, past the first deadline
        r = await b.response()
        assert (r.status, r.body) == (200, b"done")
        await b.close()


async def test_handler_framing_headers_never_desynchronise_the_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A handler's own Content-Length must match its body (else 500, nothing of it sent); its
    Transfer-Encoding: chunked gets the body framed as chunks; a streamed response that says
    Content-Length is held to it (a short one closes the connection). Checked with pipelined
    requests: every later response must still be read where it starts."""

    async def handler(ex: Exchange) -> None:
        path = ex.head.path
        if path == "/cl-long":
            ex.respond(200, [(b"content-length", b"10")], b"abc")
        elif path == "/cl-short":
            ex.respond(200, [(b"content-length", b"2")], b"abcdef")
        elif path == "/te":
            ex.respond(200, [(b"transfer-encoding", b"chunked")], b"abc")
        elif path == "/te-empty":
            ex.respond(200, [(b"transfer-encoding", b"chunked")], b"")
        elif path == "/stream-short":
            ex.start(200, [(b"content-length", b"10")])
            await ex.write(b"abc")
            await ex.end()
        else:
            ex.respond(200, [], path.encode())

    async with running(handler) as port:
        c = await Raw.open(port)
        paths = ("/cl-long", "/a", "/cl-short", "/b", "/te", "/c", "/te-empty", "/d")
        await c.send(b"".join(get(p) for p in paths))
        got = [await c.response() for _ in paths]
        assert [(r.status, r.body) for r in got] == [
            (500, b"internal server error\n"),
            (200, b"/a"),
            (500, b"internal server error\n"),
            (200, b"/b"),
            (200, b"abc"),
            (200, b"/c"),
            (200, b""),
            (200, b"/d"),
        ]
        assert got[4].headers[b"transfer-encoding"] == b"chunked"
        assert b"content-length" not in got[4].headers
        await c.send(get("/stream-short") + get("/never"))
        rest = b""
        with contextlib.suppress(ConnectionResetError):  # aborted: the client may see a reset
            rest = await asyncio.wait_for(c.reader.read(), 10)
        # closed after (at most) the short response, and nothing after it: /never is not answered
        assert b"/never" not in rest
        assert not rest or (b"content-length: 10\r\n" in rest and rest.endswith(b"\r\n\r\nabc"))
        await c.close()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert sum("handler failed" in m for m in errors) == 2, errors


# --- faults ---


async def test_handler_exception_500_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    async def boom(ex: Exchange) -> None:
        if ex.head.path == "/boom":
            raise RuntimeError("kaboom")
        ex.respond(200, [], b"fine")

    with caplog.at_level(logging.ERROR, logger="server"):
        async with running(boom) as port:
            c = await Raw.open(port)
            await c.send(get("/boom") + get("/ok"))
            r = await c.response()
            assert r.status == 500 and b"kaboom" not in r.body
            assert (await c.response()).body == b"fine"
            await c.close()
    records = [r for r in caplog.records if r.name == "server"]
    assert len(records) == 1 and "kaboom" in str(records[0].exc_info[1])  # type: ignore[index]


async def test_no_response_and_unfinished_response() -> None:
    async def lazy(ex: Exchange) -> None:
        if ex.head.path == "/half":
            ex.start(200, [])
            await ex.write(b"partial")

    async with running(lazy) as port:
        c = await Raw.open(port)
        await c.send(get("/none"))
        assert (await c.response()).status == 500
        await c.send(get("/half"))
        with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
            await c.response()


async def test_client_reset_mid_response_cancels_handler(fd_count: Callable[[], int]) -> None:
    started = asyncio.Event()
    ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def endless(ex: Exchange) -> None:
        ex.start(200, [])
        try:
            while True:
                await ex.write(b"e" * 65536)
                started.set()
        except (ClientDisconnected, asyncio.CancelledError) as exc:
            ended.set_result(type(exc).__name__)
            raise

    before = await fd_baseline(fd_count)
    async with running(endless) as port:
        c = await Raw.open(port)
        await c.send(get())
        await started.wait()
        c.reset()
        assert await asyncio.wait_for(ended, 10) in ("_Disconnected", "CancelledError")
    assert fd_count() == before


async def test_work_after_the_answer_does_not_hold_the_connection() -> None:
    """A handler that goes on working after its response is complete (Starlette's
    BackgroundTasks do) is left to finish on its own: the next request is answered meanwhile
    (pipelined or not), a ``Connection: close`` answer closes at once, a reset client does not
    cancel it, and shutdown waits for it."""
    release = asyncio.Event()
    log: list[str] = []
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="-")

    async def handler(ex: Exchange) -> None:
        path = ex.head.path
        var.set(path)
        ex.respond(200, [], path.encode())
        if path.startswith("/bg"):
            try:
                await release.wait()
                await asyncio.sleep(0)
                log.append(f"{path} done in {var.get()}")
            except asyncio.CancelledError:
                log.append(f"{path} cancelled")
                raise

    async with running(handler) as port:
        c = await Raw.open(port)
        await c.send(get("/bg1") + get("/a"))
        assert (await c.response()).body == b"/bg1"
        assert (await c.response()).body == b"/a"  # while /bg1 still works
        await c.send(get("/b"))
        assert (await c.response()).body == b"/b"
        await c.send(b"GET /bg2 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        assert (await c.response()).body == b"/bg2"
        assert await c.closed()  # at once, not after the work
        c = await Raw.open(port)
        await c.send(get("/bg3"))
        assert (await c.response()).body == b"/bg3"
        c.reset()
        await asyncio.sleep(0.1)
        assert log == []
        release.set()
        await until(lambda: len(log) == 3)
        assert sorted(log) == [f"/bg{i} done in /bg{i}" for i in (1, 2, 3)]
        # shutdown waits for such work (up to graceful_timeout)
        release.clear()
        c = await Raw.open(port)
        await c.send(get("/bg4"))
        assert (await c.response()).body == b"/bg4"
        await c.close()
        asyncio.get_running_loop().call_later(0.2, release.set)
    assert log[-1] == "/bg4 done in /bg4"


async def test_wait_client_closed_sees_a_fin_and_a_reset() -> None:
    """A handler waiting without writing (long poll) learns that the client closed its side
    (FIN) or left (reset); after a FIN its answer is still sent."""
    seen: list[tuple[str, bool]] = []

    async def long_poll(ex: Exchange) -> None:
        assert not ex.client_closed
        await ex.wait_client_closed()
        seen.append((ex.head.path, ex.disconnected))
        ex.respond(200, [], b"bye")

    async with running(long_poll) as port:
        c = await Raw.open(port)
        await c.send(get("/fin"))
        await asyncio.sleep(0.05)
        assert seen == []
        c.writer.write_eof()
        r = await c.response()  # still answered after the half-close
        assert r.body == b"bye" and await c.closed()
        assert seen == [("/fin", False)]
        c = await Raw.open(port)
        await c.send(get("/rst"))
        await asyncio.sleep(0.05)
        c.reset()
        await until(lambda: len(seen) == 2)
        assert seen[1] == ("/rst", True)


class MemoryEcho:
    """A handler with answers from memory (``answer_from_memory``) for some paths; ``calls``
    counts the requests that reached ``__call__`` (the usual path), ``asked`` the ones that
    were offered to ``answer_from_memory``."""

    memory_paths = ("/r", "/204", "/te", "/raise")  # asked for these only

    def __init__(self) -> None:
        self.calls: list[bytes] = []
        self.asked: list[bytes] = []

    def answer_from_memory(
        self, head: RequestHead
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes] | None:
        self.asked.append(head.raw_path)
        if head.raw_path == b"/raise":
            raise RuntimeError("answer_from_memory broke")
        if head.raw_path == b"/204":
            return 204, [], b"a body a 204 never has"
        if head.raw_path == b"/te":
            return 200, [(b"transfer-encoding", b"chunked")], b"framed by the handler"
        if head.raw_path.startswith(b"/r"):
            return 200, [(b"content-type", b"text/plain")], b"ready " + head.raw_path
        return None

    async def __call__(self, ex: Exchange) -> None:
        self.calls.append(ex.head.raw_path)
        body = b""
        while chunk := await ex.receive():
            body += chunk
        ex.respond(200, [(b"content-type", b"text/plain")], b"usual " + ex.head.raw_path + body)


async def test_answers_from_memory_of_the_handler(caplog: pytest.LogCaptureFixture) -> None:
    """The connection asks ``handler.answer_from_memory(head)`` first for a bodyless request with nothing
    unanswered before it: its answer is framed like respond()'s (HEAD, HTTP/1.0, the last
    request of a connection), and a None, an error or a framing of its own sends the request
    to the handler as usual; requests with a body, or queued behind one, go the usual way."""
    h = MemoryEcho()
    async with running(h, max_requests_per_connection=12) as port:
        c = await Raw.open(port)
        await c.send(get("/r1"))
        r = await c.response()
        assert (r.status, r.body, r.headers[b"content-length"]) == (200, b"ready /r1", b"9")
        assert b"date" in r.headers and b"server" in r.headers and b"connection" not in r.headers
        await c.send(b"HEAD /r2 HTTP/1.1\r\nHost: t\r\n\r\n" + get("/204") + get("/r3"))
        r = await c.response(head_request=True)
        assert (r.status, r.body, r.headers[b"content-length"]) == (200, b"", b"9")
        assert (await c.response()).status == 204  # (its body is not sent: read_response
        assert (await c.response()).body == b"ready /r3"  # would take it for this one)
        assert h.calls == []
        with caplog.at_level(logging.ERROR, logger="server"):
            await c.send(get("/raise") + get("/te") + get("/u"))
            assert [(await c.response()).body for _ in range(3)] == [
                b"usual /raise",
                b"usual /te",
                b"usual /u",
            ]
        assert h.calls == [b"/raise", b"/te", b"/u"]
        assert any("answer_from_memory() failed" in rec.getMessage() for rec in caplog.records)
        # a body: the usual way; what is pipelined behind it waits its turn, the usual way too
        await c.send(b"POST /r4 HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nab" + get("/r5"))
        assert (await c.response()).body == b"usual /r4ab"
        assert (await c.response()).body == b"usual /r5"
        # back to answers from memory, up to the connection's last request, which closes it
        await c.send(get("/r6") + get("/r7") + get("/r8"))
        assert [(await c.response()).body for _ in range(2)] == [b"ready /r6", b"ready /r7"]
        r = await c.response()
        assert r.body == b"ready /r8" and r.headers[b"connection"] == b"close"
        assert await c.closed()
        c = await Raw.open(port)
        await c.send(b"GET /r9 HTTP/1.0\r\n\r\n" + get("/r10"))
        r = await c.response()
        assert r.body == b"ready /r9" and b"keep-alive" not in r.headers.get(b"connection", b"")
        assert await c.closed()  # (and /r10, sent after it, is not answered)
    assert h.calls == [b"/raise", b"/te", b"/u", b"/r4", b"/r5"]
    assert b"/u" not in h.asked and b"/raise" in h.asked  # (memory_paths)
