"""The ASGI 3 adapter with real Starlette and FastAPI apps and hand-written ASGI callables,
through the in-memory exchange (end-to-end socket tests live in test_cli.py / the e2e tests)."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from helpers import until
from helpers.bodies import BODY_TIMEOUT, BROKEN_BODIES, HALF_CLOSED, LIMIT, send_raw
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request as SRequest
from starlette.responses import FileResponse as SFileResponse
from starlette.responses import JSONResponse as SJSONResponse
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route

from server.asgi import ASGIHandler, LifespanFailure
from server.config import Config
from server.testing import AsyncTestClient, MemoryExchange, build_head, run_exchange


class Item(BaseModel):
    name: str
    price: float


def starlette_app(tmp_path: Path, events: list[str]) -> Starlette:
    (tmp_path / "f.txt").write_bytes(b"file body")

    async def hello(request: SRequest) -> PlainTextResponse:
        return PlainTextResponse(
            f"hi {request.path_params['name']} {request.query_params.get('q')}"
        )

    async def echo(request: SRequest) -> SJSONResponse:
        data = await request.json()
        return SJSONResponse({"got": data, "state": request.state.db})

    async def stream(request: SRequest) -> StreamingResponse:
        async def gen() -> AsyncIterator[bytes]:
            for i in range(3):
                yield f"{i}\n".encode()

        return StreamingResponse(gen(), media_type="text/plain")

    async def file(request: SRequest) -> SFileResponse:
        return SFileResponse(tmp_path / "f.txt")

    async def scope_view(request: SRequest) -> SJSONResponse:
        s = request.scope
        return SJSONResponse(
            {
                "asgi": s["asgi"],
                "path": s["path"],
                "raw_path": s["raw_path"].decode(),
                "qs": s["query_string"].decode(),
                "http_version": s["http_version"],
                "scheme": s["scheme"],
                "root_path": s["root_path"],
                "client": list(s["client"]),
                "ext": list(s["extensions"]),
            }
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        events.append("startup")
        yield {"db": "conn"}
        events.append("shutdown")

    return Starlette(
        routes=[
            Route("/hello/{name}", hello),
            Route("/echo", echo, methods=["POST"]),
            Route("/stream", stream),
            Route("/file", file),
            Route("/scope/{rest:path}", scope_view),
        ],
        lifespan=lifespan,
    )


async def test_starlette_app(tmp_path: Path) -> None:
    events: list[str] = []
    app = starlette_app(tmp_path, events)
    async with AsyncTestClient(app) as c:
        assert events == ["startup"]
        r = await c.get("/hello/bob", params={"q": "x"})
        assert r.status_code == 200 and r.text == "hi bob x"
        r = await c.post("/echo", json={"a": [1, 2]})
        assert r.json() == {"got": {"a": [1, 2]}, "state": "conn"}
        r = await c.get("/stream")
        assert r.content == b"0\n1\n2\n"
        assert r.headers["transfer-encoding"] == "chunked"
        r = await c.get("/file")  # pathsend -> exchange.sendfile
        assert r.content == b"file body"
        assert r.headers["content-length"] == "9"
        r = await c.head("/file")
        assert r.content == b"" and r.headers["content-length"] == "9"
        r = await c.get("/scope/a%20b?x=1")
        assert r.json() == {
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "path": "/scope/a b",
            "raw_path": "/scope/a%20b",
            "qs": "x=1",
            "http_version": "1.1",
            "scheme": "http",
            "root_path": "",
            "client": ["testclient", 50000],
            "ext": ["http.response.pathsend"],
        }
        assert (await c.get("/nope")).status_code == 404
    assert events == ["startup", "shutdown"]


async def test_fastapi_app() -> None:
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def read(item_id: int, q: str | None = None) -> dict[str, Any]:
        return {"item_id": item_id, "q": q}

    @app.post("/items")
    async def create(item: Item) -> Item:
        return item

    async with AsyncTestClient(app) as c:
        r = await c.get("/items/5", params={"q": "z"})
        assert r.json() == {"item_id": 5, "q": "z"}
        r = await c.post("/items", json={"name": "pen", "price": 1.5})
        assert r.json() == {"name": "pen", "price": 1.5}
        r = await c.post("/items", json={"name": "pen"})
        assert r.status_code == 422
        r = await c.get("/items/abc")
        assert r.status_code == 422


async def test_receive_events_and_disconnect() -> None:
    seen: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while True:
            msg = await receive()
            seen.append(msg)
            if not msg.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        seen.append(await receive())  # after the response: disconnect

    async with AsyncTestClient(app) as c:
        r = await c.post("/", content=[b"ab", b"cd"])
        assert r.text == "ok"
    assert seen == [
        {"type": "http.request", "body": b"ab", "more_body": True},
        {"type": "http.request", "body": b"cd", "more_body": True},
        {"type": "http.request", "body": b"", "more_body": False},
        {"type": "http.disconnect"},
    ]
    seen.clear()
    async with AsyncTestClient(app) as c:
        await c.post("/", content=b"abcd")  # Content-Length: no trailing empty event
        await c.get("/")
    assert seen[0] == {"type": "http.request", "body": b"abcd", "more_body": False}
    assert seen[2] == {"type": "http.request", "body": b"", "more_body": False}


async def test_errors_before_and_after_start(caplog: pytest.LogCaptureFixture) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise RuntimeError("no lifespan here")  # auto mode: ignored
        if scope["path"] == "/before":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            raise ValueError("before body")
        if scope["path"] == "/after":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"x", "more_body": True})
            raise ValueError("after body")
        if scope["path"] == "/badheader":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"x", b"a\nb")]})
            await send({"type": "http.response.body", "body": b"x"})
        if scope["path"] == "/twice":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"x"})
            await send({"type": "http.response.body", "body": b"y"})
        # "/nothing": returns without a response

    with caplog.at_level(logging.ERROR, logger="server.asgi"):
        async with AsyncTestClient(app) as c:
            assert (await c.get("/before")).status_code == 500
            r = await c.get("/after")
            assert r.aborted and r.content == b"x"
            assert (await c.get("/badheader")).status_code == 500
            assert (await c.get("/nothing")).status_code == 500
            r = await c.get("/twice")
            assert r.status_code == 200 and r.content == b"x"
    assert len(caplog.records) == 5


async def test_send_after_disconnect_raises_oserror() -> None:
    errors: list[BaseException] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"x", "more_body": True})
        exchange.disconnect()
        try:
            await send({"type": "http.response.body", "body": b"y", "more_body": True})
        except OSError as exc:
            errors.append(exc)
            raise

    handler = ASGIHandler(app, Config())
    exchange = MemoryExchange(build_head("GET", "/"))
    aborted = await run_exchange(handler, exchange)
    assert aborted
    assert len(errors) == 1


async def test_lifespan_modes() -> None:
    async def failing(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan"
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "no db"})

    async def unsupported(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            raise KeyError("lifespan")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    with pytest.raises(LifespanFailure, match="no db"):
        await ASGIHandler(failing, Config()).startup()
    h = ASGIHandler(unsupported, Config())  # auto: carries on
    await h.startup()
    await h.shutdown()
    with pytest.raises(LifespanFailure):
        await ASGIHandler(unsupported, Config(), lifespan="on").startup()
    off = ASGIHandler(failing, Config(), lifespan="off")
    await off.startup()
    await off.shutdown()
    assert "lifespan=off" in repr(off)
    with pytest.raises(ValueError):
        ASGIHandler(failing, Config(), lifespan="maybe")
    async with AsyncTestClient(unsupported) as c:
        assert (await c.get("/")).text == "ok"


async def test_shutdown_failure_reported() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.failed", "message": "flush failed"})
                return

    h = ASGIHandler(app, Config())
    await h.startup()
    with pytest.raises(LifespanFailure, match="flush failed"):
        await h.shutdown()


async def test_loadtest_asgi_app() -> None:
    from loadtest.apps import app, asgi_app

    for target in (app, asgi_app):
        async with AsyncTestClient(target) as c:
            r = await c.get("/plaintext")
            assert r.text == "Hello, World!" and r.headers["content-type"].startswith("text/plain")
            r = await c.get("/json")
            assert r.json() == {"message": "Hello, World!"}
            assert r.headers["content-type"] == "application/json"


# --- end to end over real sockets (needs server.serve) ---


async def test_e2e_starlette_and_fastapi(tmp_path: Path) -> None:
    pytest.importorskip("server.serve")
    import httpx

    from server.testing import live_server

    events: list[str] = []
    async with (
        live_server(starlette_app(tmp_path, events)) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        assert events == ["startup"]
        r = await client.get("/hello/ann?q=1")
        assert r.text == "hi ann 1"
        r = await client.post("/echo", json={"x": 1})
        assert r.json() == {"got": {"x": 1}, "state": "conn"}
        r = await client.get("/stream")
        assert r.text == "0\n1\n2\n"
        r = await client.get("/file")
        assert r.content == b"file body" and r.headers["content-length"] == "9"
    assert events == ["startup", "shutdown"]

    app = FastAPI()

    @app.post("/items")
    async def create(item: Item) -> Item:
        return item

    async with live_server(app) as url, httpx.AsyncClient(base_url=url) as client:
        r = await client.post("/items", json={"name": "a", "price": 2})
        assert r.json() == {"name": "a", "price": 2.0}
        r = await client.post("/items", content=b"{bad")
        assert r.status_code == 422


async def _plain_echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A bare ASGI app that reads the whole body, then echoes it (not after a disconnect)."""
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


