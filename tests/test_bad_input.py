"""Bad input over real sockets: the right status, the connection closed, nothing else affected.

Each case checks: the answer's status (with a short text body and ``Connection: close``), that
the server closes that connection, that another keep-alive connection opened before keeps
working, and that no fd leaks.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable

import pytest
from test_connection import (
    Raw,
    echo,
    fd_baseline,
    get,
    read_response,
    running,
    unread_pipeline,
)

from server.config import Config
from server.connection import HttpExchange
from server.exchange import Exchange, InvalidHeader

CHUNKED = b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"

CASES: dict[str, tuple[bytes, int]] = {
    "cl_and_te": (
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "duplicate_cl": (
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        400,
    ),
    "conflicting_cl": (
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        400,
    ),
    "malformed_cl": (b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3x\r\n\r\nabc", 400),
    "cl_list": (b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3, 3\r\n\r\nabc", 400),
    "te_gzip": (b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    "te_gzip_chunked": (
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        501,
    ),
    "te_on_http10": (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "missing_host": (b"GET / HTTP/1.1\r\n\r\n", 400),
    "duplicate_host": (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    "obs_fold": (b"GET / HTTP/1.1\r\nHost: t\r\nX-A: a\r\n  folded\r\n\r\n", 400),
    "bare_lf": (b"GET / HTTP/1.1\nHost: t\n\n", 400),
    "bare_lf_in_headers": (b"GET / HTTP/1.1\r\nHost: t\nX: y\r\n\r\n", 400),
    "bad_chunk_size": (CHUNKED + b"zz\r\nabc\r\n0\r\n\r\n", 400),
    "chunk_without_crlf": (CHUNKED + b"3\r\nabcXY0\r\n\r\n", 400),
    "chunk_size_overflow": (CHUNKED + b"FFFFFFFFFFFFFFFFFFFFFF\r\n", 400),
    "huge_chunk_extension": (CHUNKED + b"3;" + b"e" * 20000 + b"\r\nabc\r\n0\r\n\r\n", 400),
    "request_line_too_long": (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: t\r\n\r\n", 414),
    "header_block_too_large": (
        b"GET / HTTP/1.1\r\nHost: t\r\n" + b"X-A: " + b"v" * 17000 + b"\r\n\r\n",
        431,
    ),
    "too_many_headers": (
        b"GET / HTTP/1.1\r\nHost: t\r\n"
        + b"".join(b"X-%d: v\r\n" % i for i in range(120))
        + b"\r\n",
        431,
    ),
    "body_too_large_cl": (b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 2000000\r\n\r\n", 413),
    "body_too_large_chunked": (CHUNKED + (b"100000\r\n" + b"b" * 0x100000 + b"\r\n") * 2, 413),
    "garbage": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n", 400),
    "http_2_0": (b"GET / HTTP/2.0\r\nHost: t\r\n\r\n", 505),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_bad_input(case: str, fd_count: Callable[[], int]) -> None:
    data, status = CASES[case]
    before = await fd_baseline(fd_count)
    async with running(echo) as port:
        other = await Raw.open(port)
        await other.send(get("/before"))
        assert (await other.response()).status == 200
        c = await Raw.open(port)
        c.writer.write(data)
        r = await c.response()
        assert r.status == status, r.body
        assert r.headers[b"connection"] == b"close"
        assert r.headers[b"content-type"].startswith(b"text/plain") and r.body.strip()
        assert await c.closed()
        await c.close()
        await other.send(get("/after"))
        assert (await other.response()).body == b"GET /after "
        await other.close()
    assert fd_count() == before


async def test_bad_request_after_good_pipelined() -> None:
    async with running(echo) as port:
        c = await Raw.open(port)
        await c.send(get("/good") + b"GET / HTTP/1.1\r\n\r\n")
        r = await c.response()
        assert r.status == 200 and r.body == b"GET /good "
        assert (await c.response()).status == 400
        assert await c.closed()


async def test_newer_minor_version_is_answered_as_http11() -> None:
    """HTTP/1.2 to 1.9 are handled as 1.1 (RFC 9110 2.5): answered, kept alive, the body read;
    another major version is a 505 and closes."""
    async with running(echo) as port:
        c = await Raw.open(port)
        await c.send(b"POST /a HTTP/1.2\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi")
        await c.send(b"GET /b HTTP/1.9\r\nHost: t\r\n\r\n")
        r = await c.response()
        assert r.status == 200 and r.body == b"POST /a hi" and r.head.startswith(b"HTTP/1.1 ")
        r = await c.response()
        assert r.status == 200 and r.body == b"GET /b "
        await c.send(b"GET / HTTP/2.0\r\nHost: t\r\n\r\n")
        assert (await c.response()).status == 505
        assert await c.closed()


async def test_header_trickle_408() -> None:
    async with running(echo, header_timeout=0.5) as port:
        c = await Raw.open(port)
        c.writer.write(b"GET / HTTP/1.1\r\n")
        got = asyncio.create_task(c.response())
        # keep trickling one header byte at a time: a per-byte timer would never fire
        for ch in b"X-Slow: " + b"a" * 1000:
            if got.done():
                break
            c.writer.write(bytes([ch]))
            await asyncio.sleep(0.05)
        r = await got
        assert r.status == 408 and r.headers[b"connection"] == b"close"
        assert await c.closed()


async def test_ten_thousand_pipelined_requests() -> None:
    n = 10_000
    live: list[int] = []

    async def path(ex: Exchange) -> None:
        if ex.head.raw_path.endswith(b"000"):
            live.append(sum(type(o) is HttpExchange for o in gc.get_objects()))
        ex.respond(200, [], ex.head.raw_path)

    async with running(path, max_requests_per_connection=n) as port:
        c = await Raw.open(port)
        c.writer.write(b"".join(get(f"/{i}") for i in range(n)))
        expected = [f"/{i}".encode() for i in range(n)]
        bodies = []
        for _ in range(n):
            bodies.append((await read_response(c.reader)).body)
        assert bodies == expected
        # requests are parsed only max_pipelined ahead of the handler: memory stays bounded
        assert live and max(live) <= Config().max_pipelined + 2
        await c.close()


async def test_pipelining_client_that_does_not_read_gets_no_more_work_done() -> None:
    """A client that pipelines requests and reads none of the answers: the server stops
    reading requests once the responses back up (the transport above its high-water mark), so
    it holds at most about max_pipelined generated responses, not one per request sent. The
    requests it holds back are not idleness: past keepalive_timeout (but within send_timeout)
    the connection stays. When the client reads, every request is answered, in order."""
    n, size = 200, 256 * 1024
    calls: list[bytes] = []

    async def generated(ex: Exchange) -> None:
        calls.append(ex.head.raw_path)
        ex.respond(200, [], ex.head.raw_path.ljust(size, b"."))  # a fresh body each time

    cfg = {"max_requests_per_connection": 10 * n, "keepalive_timeout": 0.2}
    async with running(generated, **cfg) as port:  # type: ignore[arg-type]
        requests = b"".join(get(f"/{i}") for i in range(n))
        async with unread_pipeline(port, requests, lambda: len(calls)) as (backed_up, reader):
            # (the kernel's socket buffers hold a few responses beyond the transport's)
            assert backed_up <= Config().max_pipelined + 32, backed_up
            bodies = [(await asyncio.wait_for(read_response(reader), 10)).body for _ in range(n)]
        assert [b.rstrip(b".") for b in bodies] == [f"/{i}".encode() for i in range(n)]
        assert len(calls) == n


@pytest.mark.parametrize("bad", [b"a\r\nSet-Cookie: injected=1", b"a\nb", b"a\x00b"])
async def test_handler_header_with_ctl_is_500_never_sent(bad: bytes) -> None:
    raised: list[BaseException] = []

    async def splitter(ex: Exchange) -> None:
        try:
            ex.respond(200, [(b"x-bad", bad)], b"evil body")
        except InvalidHeader as exc:
            raised.append(exc)
            raise

    async with running(splitter) as port:
        c = await Raw.open(port)
        await c.send(get())
        r = await c.response()
        assert r.status == 500 and b"x-bad" not in r.head and b"evil" not in r.body
        assert b"injected" not in r.head
        assert raised and isinstance(raised[0], InvalidHeader)
        await c.close()


async def test_small_limits_from_config() -> None:
    cfg = Config(max_request_line=64, max_header_size=256, max_header_count=4, max_body_size=10)
    async with running(echo, cfg) as port:
        for data, status in [
            (b"GET /" + b"x" * 100 + b" HTTP/1.1\r\nHost: t\r\n\r\n", 414),
            (b"GET / HTTP/1.1\r\nHost: t\r\nX: " + b"y" * 300 + b"\r\n\r\n", 431),
            (b"GET / HTTP/1.1\r\nHost: t\r\nA: 1\r\nB: 1\r\nC: 1\r\nD: 1\r\n\r\n", 431),
            (b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\n" + b"z" * 11, 413),
        ]:
            c = await Raw.open(port)
            await c.send(data)
            assert (await c.response()).status == status
            assert await c.closed()
