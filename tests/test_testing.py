"""The test client and the in-memory Exchange keep the Exchange contract, and the access log."""

from __future__ import annotations

import asyncio
import contextvars
import logging
from typing import Any

import pytest

from server import App, Request
from server.accesslog import AccessLogHandler, escape, format_line
from server.config import Config
from server.exchange import BodyTooLarge, ClientDisconnected, InvalidHeader, ResponseStarted
from server.testing import AsyncTestClient, MemoryExchange, TestClient, build_head, run_exchange


async def test_memory_exchange_contract() -> None:
    ex = MemoryExchange(
        build_head("POST", "/x?a=1", body_length=6), [b"abc", b"def"], max_body_size=4
    )
    assert ex.head.query_string == b"a=1"
    assert ex.head.get_header(b"content-length") == b"6"
    assert await ex.receive() == b"abc"
    with pytest.raises(BodyTooLarge):
        await ex.receive()
    with pytest.raises(InvalidHeader):
        ex.respond(200, [(b"x", b"a\r\nb")], b"")
    assert not ex.response_started  # nothing was sent by the bad call
    ex.start(200, [(b"content-type", b"text/plain")])
    with pytest.raises(ResponseStarted):
        ex.respond(200, [], b"")
    await ex.write(b"1")
    with open(__file__, "rb") as f:
        await ex.sendfile(f, 0, 3)
    await ex.end()
    assert ex.ended and ex.body_chunks[0] == b"1" and ex.body_chunks[1] == b'"""'
    assert "ended=True" in repr(ex)


async def test_memory_exchange_disconnect_and_head() -> None:
    ex = MemoryExchange(build_head("HEAD", "/"))
    ex.respond(200, [], b"hello")
    assert ex.body_chunks == [] and (b"content-length", b"5") in ex.headers
    ex = MemoryExchange(build_head("GET", "/"))
    ex.disconnect()
    assert ex.disconnected
    with pytest.raises(ClientDisconnected):
        await ex.receive()
    with pytest.raises(ClientDisconnected):
        ex.respond(200, [], b"")


async def test_run_exchange_rules() -> None:
    async def nothing(exchange: Any) -> None:
        return None

    async def crash(exchange: Any) -> None:
        raise RuntimeError("x")

    async def half(exchange: Any) -> None:
        exchange.start(200, [])
        await exchange.write(b"a")

    ex = MemoryExchange(build_head("GET", "/"))
    assert not await run_exchange(nothing, ex) and ex.status == 500
    ex = MemoryExchange(build_head("GET", "/"))
    assert not await run_exchange(crash, ex) and ex.status == 500
    ex = MemoryExchange(build_head("GET", "/"))
    assert await run_exchange(half, ex)

    async def sets_var(exchange: Any) -> None:
        _var.set("handler")
        await asyncio.sleep(0)
        exchange.respond(200, [], _var.get().encode())

    ex = MemoryExchange(build_head("GET", "/"))
    assert not await run_exchange(sets_var, ex) and ex.body_chunks == [b"handler"]
    assert _var.get() == "caller"  # the handler's context was its own


_var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="caller")


def test_sync_client_native_handler_and_options() -> None:
    async def raw(exchange: Any) -> None:
        head = exchange.head
        exchange.respond(
            200,
            [(b"content-type", b"text/plain; charset=latin-1")],
            f"{head.method} {head.path} {head.query_string.decode()} {head.http_version}".encode(),
        )

    with TestClient(raw, interface="native") as c:
        r = c.options("/a%2Fb", params=[("x", "1"), ("x", "2")], http_version="1.0")
        assert r.text == "OPTIONS /a/b x=1&x=2 1.0"
        assert r.status == 200 and "200" in repr(r)


async def test_sync_client_refuses_running_loop() -> None:
    client = TestClient(App())
    with pytest.raises(RuntimeError, match="AsyncTestClient"):
        client.get("/")


def test_sync_client_without_context_manager() -> None:
    app = App()

    @app.get("/")
    async def root(request: Request) -> str:
        return "ok"

    client = TestClient(app)
    try:
        assert client.get("/").text == "ok"
        assert client.put("/").status_code == 405
    finally:
        client.close()


def test_access_log_lines(caplog: pytest.LogCaptureFixture) -> None:
    app = App()

    @app.get("/{name}")
    async def hello(request: Request) -> str:
        return "hi"

    with caplog.at_level(logging.INFO, logger="server.access"):
        with TestClient(app, config=Config(access_log=True)) as c:
            c.get("/a%0d%0aFAKE%1b[31m", params={"q": 'x"y'})
            c.head("/x")
            c.post("/x")
    lines = [r.getMessage() for r in caplog.records if r.name == "server.access"]
    assert len(lines) == 3
    assert "\r" not in lines[0] and "\n" not in lines[0] and "\x1b" not in lines[0]
    assert lines[0].startswith(
        'testclient:50000 - "GET /a%0d%0aFAKE%1b[31m?q=x%22y HTTP/1.1" 200 2 '
    )
    assert lines[0].endswith("ms")
    assert '"HEAD /x HTTP/1.1" 200 0 ' in lines[1]
    assert '"POST /x HTTP/1.1" 405 ' in lines[2]