async def _starlette_echo(request: SRequest) -> PlainTextResponse:
    return PlainTextResponse(await request.body())  # raises ClientDisconnect: Starlette's 500


@pytest.mark.parametrize("case", list(BROKEN_BODIES))
@pytest.mark.parametrize("kind", ["plain", "starlette"])
async def test_e2e_broken_request_body_is_answered_4xx(
    kind: str, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The app's receive() reports a body that breaks its framing or the size limit as
    ``http.disconnect`` (as uvicorn does); what the app sends after that is refused (Starlette
    tries a 500), and the client gets the 400 with the parser's reason (or 413), then the
    connection closes. Nothing is logged as an error; other connections carry on."""
    pytest.importorskip("server.serve")
    import httpx

    from server.testing import live_server

    data, status, reason = BROKEN_BODIES[case]
    app: Any = _plain_echo
    if kind == "starlette":
        app = Starlette(routes=[Route("/echo", _starlette_echo, methods=["POST"])])
    with caplog.at_level(logging.WARNING):
        async with (
            live_server(
                app, max_body_size=LIMIT, body_timeout=BODY_TIMEOUT, extra={"lifespan": "off"}
            ) as url,
            httpx.AsyncClient(base_url=url) as client,
        ):
            r = await client.post("/echo", content=b"fine")
            assert (r.status_code, r.content) == (200, b"fine")
            got, head, body = await send_raw(url, data, half_close=case in HALF_CLOSED)
            assert got == status and reason.lower() in body.lower(), (got, body)
            assert b"\r\nconnection: close" in head
            r = await client.post("/echo", content=b"again")  # the same other connection
            assert (r.status_code, r.content) == (200, b"again")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


async def test_e2e_context_vars_per_request() -> None:
    """The common request-id pattern: an ASGI middleware sets a context variable, the endpoint
    reads it after awaiting. Each request sees its own value, never the previous request's on
    the same keep-alive connection (as with uvicorn's task per request)."""
    pytest.importorskip("server.serve")
    import asyncio

    import httpx

    from server.testing import live_server

    app = FastAPI()

    @app.get("/rid")
    async def rid(wait: int = 0) -> dict[str, str]:
        if wait:
            await asyncio.sleep(0.01)
        return {"rid": _request_id.get()}

    seen: list[str] = []

    async def middleware(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            seen.append(_request_id.get())  # what the request found: always the default
            _request_id.set(dict(scope["headers"]).get(b"x-request-id", b"").decode())
        await app(scope, receive, send)

    async with live_server(middleware) as url, httpx.AsyncClient(base_url=url) as client:
        for i in range(6):
            r = await client.get("/rid", params={"wait": i % 2}, headers={"x-request-id": f"r{i}"})
            assert r.json() == {"rid": f"r{i}"}
    assert seen == ["-"] * 6


async def test_e2e_pathsend_large_file(tmp_path: Path) -> None:
    pytest.importorskip("server.serve")
    import os

    import httpx

    from server.testing import live_server

    data = os.urandom(2_000_000)
    (tmp_path / "big.bin").write_bytes(data)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        assert "http.response.pathsend" in scope["extensions"]
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/octet-stream")],
            }
        )
        await send({"type": "http.response.pathsend", "path": str(tmp_path / "big.bin")})

    async with live_server(app) as url, httpx.AsyncClient(base_url=url) as client:
        for _ in range(2):  # keep-alive after a sendfile body
            r = await client.get("/")
            assert r.headers["content-length"] == str(len(data))
            assert r.content == data
        r = await client.head("/")
        assert r.content == b"" and r.headers["content-length"] == str(len(data))


async def _framing_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers by path: /status/<n>[/stream] sends status n with a body (one message, or
    streamed); /cl/<declared>/<size> declares a Content-Length; /mutate changes scope["asgi"];
    anything else: 200 with scope["asgi"] as the body."""
    if scope["type"] != "http":
        return
    parts = scope["path"].strip("/").split("/")
    if parts[0] == "status":
        await send({"type": "http.response.start", "status": int(parts[1]), "headers": []})
        if parts[2:] == ["stream"]:
            await send({"type": "http.response.body", "body": b"abc", "more_body": True})
            await send({"type": "http.response.body", "body": b"def"})
        else:
            await send({"type": "http.response.body", "body": b"abc"})
        return
    if parts[0] == "cl":
        headers = [(b"content-length", parts[1].encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"x" * int(parts[2])})
        return
    if parts[0] == "mutate":
        scope["asgi"]["mutated"] = "yes"
    body = repr(sorted(scope["asgi"].items())).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


async def test_e2e_response_framing_the_app_cannot_break() -> None:
    """Over a real socket, each response followed by a pipelined request on the same
    connection: a body given to a 204 or 304 (whole or streamed) is never sent (the next
    response starts right after the head); a 1xx status as the answer, or a Content-Length
    that does not match a whole body, is a 500; scope["asgi"] is the request's own."""
    from server.testing import live_server
    from tests.test_connection import Raw

    async with live_server(_framing_app) as url:
        port = int(url.rsplit(":", 1)[1])
        c = await Raw.open(port)
        paths_and_statuses = [
            ("/status/204", 204),
            ("/status/204/stream", 204),
            ("/status/304/stream", 304),
            ("/status/103", 500),
            ("/status/101/stream", 500),
            ("/cl/3/3", 200),
            ("/cl/10/5", 500),
            ("/cl/3/5", 500),
            ("/mutate", 200),
            ("/plain", 200),
        ]
        await c.send(
            b"".join(
                b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % p.encode() for p, _ in paths_and_statuses
            )
        )
        bodies = {}
        for path, status in paths_and_statuses:
            r = await c.response()
            assert r.head.startswith(b"HTTP/1.1 %d " % status), (path, r.head)
            bodies[path] = r.body
        assert bodies["/status/204"] == bodies["/status/304/stream"] == b""
        assert bodies["/cl/3/3"] == b"xxx"
        assert b"mutated" in bodies["/mutate"] and b"mutated" not in bodies["/plain"]
        await c.close()


async def test_e2e_root_path_is_part_of_path() -> None:
    """--root-path (a proxy in front strips it): path and raw_path include it, as uvicorn
    gives them, so Starlette's request.url and url_for agree."""
    import httpx

    from server.testing import live_server

    async def where(request: SRequest) -> SJSONResponse:
        s = request.scope
        return SJSONResponse(
            {
                "path": s["path"],
                "raw_path": s["raw_path"].decode(),
                "root_path": s["root_path"],
                "url": str(request.url),
                "url_for": str(request.url_for("where", rest="x")),
            }
        )

    app = Starlette(routes=[Route("/w/{rest:path}", where, name="where")])
    async with (
        live_server(app, extra={"root_path": "/api/"}) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        r = await client.get("/w/x?q=1")
        assert r.json() == {
            "path": "/api/w/x",
            "raw_path": "/api/w/x",
            "root_path": "/api",
            "url": f"{url}/api/w/x?q=1",
            "url_for": f"{url}/api/w/x",
        }


async def test_e2e_background_tasks_run_after_the_answer_without_holding_the_connection() -> None:
    """Starlette's BackgroundTasks run inside the app call, after the last send: the client's
    next request on the same connection is answered meanwhile, and a client that resets does
    not cancel them (uvicorn behaves the same)."""
    import httpx
    from starlette.background import BackgroundTask

    from server.testing import live_server
    from tests.test_connection import Raw

    release = asyncio.Event()
    done: list[str] = []

    async def work(name: str) -> None:
        await release.wait()
        done.append(name)

    async def bg(request: SRequest) -> PlainTextResponse:
        name = request.path_params["name"]
        return PlainTextResponse(name, background=BackgroundTask(work, name))

    async def quick(request: SRequest) -> PlainTextResponse:
        return PlainTextResponse("quick")

    app = Starlette(routes=[Route("/bg/{name}", bg), Route("/quick", quick)])
    async with live_server(app) as url:
        async with httpx.AsyncClient(base_url=url) as client:  # one keep-alive connection
            assert (await client.get("/bg/a")).text == "a"
            assert (await asyncio.wait_for(client.get("/quick"), 5)).text == "quick"
        c = await Raw.open(int(url.rsplit(":", 1)[1]))
        await c.send(b"GET /bg/b HTTP/1.1\r\nHost: t\r\n\r\n")
        assert (await c.response()).body == b"b"
        c.reset()
        await asyncio.sleep(0.1)
        assert done == []
        release.set()
        await until(lambda: len(done) == 2)
        assert sorted(done) == ["a", "b"]


async def test_e2e_client_reset_does_not_cancel_the_app(fd_count: Any) -> None:
    """As under uvicorn, a reset does not cancel an ASGI app busy with other work: it finds
    out from receive() (http.disconnect) and send() (OSError), and its connection is let go
    once it returns. Starlette's is_disconnected() loop then gets True, not CancelledError."""
    from server.testing import live_server
    from tests.test_connection import Raw

    seen: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/starlette":
            await starlette_poll(scope, receive, send)
            return
        try:
            await asyncio.sleep(0.3)  # busy with something else: not in receive() or send()
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise
        assert (await receive())["type"] == "http.request"
        seen.append((await receive())["type"])
        try:
            await send({"type": "http.response.start", "status": 200, "headers": []})
        except OSError:
            seen.append("send refused")

    async def poll(request: SRequest) -> PlainTextResponse:
        try:
            while not await request.is_disconnected():
                await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            seen.append("starlette cancelled")
            raise
        seen.append("starlette saw it")
        return PlainTextResponse("late")

    starlette_poll = Starlette(routes=[Route("/starlette", poll)])
    async with live_server(app) as url:
        port = int(url.rsplit(":", 1)[1])
        before = fd_count()
        for path, expected in (
            ("/raw", ["http.disconnect", "send refused"]),
            ("/starlette", ["starlette saw it"]),
        ):
            seen.clear()
            c = await Raw.open(port)
            await c.send(b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % path.encode())
            await asyncio.sleep(0.05)
            c.reset()
            await until(lambda: seen == expected)  # noqa: B023
            assert seen == expected
        await until(lambda: fd_count() <= before)
        assert fd_count() <= before


async def test_e2e_app_left_running_after_a_reset_is_still_bounded() -> None:
    """An ASGI app not cancelled by a reset is still cancelled by request_timeout, and by the
    end of a graceful shutdown (else it would outlive the server)."""
    from server.testing import live_server
    from tests.test_connection import Raw

    cancelled: list[float] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        t0 = asyncio.get_running_loop().time()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.append(asyncio.get_running_loop().time() - t0)
            raise

    async def reset_after_request(port: int) -> None:
        c = await Raw.open(port)
        await c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        await asyncio.sleep(0.05)
        c.reset()

    async with live_server(app, request_timeout=0.5) as url:
        await reset_after_request(int(url.rsplit(":", 1)[1]))
        await until(lambda: bool(cancelled), timeout=5)
        assert cancelled and 0.4 < cancelled[0] < 3
    cancelled.clear()
    loop = asyncio.get_running_loop()
    async with live_server(app, graceful_timeout=0.3) as url:
        await reset_after_request(int(url.rsplit(":", 1)[1]))
        await asyncio.sleep(0.1)
        t0 = loop.time()
    assert cancelled and loop.time() - t0 < 5  # the server stopped, the app with it


async def test_e2e_client_that_closes_is_seen_as_a_disconnect() -> None:
    """An app that waits for http.disconnect (long poll) and Starlette's is_disconnected()
    see a client that closes with a FIN (as Go cancels the request's context on EOF), not
    only one that resets."""
    from server.testing import live_server
    from tests.test_connection import Raw

    seen: list[str] = []

    async def waiter(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/starlette":
            await starlette_poll(scope, receive, send)
            return
        assert (await receive())["type"] == "http.request"
        seen.append((await receive())["type"])

    async def poll(request: SRequest) -> PlainTextResponse:
        while not await request.is_disconnected():
            await asyncio.sleep(0.01)
        seen.append("starlette saw it")
        return PlainTextResponse("late")

    starlette_poll = Starlette(routes=[Route("/starlette", poll)])
    async with live_server(waiter) as url:
        port = int(url.rsplit(":", 1)[1])
        for path, expected in (("/raw", "http.disconnect"), ("/starlette", "starlette saw it")):
            c = await Raw.open(port)
            await c.send(b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % path.encode())
            await asyncio.sleep(0.05)
            assert seen == [] or seen[-1] != expected
            c.writer.write_eof()
            await until(lambda: bool(seen) and seen[-1] == expected)  # noqa: B023
            assert seen[-1] == expected
            await c.close()
