"""The native framework through the in-memory test client: routing, Request, responses,
middleware, hooks and error handlers."""

from __future__ import annotations

import asyncio
import email.utils
import gc
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from helpers.bodies import BODY_TIMEOUT, BROKEN_BODIES, HALF_CLOSED, LIMIT, send_raw

from server import (
    App,
    FileResponse,
    HTTPException,
    JSONResponse,
    RedirectResponse,
    Request,
    Response,
    StreamingResponse,
)
from server.config import Config
from server.routing import Router, compile_pattern
from server.testing import AsyncTestClient, TestClient


def make_app() -> App:
    app = App()

    @app.get("/")
    async def root(request: Request) -> str:
        return "root"

    @app.get("/users/{id:int}")
    async def user(request: Request) -> dict[str, object]:
        return {"id": request.path_params["id"]}

    @app.get("/f/{x:float}")
    async def flt(request: Request) -> dict[str, object]:
        return {"x": request.path_params["x"]}

    @app.get("/u/{u:uuid}")
    async def uid(request: Request) -> str:
        assert isinstance(request.path_params["u"], uuid.UUID)
        return str(request.path_params["u"])

    @app.get("/files/{rest:path}")
    async def files(request: Request) -> str:
        return request.path_params["rest"]

    @app.get("/s/{name}/x")
    async def seg(request: Request) -> str:
        return request.path_params["name"]

    @app.route("/multi", methods=["POST", "PUT"])
    async def multi(request: Request) -> str:
        return request.method

    @app.delete("/items/{id:int}")
    async def delete_item(request: Request) -> None:
        return None

    @app.patch("/items/{id:int}")
    async def patch_item(request: Request) -> bytes:
        return b"\x00\x01"

    @app.get("/slash/")
    async def slash(request: Request) -> str:
        return "slash"

    return app


@pytest.fixture
def client() -> TestClient:
    with TestClient(make_app()) as c:
        yield c


# --- routing ---


def test_static_and_converters(client: TestClient) -> None:
    assert client.get("/").text == "root"
    assert client.get("/users/42").json() == {"id": 42}
    assert client.get("/f/1.5").json() == {"x": 1.5}
    u = "12345678-1234-5678-1234-567812345678"
    assert client.get(f"/u/{u}").text == u
    assert client.get("/files/a/b/c.txt").text == "a/b/c.txt"
    assert client.get("/s/%E2%9C%93/x").text == "\u2713"  # percent-decoded once


def test_converter_mismatch_is_404(client: TestClient) -> None:
    too_long = "9" * 400  # a float converter value must be finite (and an int one convertible)
    for path in (
        "/users/abc",
        "/users/",
        "/f/x",
        f"/f/{too_long}",
        f"/users/{too_long * 12}",
        "/u/not-a-uuid",
        "/s/a/b/x",
        "/nowhere",
    ):
        r = client.get(path)
        assert r.status_code == 404, path
        assert "not found" in r.text.lower()


def test_405_with_allow(client: TestClient) -> None:
    r = client.get("/multi")
    assert r.status_code == 405
    assert r.headers["allow"] == "POST, PUT"
    r = client.post("/users/1")
    assert r.status_code == 405
    assert r.headers["allow"] == "GET, HEAD"
    r = client.get("/items/3")
    assert r.status_code == 405
    assert r.headers["allow"] == "DELETE, PATCH"


def test_methods_and_result_types(client: TestClient) -> None:
    assert client.post("/multi").text == "POST"
    assert client.put("/multi").text == "PUT"
    r = client.delete("/items/1")
    assert r.status_code == 204 and r.content == b""
    r = client.patch("/items/1")
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.content == b"\x00\x01"
    r = client.get("/")
    assert r.headers["content-type"] == "text/plain; charset=utf-8"
    assert client.get("/users/1").headers["content-type"] == "application/json"


def test_head_served_by_get(client: TestClient) -> None:
    r = client.head("/users/7")
    assert r.status_code == 200
    assert r.content == b""
    assert r.headers["content-length"] == str(len(b'{"id":7}'))


def test_explicit_head_route_wins() -> None:
    app = App()

    @app.get("/x")
    async def get(request: Request) -> str:
        return "get"

    @app.route("/x", methods=["HEAD"])
    async def head(request: Request) -> Response:
        return Response(b"", headers={"x-head": "1"})

    with TestClient(app) as c:
        assert c.head("/x").headers.get("x-head") == "1"
        assert c.get("/x").text == "get"