def test_escape_and_format() -> None:
    assert escape('a\r\n\x1b\x00\x7f\x85"\\b') == 'a\\x0d\\x0a\\x1b\\x00\\x7f\\x85\\"\\\\b'
    head = build_head("GET", "/p")
    head.raw_path = b"/\r\nx"
    line = format_line(head, None, 0, 0.001)
    assert "\\x0d\\x0a" in line and " - 0 1.00ms" in line


async def test_access_log_wraps_raw_handler(caplog: pytest.LogCaptureFixture) -> None:
    async def streamer(exchange: Any) -> None:
        exchange.start(201, [])
        await exchange.write(b"abc")
        with open(__file__, "rb") as f:
            await exchange.sendfile(f, 0, 10)
        await exchange.end()

    handler = AccessLogHandler(streamer)
    with caplog.at_level(logging.INFO, logger="server.access"):
        ex = MemoryExchange(build_head("GET", "/s"))
        await run_exchange(handler, ex)
    assert '"GET /s HTTP/1.1" 201 13 ' in caplog.records[-1].getMessage()
    assert "AccessLogHandler" in repr(handler)


async def test_access_log_line_when_the_response_is_complete(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A handler that works on after its answer (background tasks) is logged when the answer
    is complete, once, with the time to that point; not when it finally returns."""
    gate = asyncio.Event()

    async def answer_then_work(exchange: Any) -> None:
        exchange.respond(200, [], b"done")
        await gate.wait()

    handler = AccessLogHandler(answer_then_work)
    with caplog.at_level(logging.INFO, logger="server.access"):
        ex = MemoryExchange(build_head("GET", "/bg"))
        task = asyncio.ensure_future(handler(ex))
        for _ in range(100):
            if ex.ended:
                break
            await asyncio.sleep(0)
        lines = [r.getMessage() for r in caplog.records if r.name == "server.access"]
        assert len(lines) == 1 and '"GET /bg HTTP/1.1" 200 4 ' in lines[0]
        gate.set()
        await task
    assert len([r for r in caplog.records if r.name == "server.access"]) == 1


async def test_async_client_concurrent_requests() -> None:
    app = App()
    gate = asyncio.Event()

    @app.get("/wait")
    async def wait(request: Request) -> str:
        await gate.wait()
        return "released"

    @app.get("/open")
    async def open_(request: Request) -> str:
        gate.set()
        return "opened"

    async with AsyncTestClient(app) as c:
        first = asyncio.ensure_future(c.get("/wait"))
        assert (await c.get("/open")).text == "opened"
        assert (await first).text == "released"


async def test_test_client_answers_as_the_server_does() -> None:
    """Cases where the test client used to differ from a real connection: a body over the
    limit (the parser's 413, no app code run), a streamed body shorter or longer than its
    Content-Length (the connection aborts), a non-ASCII target (percent-encoded, UTF-8)."""
    import httpx

    from server import StreamingResponse
    from server.testing import live_server

    app = App(Config(max_body_size=1000))
    ran: list[str] = []

    @app.post("/ignore")
    async def ignore(request: Request) -> str:
        ran.append("ignore")
        return "ok"

    @app.get("/stream/{n:int}")
    async def stream(request: Request) -> StreamingResponse:
        async def gen() -> Any:
            yield b"x" * request.path_params["n"]

        return StreamingResponse(gen(), headers={"content-length": "5"})

    @app.get("/q/{name}")
    async def q(request: Request) -> dict[str, str]:
        return {"name": request.path_params["name"], "a": request.query["a"]}

    async with AsyncTestClient(app, config=app.config) as c:
        mem = [
            await c.post("/ignore", content=b"x" * 1001),
            await c.get("/stream/5"),
            await c.get("/stream/3"),
            await c.get("/stream/7"),
            await c.get("/q/☃?a=ü"),
        ]
    assert ran == []
    async with live_server(app, app.config.with_(port=0)) as url:
        async with httpx.AsyncClient(base_url=url) as client:
            r = await client.post("/ignore", content=b"x" * 1001)
            assert (
                (r.status_code, r.content)
                == (mem[0].status_code, mem[0].content)
                == (
                    413,
                    b"request body too large\n",
                )
            )
            assert mem[0].headers["connection"] == r.headers["connection"] == "close"
            r = await client.get("/stream/5")
            assert (r.status_code, r.content) == (mem[1].status_code, mem[1].content)
            assert not mem[1].aborted
            for i in (2, 3):
                with pytest.raises(httpx.HTTPError):  # cut short: the promised length is not met
                    await client.get(f"/stream/{(3, 7)[i - 2]}")
                assert mem[i].aborted, i
            r = await client.get("/q/☃?a=ü")
            assert r.json() == mem[4].json() == {"name": "☃", "a": "ü"}
    assert ran == []