def test_trailing_slash_redirects(client: TestClient) -> None:
    r = client.get("/slash?q=1")
    assert r.status_code == 308
    assert r.headers["location"] == "/slash/?q=1"
    r = client.get("/users/5/")
    assert r.status_code == 308
    assert r.headers["location"] == "/users/5"
    assert client.get("/slash/").text == "slash"


def test_request_url_keeps_the_path_encoded() -> None:
    app = App()

    @app.get("/u/{name}")
    async def named(request: Request) -> dict[str, str]:
        return {"url": request.url, "path": request.path, "name": request.path_params["name"]}

    with TestClient(app) as c:
        assert c.get("/u/a%20b%3Fc?x=1").json() == {
            "url": "http://testserver/u/a%20b%3Fc?x=1",
            "path": "/u/a b?c",
            "name": "a b?c",
        }


def test_trailing_slash_redirect_keeps_the_path_as_sent() -> None:
    """The Location is the request's own (percent-encoded) path: decoding it first would turn
    %3F into a query, %23 into a fragment and %25 into another escape."""
    app = App()

    @app.get("/s/{name}/")
    async def named(request: Request) -> str:
        return request.path_params["name"]

    @app.get("/{rest:path}/x/")
    async def rest(request: Request) -> str:
        return request.path_params["rest"]

    @app.get("/t/{name}")
    async def plain(request: Request) -> str:
        return request.path_params["name"]

    with TestClient(app) as c:
        for sent, name in [("what%3F", "what?"), ("a%23b", "a#b"), ("%2541", "%41"), ("é", "é")]:
            r = c.get(f"/s/{sent}?q=1")
            assert r.status_code == 308, sent
            location = r.headers["location"]
            assert location == f"/s/{quote(sent, safe='%')}/?q=1", (sent, location)
            assert c.get(location).text == name, sent
        assert c.get("/s/☃").headers["location"] == "/s/%E2%98%83/"
        assert c.get("/s/%E2%98%83/").text == "☃"
        r = c.get("/t/y%2F")  # the routed spelling is /t/y: an encoded slash is a slash
        assert (r.status_code, r.headers["location"]) == (308, "/t/y")


def test_router_pattern_errors() -> None:
    with pytest.raises(ValueError):
        compile_pattern("no-slash")
    with pytest.raises(ValueError):
        compile_pattern("/{x:nope}")
    with pytest.raises(ValueError):
        compile_pattern("/{x}/{x}")
    with pytest.raises(ValueError):
        compile_pattern("/{x")
    app = App()
    with pytest.raises(TypeError):
        app.get("/sync")(lambda request: "x")  # type: ignore[arg-type, return-value]
    assert "static=0" in repr(Router())


def test_static_route_is_dict_hit() -> None:
    router = Router()

    async def h(request: Request) -> str:
        return ""

    router.add("/a", ["GET"], h)
    router.add("/b/{x}", ["GET"], h)
    assert "/a" in router.static and len(router.dynamic) == 1
    ep, params, allow = router.lookup("GET", "/a")
    assert ep is not None and params == {} and allow == []


# --- request API ---


async def test_request_api() -> None:
    app = App()
    seen: dict[str, object] = {}

    @app.post("/r")
    async def r(request: Request) -> dict[str, object]:
        seen["repr"] = repr(request)
        request.state.user = "bob"
        return {
            "method": request.method,
            "path": request.path,
            "a": request.query["a"],
            "alist": request.query.getlist("a"),
            "missing": request.query.get("zz"),
            "hdr": request.headers["X-Thing"],
            "hdrs": request.headers.getlist("x-multi"),
            "has": "x-thing" in request.headers,
            "cookies": request.cookies,
            "client": list(request.client or ()),
            "json": await request.json(),
            "state": request.state.user,
            "version": request.http_version,
        }

    async with AsyncTestClient(app) as c:
        res = await c.post(
            "/r?a=1&a=2&b=",
            headers=[("X-Thing", "v"), ("X-Multi", "1"), ("x-multi", "2")],
            cookies={"sid": "abc", "t": "1"},
            json={"k": [1, 2]},
        )
    assert res.status_code == 200, res.text
    assert res.json() == {
        "method": "POST",
        "path": "/r",
        "a": "1",
        "alist": ["1", "2"],
        "missing": None,
        "hdr": "v",
        "hdrs": ["1", "2"],
        "has": True,
        "cookies": {"sid": "abc", "t": "1"},
        "client": ["testclient", 50000],
        "json": {"k": [1, 2]},
        "state": "bob",
        "version": "1.1",
    }
    assert "POST" in str(seen["repr"])


async def test_body_stream_and_form() -> None:
    app = App()

    @app.post("/stream")
    async def stream(request: Request) -> dict[str, object]:
        sizes = [len(c) async for c in request.stream()]
        return {"sizes": sizes}

    @app.post("/body")
    async def body(request: Request) -> bytes:
        first = await request.body()
        assert await request.body() is first  # cached
        return first

    @app.post("/form")
    async def form(request: Request) -> dict[str, object]:
        f = await request.form()
        return {"a": f.getlist("a"), "b": f["b"]}

    @app.post("/json")
    async def js(request: Request) -> object:
        return await request.json()

    async with AsyncTestClient(app) as c:
        r = await c.post("/stream", content=[b"ab", b"cde", b"f"])
        assert r.json() == {"sizes": [2, 3, 1]}
        r = await c.post("/body", content=b"x" * 1000)
        assert r.content == b"x" * 1000
        r = await c.post("/form", data={"a": ["1", "2"], "b": "z z"})
        assert r.json() == {"a": ["1", "2"], "b": "z z"}
        r = await c.post("/form", content=b"a=1")
        assert r.status_code == 415
        r = await c.post("/json", content=b"{not json")
        assert r.status_code == 400
        assert "Invalid JSON" in r.text


async def test_body_limits() -> None:
    app = App()

    @app.post("/small", max_body_size=10)
    async def small(request: Request) -> bytes:
        return await request.body()

    @app.post("/chunked", max_body_size=10)
    async def chunked(request: Request) -> bytes:
        return await request.body()

    @app.post("/big")
    async def big(request: Request) -> bytes:
        return await request.body()

    async with AsyncTestClient(app, config=Config(max_body_size=100)) as c:
        assert (await c.post("/small", content=b"0123456789")).status_code == 200
        assert (await c.post("/small", content=b"01234567890")).status_code == 413
        assert (await c.post("/chunked", content=[b"012345", b"6789ab"])).status_code == 413
        assert (await c.post("/big", content=b"x" * 100)).status_code == 200
        r = await c.post("/big", content=b"x" * 101)  # the server-wide limit (BodyTooLarge)
        assert r.status_code == 413


# --- responses ---


async def test_response_kinds(tmp_path: Path) -> None:
    (tmp_path / "a.css").write_text("body{}")
    big = os.urandom(200_000)
    (tmp_path / "big.bin").write_bytes(big)
    app = App()

    @app.get("/resp")
    async def resp(request: Request) -> Response:
        r = Response("created", status=201, headers={"X-A": "1"}, content_type="text/x-custom")
        r.set_cookie("sid", "v 1", max_age=60, httponly=True)
        r.set_cookie("other", "2", secure=True, samesite=None)
        return r

    @app.get("/json")
    async def js(request: Request) -> Response:
        return JSONResponse({"ü": [1, None]}, status=202)

    @app.get("/redirect")
    async def redir(request: Request) -> Response:
        return RedirectResponse("/target path?x=1")

    @app.get("/stream")
    async def stream(request: Request) -> Response:
        async def gen() -> AsyncIterator[str]:
            for i in range(3):
                yield f"{i};"

        return StreamingResponse(gen(), content_type="text/plain")

    @app.get("/sync-stream")
    async def sync_stream(request: Request) -> Response:
        return StreamingResponse([b"a", b"b"], headers={"content-length": "2"})

    @app.get("/file/{name}")
    async def file(request: Request) -> Response:
        return FileResponse(tmp_path / request.path_params["name"])

    @app.get("/download")
    async def download(request: Request) -> Response:
        return FileResponse(tmp_path / "a.css", filename="my file.css")

    async with AsyncTestClient(app) as c:
        r = await c.get("/resp")
        assert r.status_code == 201 and r.text == "created"
        assert r.headers["content-type"] == "text/x-custom"
        assert r.headers["x-a"] == "1"
        cookies = r.headers.getlist("set-cookie")
        assert cookies[0].startswith('sid="v 1"') or cookies[0].startswith("sid=")
        assert "Max-Age=60" in cookies[0] and "HttpOnly" in cookies[0] and "Path=/" in cookies[0]
        assert "Secure" in cookies[1]
        r = await c.get("/json")
        assert r.status_code == 202 and r.json() == {"ü": [1, None]}
        assert r.headers["content-type"] == "application/json"
        r = await c.get("/redirect")
        assert r.status_code == 307 and r.headers["location"] == "/target%20path?x=1"
        r = await c.get("/stream")
        assert r.chunks == [b"0;", b"1;", b"2;"]
        assert r.headers["transfer-encoding"] == "chunked"
        r = await c.get("/sync-stream")
        assert r.content == b"ab" and r.headers["content-length"] == "2"
        r = await c.head("/stream")
        assert r.content == b"" and r.status_code == 200
        r = await c.get("/file/a.css")
        assert r.content == b"body{}" and r.headers["content-type"] == "text/css; charset=utf-8"
        assert "last-modified" in r.headers
        r = await c.get("/file/big.bin")
        assert r.content == big and r.headers["content-length"] == str(len(big))
        r = await c.head("/file/big.bin")
        assert r.content == b"" and r.headers["content-length"] == str(len(big))
        assert (await c.get("/file/missing.txt")).status_code == 404
        r = await c.get("/download")
        assert "attachment" in r.headers["content-disposition"]


def test_response_headers_never_change_the_list_they_were_given() -> None:
    """A header list shared by many responses (a module constant) stays as it was: cookies
    set on one response must never show up on another one's."""
    shared = [(b"cache-control", b"no-store")]
    app = App()

    @app.get("/login/{user}")
    async def login(request: Request) -> Response:
        r = Response("in", headers=shared)
        r.set_cookie("session", request.path_params["user"], expires=3600)
        r.headers["x-user"] = request.path_params["user"]
        return r

    @app.get("/public")
    async def public(request: Request) -> Response:
        return Response("hi", headers=shared)

    with TestClient(app) as c:
        r = c.get("/login/alice")
        [cookie] = r.headers.getlist("set-cookie")
        assert cookie.startswith("session=alice")
        expires = email.utils.parsedate_to_datetime(cookie.split("expires=")[1].split(";")[0])
        assert 3500 < expires.timestamp() - time.time() < 3700  # seconds from now
        c.get("/login/bob")
        r = c.get("/public")
        assert r.headers.getlist("set-cookie") == [] and "x-user" not in r.headers
    assert shared == [(b"cache-control", b"no-store")]


def test_invalid_response_header_is_500(caplog: pytest.LogCaptureFixture) -> None:
    app = App()

    @app.get("/bad")
    async def bad(request: Request) -> Response:
        return Response("x", headers=[(b"x-evil", b"a\r\nSet-Cookie: pwned=1")])

    with caplog.at_level(logging.ERROR, logger="server.app"), TestClient(app) as c:
        r = c.get("/bad")
    assert r.status_code == 500
    assert "pwned" not in r.headers.items().__repr__()


# --- middleware, hooks, errors ---


async def test_middleware_order_and_short_circuit() -> None:
    app = App()
    order: list[str] = []

    @app.middleware
    async def outer(request: Request, call_next):  # type: ignore[no-untyped-def]
        order.append("outer-in")
        response = await call_next(request)
        response.headers["x-outer"] = "1"
        order.append("outer-out")
        return response

    @app.middleware
    async def inner(request: Request, call_next):  # type: ignore[no-untyped-def]
        order.append("inner-in")
        if request.path == "/blocked":
            return Response("blocked", status=403)
        response = await call_next(request)
        order.append("inner-out")
        return response

    @app.get("/x/{n:int}")
    async def x(request: Request) -> str:
        order.append("handler")
        return "ok"

    async with AsyncTestClient(app) as c:
        r = await c.get("/x/1")
        assert r.text == "ok" and r.headers["x-outer"] == "1"
        assert order == ["outer-in", "inner-in", "handler", "inner-out", "outer-out"]
        r = await c.get("/blocked")
        assert r.status_code == 403 and r.headers["x-outer"] == "1"
        r = await c.get("/nope")  # 404s pass through middleware too
        assert r.status_code == 404 and r.headers["x-outer"] == "1"
        r = await c.post("/x/1")
        assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"


async def test_hooks_run_in_order() -> None:
    app = App()
    events: list[str] = []

    @app.on_startup
    async def s1() -> None:
        events.append("start1")

    @app.on_startup
    def s2() -> None:
        events.append("start2")

    @app.on_shutdown
    async def d1() -> None:
        events.append("stop")

    @app.get("/")
    async def root(request: Request) -> str:
        return ",".join(events)

    async with AsyncTestClient(app) as c:
        assert (await c.get("/")).text == "start1,start2"
    assert events == ["start1", "start2", "stop"]


async def test_error_handlers(caplog: pytest.LogCaptureFixture) -> None:
    app = App()

    class Missing(LookupError):
        pass

    @app.exception_handler(LookupError)
    async def lookup(request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": str(exc)}, status=404)

    @app.get("/http")
    async def http(request: Request) -> str:
        raise HTTPException(418, "teapot", headers={"x-tea": "1"})

    @app.get("/missing")
    async def missing(request: Request) -> str:
        raise Missing("gone")

    @app.get("/boom")
    async def boom(request: Request) -> str:
        raise RuntimeError("secret detail")

    @app.get("/late")
    async def late(request: Request) -> Response:
        async def gen() -> AsyncIterator[bytes]:
            yield b"part"
            raise RuntimeError("mid-stream")

        return StreamingResponse(gen())

    async with AsyncTestClient(app) as c:
        r = await c.get("/http")
        assert r.status_code == 418 and r.text == "teapot" and r.headers["x-tea"] == "1"
        r = await c.get("/missing")
        assert r.status_code == 404 and r.json() == {"error": "gone"}
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="server.app"):
            r = await c.get("/boom")
        assert r.status_code == 500
        assert "secret" not in r.text
        assert len([rec for rec in caplog.records if rec.name == "server.app"]) == 1
        r = await c.get("/late")
        assert r.aborted and r.status_code == 200


async def test_most_specific_error_handler_wins() -> None:
    """As in Starlette: a handler of a status takes the HTTPExceptions of that status, the
    router's 404 and 405 included (also under middleware, which sees the response), and a
    catch-all ``Exception`` handler leaves HTTPException and a too large body their answers."""
    app = App()
    seen: list[str] = []

    @app.exception_handler(Exception)
    async def anything(request: Request, exc: Exception) -> Response:
        return Response("caught", 500)

    @app.exception_handler(404)
    async def not_found(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return JSONResponse({"missing": request.path}, status=404)

    @app.get("/raise/{status:int}")
    async def raising(request: Request) -> str:
        raise HTTPException(request.path_params["status"], "as raised")

    @app.post("/json")
    async def js(request: Request) -> object:
        return await request.json()

    @app.get("/boom")
    async def boom(request: Request) -> str:
        raise RuntimeError("x")

    async with AsyncTestClient(app) as c:
        r = await c.get("/nowhere")
        assert r.status_code == 404 and r.json() == {"missing": "/nowhere"}
        r = await c.get("/raise/404")
        assert r.status_code == 404 and r.json() == {"missing": "/raise/404"}
        r = await c.get("/raise/409")
        assert r.status_code == 409 and r.text == "as raised"
        r = await c.post("/json", content=b"{oops")
        assert r.status_code == 400
        r = await c.post("/boom")
        assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"
        r = await c.get("/boom")
        assert r.status_code == 500 and r.text == "caught"

        @app.exception_handler(405)
        async def not_allowed(request: Request, exc: Exception) -> Response:
            assert isinstance(exc, HTTPException) and exc.headers is not None
            return Response("no " + request.method, 405, exc.headers)

        @app.middleware
        async def tag(request: Request, call_next: Any) -> Response:
            response = await call_next(request)
            seen.append(f"{request.path} {response.status}")
            return response

        r = await c.post("/boom")
        assert (r.status_code, r.text, r.headers["allow"]) == (405, "no POST", "GET, HEAD")
        assert (await c.get("/nowhere")).json() == {"missing": "/nowhere"}
        assert seen == ["/boom 405", "/nowhere 404"]


def test_repr_shows_state() -> None:
    app = make_app()
    assert "routes=" in repr(app)
    assert "TestClient" in repr(TestClient(app))


# --- end to end over real sockets (needs server.serve) ---


async def test_e2e_native_app(tmp_path: Path, fd_count) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("server.serve")
    import httpx

    from server.testing import live_server

    (tmp_path / "page.html").write_text("<p>hi</p>")
    app = make_app()

    @app.post("/echo")
    async def echo(request: Request) -> Response:
        return Response(await request.body(), content_type="application/octet-stream")

    @app.get("/stream")
    async def stream(request: Request) -> Response:
        async def gen() -> AsyncIterator[bytes]:
            for i in range(100):
                yield b"%d," % i

        return StreamingResponse(gen())

    @app.get("/page")
    async def page(request: Request) -> Response:
        return FileResponse(tmp_path / "page.html")

    @app.get("/{rest:path}/end/")
    async def ending(request: Request) -> str:
        return request.path_params["rest"]

    # A first cycle lets the loop create its lazily-made fds (uvloop does), then count.
    async with live_server(app) as url, httpx.AsyncClient(base_url=url) as client:
        assert (await client.get("/")).text == "root"
    before = fd_count()
    async with live_server(app) as url, httpx.AsyncClient(base_url=url) as client:
        r = await client.get("/users/12")
        assert r.status_code == 200 and r.json() == {"id": 12}
        assert r.headers["content-type"] == "application/json"
        r = await client.get("/users/x")
        assert r.status_code == 404
        r = await client.post("/users/1")
        assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"
        r = await client.head("/users/3")
        assert r.status_code == 200 and r.content == b"" and r.headers["content-length"] == "8"
        body = os.urandom(300_000)
        r = await client.post("/echo", content=body)
        assert r.content == body
        r = await client.get("/stream")
        assert r.text == "".join(f"{i}," for i in range(100))
        r = await client.get("/page")
        assert r.text == "<p>hi</p>" and r.headers["content-type"] == "text/html; charset=utf-8"
        r = await client.get("/slash", follow_redirects=True)
        assert r.text == "slash"
        # a slash redirect never names another host (``//host/...`` would)
        reader, writer = await asyncio.open_connection(*url.removeprefix("http://").split(":"))
        writer.write(b"GET //evil.example/end HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        answer = await reader.read()
        writer.close()
        assert (
            answer.startswith(b"HTTP/1.1 308 ")
            and b"\r\nlocation: /evil.example/end/\r\n" in answer
        )
    assert fd_count() <= before


async def test_e2e_server_wide_options_and_asterisk_form() -> None:
    """``OPTIONS *`` (RFC 9110 9.3.7) is about the server: 200, no body, ``Allow`` naming
    what the routes answer; the asterisk-form with any other method is a 400 that says why."""
    pytest.importorskip("server.serve")
    import http.client

    from server.testing import live_server

    async with live_server(make_app()) as url:
        host, port = url.removeprefix("http://").split(":")

        def ask(method: str) -> tuple[int, dict[str, str], bytes]:
            conn = http.client.HTTPConnection(host, int(port), timeout=5)
            try:
                conn.request(method, "*")
                r = conn.getresponse()
                return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
            finally:
                conn.close()

        status, headers, body = await asyncio.to_thread(ask, "OPTIONS")
        assert (status, body, headers["content-length"]) == (200, b"", "0")
        assert headers["allow"] == "DELETE, GET, HEAD, PATCH, POST, PUT"
        status, headers, body = await asyncio.to_thread(ask, "GET")
        assert status == 400 and b"only valid for OPTIONS" in body
        assert headers["connection"] == "close"


async def test_e2e_errors_and_disconnect(caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("server.serve")
    import asyncio

    import httpx

    from server.testing import live_server

    app = App()
    stopped = asyncio.Event()

    @app.get("/boom")
    async def boom(request: Request) -> str:
        raise RuntimeError("kaboom")

    @app.get("/ok")
    async def ok(request: Request) -> str:
        return "ok"

    @app.get("/forever")
    async def forever(request: Request) -> Response:
        async def gen() -> AsyncIterator[bytes]:
            try:
                while True:
                    yield b"x" * 65536
            finally:
                stopped.set()

        return StreamingResponse(gen())

    with caplog.at_level(logging.INFO):
        async with live_server(app) as url:
            async with httpx.AsyncClient(base_url=url) as client:
                r = await client.get("/boom")
                assert r.status_code == 500 and "kaboom" not in r.text
                assert (await client.get("/ok")).text == "ok"  # same keep-alive connection
            host, port = url.removeprefix("http://").rsplit(":", 1)
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"GET /forever HTTP/1.1\r\nHost: x\r\n\r\n")
            await reader.readexactly(100_000)
            writer.transport.abort()  # reset mid-response
            await asyncio.wait_for(stopped.wait(), 10)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "kaboom" in str(errors[0].exc_info[1]), errors


async def test_e2e_stream_stops_when_the_client_closes() -> None:
    """A streaming generator waiting for events (server-sent events) is stopped, its
    ``finally`` run, once the client closes, as Starlette's is; a generator that reads the
    request body meanwhile is not disturbed by that watch."""
    from server.testing import live_server

    app = App()
    events: asyncio.Queue[bytes] = asyncio.Queue()
    stopped = asyncio.Event()

    @app.get("/events")
    async def sse(request: Request) -> Response:
        async def gen() -> AsyncIterator[bytes]:
            try:
                yield b"data: hello\n\n"
                while True:
                    yield await events.get()  # nothing more comes
            finally:
                stopped.set()

        return StreamingResponse(gen(), content_type="text/event-stream")

    @app.post("/upper")
    async def upper(request: Request) -> Response:
        async def gen() -> AsyncIterator[bytes]:
            async for chunk in request.stream():
                yield chunk.upper()

        return StreamingResponse(gen())

    async with live_server(app) as url:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
        await reader.readuntil(b"data: hello\n\n")
        writer.close()  # a FIN, no reset
        await asyncio.wait_for(stopped.wait(), 5)

        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"POST /upper HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        for part in (b"abc", b"def"):
            writer.write(b"3\r\n" + part + b"\r\n")
            await asyncio.sleep(0.05)
        writer.write(b"0\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ") and b"transfer-encoding: chunked" in head
        assert await reader.readuntil(b"0\r\n\r\n") == b"3\r\nABC\r\n3\r\nDEF\r\n0\r\n\r\n"
        writer.close()


async def test_e2e_stream_cleanup_finishes_before_the_request_ends() -> None:
    """A handler cancelled while its generator waits (request_timeout here) lets the
    generator's cleanup finish before the request ends and the connection goes."""
    from server.testing import live_server

    app = App(Config(request_timeout=0.3))
    cleaned: list[str] = []

    @app.get("/wait")
    async def wait(request: Request) -> Response:
        async def gen() -> AsyncIterator[bytes]:
            try:
                yield b"first"
                await asyncio.Event().wait()
                yield b"never"
            finally:
                await asyncio.sleep(0.05)  # (async cleanup: closing a database cursor...)
                cleaned.append("done")

        return StreamingResponse(gen())

    async with live_server(app, app.config.with_(port=0)) as url:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /wait HTTP/1.1\r\nHost: x\r\n\r\n")
        data = await asyncio.wait_for(reader.read(), 10)  # to the end: the answer is cut
        assert b"first" in data and not data.endswith(b"0\r\n\r\n")
        assert cleaned == ["done"]
        writer.close()


@pytest.mark.parametrize("case", list(BROKEN_BODIES))
async def test_e2e_broken_request_body_is_answered_4xx(
    case: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A handler reading a body that breaks its framing sees a disconnect (the App does not
    answer for it); the client still gets the 400 with the parser's reason (or 413), then the
    connection closes; nothing is logged as an error and other connections carry on."""
    from server.testing import live_server

    data, status, reason = BROKEN_BODIES[case]
    app = App()
    seen: list[str] = []

    @app.post("/echo")
    async def echo(request: Request) -> bytes:
        try:
            return await request.body()
        except Exception as exc:
            seen.append(type(exc).__name__)
            raise

    @app.get("/ok")
    async def ok(request: Request) -> str:
        return "ok"

    with caplog.at_level(logging.WARNING):
        async with live_server(app, max_body_size=LIMIT, body_timeout=BODY_TIMEOUT) as url:
            import httpx

            async with httpx.AsyncClient(base_url=url) as client:
                assert (await client.get("/ok")).text == "ok"
                got, head, body = await send_raw(url, data, half_close=case in HALF_CLOSED)
                assert got == status and reason.lower() in body.lower(), (got, body)
                assert b"\r\nconnection: close" in head
                assert (await client.get("/ok")).text == "ok"  # the same other connection
    assert seen  # the handler did see the failure
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_content_length_header_that_does_not_match_the_body_is_a_500(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The in-process client applies the server's framing rules (what fails on a real
    connection fails in the user's tests too)."""
    app = App()

    @app.get("/proxy")
    async def proxy(request: Request) -> Response:
        # e.g. headers copied from an upstream whose body was decompressed since
        return Response(b"abc", headers={"content-length": "10"})

    @app.get("/ok")
    async def ok(request: Request) -> Response:
        return Response(b"abc", headers={"content-length": "3"})

    @app.get("/chunked")
    async def chunked(request: Request) -> Response:
        return Response(b"abc", headers={"transfer-encoding": "chunked"})

    client = TestClient(app)
    with caplog.at_level(logging.ERROR):
        assert client.get("/proxy").status_code == 500
    assert any(
        "does not match the body" in str(r.exc_info[1]) for r in caplog.records if r.exc_info
    )
    r = client.get("/ok")
    assert r.status_code == 200 and r.content == b"abc"
    r = client.get("/chunked")  # framed by chunks, as on a connection: no Content-Length added
    assert r.content == b"abc" and "content-length" not in r.headers
    r = client.head("/proxy")  # no body sent: the length may be announced
    assert r.status_code == 200 and r.headers["content-length"] == "10"


def test_nan_in_a_json_result_is_a_500_not_invalid_json(caplog: pytest.LogCaptureFixture) -> None:
    app = App()

    @app.get("/nan")
    async def nan(request: Request) -> dict[str, float]:
        return {"x": float("nan")}

    with caplog.at_level(logging.ERROR):
        r = TestClient(app).get("/nan")
    assert r.status_code == 500 and b"NaN" not in r.content
    assert any(
        "not JSON compliant" in str(rec.exc_info[1]) for rec in caplog.records if rec.exc_info
    )


def test_dump_json_matches_json_dumps() -> None:
    """dump_json builds json's C encoder itself: same bytes as json.dumps, same errors; NaN and
    infinities are refused (they are not JSON)."""
    import json

    from server.response import dump_json

    values: list[object] = [
        {"message": "Hello, World!"},
        [1, 2.5, None, True, False, -0.0, 10**30],
        'é\u2028\x00"\\',
        {"a": {"b": [{"c": "ü"}]}, 1: "int key", None: "n"},
        [1e308, -1e-308],
        {},
        "",
    ]
    for v in values:
        assert dump_json(v) == json.dumps(v, separators=(",", ":"), ensure_ascii=False).encode()
    for bad in (float("nan"), [float("inf")], {"x": -float("inf")}):
        with pytest.raises(ValueError, match="not JSON compliant"):
            dump_json(bad)
    with pytest.raises(TypeError):
        dump_json({"s": {1, 2}})
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(ValueError, match="Circular"):
        dump_json(loop)
    deep: list[object] = []
    inner = deep
    for _ in range(100_000):  # not a cycle, just too deep for json.dumps on any version
        inner.append([])
        inner = inner[0]  # type: ignore[assignment]
    with pytest.raises(RecursionError):
        dump_json(deep)
    assert dump_json({"after": "errors"}) == b'{"after":"errors"}'  # the shared encoder is fine


async def test_stream_watch_never_leaves_the_body_running() -> None:
    """The task a streamed body runs in never outlives its request, however the request ends:
    cancelled twice (request_timeout, then a forced shutdown) or while the body's cleanup
    fails; and nothing is left for asyncio to report as never retrieved."""
    from server.response import _until_client_closes

    loop = asyncio.get_running_loop()
    reported: list[str] = []
    loop.set_exception_handler(lambda _loop, ctx: reported.append(ctx["message"]))

    class Watched:
        async def wait_client_closed(self) -> None:
            await asyncio.Event().wait()

    async def body(fail: bool) -> None:
        try:
            await asyncio.sleep(10)
        finally:
            await asyncio.sleep(0.05)
            if fail:
                raise ValueError("cleanup failed")

    try:
        for fail, cancels in ((False, 2), (True, 1)):
            before = asyncio.all_tasks()
            watch = asyncio.ensure_future(_until_client_closes(Watched(), body(fail)))  # type: ignore[arg-type]
            for _ in range(cancels):
                await asyncio.sleep(0.02)
                watch.cancel()
            with pytest.raises(asyncio.CancelledError):
                await watch
            assert asyncio.all_tasks() == before  # the body's task is done too
        gc.collect()
        await asyncio.sleep(0.05)
        assert reported == []
    finally:
        loop.set_exception_handler(None)
