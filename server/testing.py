"""Testing without sockets: an in-memory :class:`MemoryExchange` and a :class:`TestClient`.

Theory of operation: :class:`MemoryExchange` implements the :class:`~server.exchange.Exchange`
contract the way the connection layer does (one ``respond``/``start`` per exchange, header
validation before anything is "sent", HEAD bodies suppressed, ``BodyTooLarge`` past
``Config.max_body_size``, ``ClientDisconnected`` after :meth:`MemoryExchange.disconnect`) and
records the response instead of framing it. :func:`run_exchange` calls an app handler on it
with the connection layer's after-the-handler rules (500 when nothing was sent, *aborted* when a
response was started but not ended).

The clients build the app handler exactly as the server does (:func:`server.cli.make_handler`:
native ``App``, any ASGI 3 app, or a raw ``async def handler(exchange)``), so they test the app
layer the way the server calls it. :class:`AsyncTestClient` is for ``async`` tests;
:class:`TestClient` drives its own event loop in the calling thread (so it cannot be used from
inside a running loop: use the async client there). As context managers both run the app's
startup and shutdown hooks (or the ASGI lifespan).

    with TestClient(app) as client:
        r = client.get("/users/1", params={"q": "x"})
        assert r.status_code == 200 and r.json() == {...}
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json as jsonlib
import os
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any, BinaryIO
from urllib.parse import quote, unquote_to_bytes, urlencode, urlsplit

from server.config import Config
from server.exchange import (
    BodyTooLarge,
    ClientDisconnected,
    ExchangeError,
    InvalidHeader,
    RequestHead,
    ResponseHeaders,
    ResponseStarted,
)
from server.exchange import (
    Headers as RawHeaders,
)
from server.http11_response import declared_length, response_head
from server.request import Headers
from server.worker import _NOT_STARTED, _Continue

_BAD = (b"\r", b"\n", b"\x00")


def _check_headers(headers: ResponseHeaders) -> None:
    for name, value in headers:
        if not isinstance(name, bytes) or not isinstance(value, bytes):
            raise InvalidHeader(f"header name and value must be bytes: {name!r}: {value!r}")
        if (
            not name
            or any(c in name for c in _BAD)
            or any(c in value for c in _BAD)
            or b":" in name
        ):
            raise InvalidHeader(f"invalid header {name!r}: {value!r}")


def _framed(headers: ResponseHeaders) -> bool:
    """The handler supplied Content-Length or Transfer-Encoding (the server adds neither then)."""
    return any(k.lower() in (b"content-length", b"transfer-encoding") for k, _ in headers)


class MemoryExchange:
    """An Exchange whose request comes from memory and whose response is recorded."""

    def __init__(
        self,
        head: RequestHead,
        body: bytes | Iterable[bytes] = b"",
        *,
        max_body_size: int | None = None,
    ) -> None:
        self.head = head
        self._chunks = [body] if isinstance(body, bytes) else list(body)  # unread request chunks
        self._chunks = [c for c in self._chunks if c]
        self._max_body = max_body_size  # None: unlimited
        self._received = 0  # request body bytes handed out so far
        self._disconnected = False
        self._closed: asyncio.Event | None = None  # made by wait_client_closed
        self.status: int | None = None  # response status once started
        self.headers: RawHeaders = []  # response headers as the handler gave them
        self.body_chunks: list[bytes] = []  # response body pieces, in order
        self.ended = False  # True once respond() or end() completed the response
        self.continue_sent = False  # True if the handler read the body of an Expect: 100 request
        self.content_length: int | None = None  # declared length for start(), None: chunked
        self._sent = 0  # body bytes of a started response so far

    # --- client side controls ---
    def disconnect(self) -> None:
        """Simulate the client going away."""
        self._disconnected = True
        if self._closed is not None:
            self._closed.set()

    # --- the Exchange contract ---
    async def receive(self) -> bytes:
        if self._disconnected:
            raise ClientDisconnected("client disconnected")
        if self.head.expect_continue:
            self.continue_sent = True
        if not self._chunks:
            return b""
        chunk = self._chunks.pop(0)
        self._received += len(chunk)
        if self._max_body is not None and self._received > self._max_body:
            raise BodyTooLarge(f"request body exceeds {self._max_body} bytes")
        return chunk

    def respond(self, status: int, headers: ResponseHeaders, body: bytes) -> None:
        self._begin(status, headers, len(body))
        if not _framed(headers) and status not in (204, 304):
            self.headers.append((b"content-length", str(len(body)).encode()))
        if body and not self._no_body():
            self.body_chunks.append(bytes(body))
        self.ended = True

    def start(
        self, status: int, headers: ResponseHeaders, content_length: int | None = None
    ) -> None:
        if content_length is None:  # the handler's own Content-Length counts like one passed
            content_length = declared_length(headers)
        self._begin(status, headers, content_length)
        self.content_length = content_length
        if _framed(headers) or status in (204, 304):
            pass  # the handler framed it (response_head checked that it is consistent), or
            # a response that ends at its head: no framing added, as on a connection
        elif content_length is not None:
            self.headers.append((b"content-length", str(content_length).encode()))
        elif self.head.http_version == "1.1":
            self.headers.append((b"transfer-encoding", b"chunked"))

    def _begin(self, status: int, headers: ResponseHeaders, length: int | None) -> None:
        if self.status is not None:
            raise ResponseStarted("response already started")
        _check_headers(headers)
        # the server's own rules (framing headers that match the body, token names): what
        # fails here fails on a real connection too
        response_head(
            status,
            headers,
            length,
            True,
            self.head.http_version == "1.0",
            head_only=self.head.method == "HEAD",
        )
        if self._disconnected:
            raise ClientDisconnected("client disconnected")
        self.status = status
        self.headers = list(headers)

    async def write(self, chunk: bytes) -> None:
        self._writable(len(chunk))
        if chunk and not self._no_body():
            self.body_chunks.append(bytes(chunk))

    async def sendfile(self, file: BinaryIO, offset: int, count: int) -> None:
        self._writable(count)
        if not self._no_body():
            self.body_chunks.append(os.pread(file.fileno(), count, offset))

    def _no_body(self) -> bool:
        """A HEAD, 204 or 304 answer: body writes are dropped, as on a connection."""
        return self.head.method == "HEAD" or self.status in (204, 304)

    async def end(self) -> None:
        self._writable()
        declared = self.content_length
        if declared is not None and self._sent != declared and not self._no_body():
            return  # the connection aborts such a response: the result is ``aborted``
        self.ended = True

    def _writable(self, n: int = 0) -> None:
        if self.status is None:
            raise ExchangeError("write before start")
        if self.ended:
            raise ExchangeError("response already ended")
        if self._disconnected:
            raise ClientDisconnected("client disconnected")
        declared = self.content_length
        if declared is not None and self._sent + n > declared:
            raise ExchangeError("body longer than the declared Content-Length")
        self._sent += n

    @property
    def response_started(self) -> bool:
        return self.status is not None

    @property
    def disconnected(self) -> bool:
        return self._disconnected

    @property
    def client_closed(self) -> bool:
        return self._disconnected

    async def wait_client_closed(self) -> None:
        if self._closed is None:
            self._closed = asyncio.Event()
            if self._disconnected:
                self._closed.set()
        await self._closed.wait()

    def __repr__(self) -> str:
        return (
            f"<MemoryExchange {self.head.method} {self.head.path!r} status={self.status} "
            f"body={sum(map(len, self.body_chunks))}B ended={self.ended}>"
        )


class TestResponse:
    """What a test client returns: ``status_code``, ``headers``, ``content``, ``text``, ``json()``."""

    __test__ = False  # not a pytest class

    def __init__(self, exchange: MemoryExchange, aborted: bool) -> None:
        self.status_code: int = exchange.status or 0
        self.headers = Headers(exchange.headers)
        self.chunks = exchange.body_chunks  # body pieces as the app sent them
        self.content = b"".join(exchange.body_chunks)
        self.aborted = aborted  # the app started a response and never finished it
        self.exchange = exchange

    @property
    def status(self) -> int:
        return self.status_code

    @property
    def text(self) -> str:
        ctype = self.headers.get("content-type") or ""
        charset = "utf-8"
        if "charset=" in ctype:
            charset = ctype.split("charset=", 1)[1].split(";")[0].strip() or "utf-8"
        return self.content.decode(charset, "replace")

    def json(self) -> Any:
        return jsonlib.loads(self.content)

    def __repr__(self) -> str:
        return f"<TestResponse {self.status_code} {len(self.content)}B{' aborted' if self.aborted else ''}>"


async def run_exchange(handler: Any, exchange: MemoryExchange) -> bool:
    """Run ``handler`` on ``exchange`` as the connection layer would (in a context of its own,
    so context variables it sets stay with the request); True if aborted."""
    try:
        await _Continue(handler(exchange), _NOT_STARTED, contextvars.copy_context())
    except ClientDisconnected:
        return True
    except Exception:
        if not exchange.response_started:
            exchange.respond(
                500, [(b"content-type", b"text/plain; charset=utf-8")], b"Internal Server Error"
            )
            return False
        return True
    if not exchange.response_started:
        exchange.respond(
            500, [(b"content-type", b"text/plain; charset=utf-8")], b"Internal Server Error"
        )
        return False
    return not exchange.ended


_TARGET_SAFE = "!#$%&'()*+,/:;=?@[]~"  # visible ASCII a request target may hold as it is


def build_head(
    method: str,
    url: str,
    *,
    params: Mapping[str, Any] | Iterable[tuple[str, Any]] | None = None,
    headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    cookies: Mapping[str, str] | None = None,
    body_length: int | None = 0,
    client: tuple[str, int] = ("testclient", 50000),
    http_version: str = "1.1",
) -> RequestHead:
    """A :class:`RequestHead` as the connection layer would parse it for this request.

    As httpx sends a URL: characters that may not appear in a request target (non-ASCII, as
    UTF-8, space, ``"<>\\^`{|}``) are percent-encoded, escapes already there are kept."""
    parts = urlsplit(url)
    raw_path = quote(parts.path or "/", safe=_TARGET_SAFE).encode("ascii")
    query = quote(parts.query, safe=_TARGET_SAFE)
    if params:
        extra = urlencode(
            list(params.items()) if isinstance(params, Mapping) else list(params), doseq=True
        )
        query = f"{query}&{extra}" if query else extra
    raw: RawHeaders = [(b"host", (parts.netloc or "testserver").encode("latin-1"))]
    given = list(headers.items()) if isinstance(headers, Mapping) else list(headers or [])
    names = {k.lower() for k, _ in given}
    if "host" in names:
        raw = []
    raw.extend((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in given)
    if cookies:
        raw.append((b"cookie", "; ".join(f"{k}={v}" for k, v in cookies.items()).encode("latin-1")))
    if body_length and "content-length" not in names and "transfer-encoding" not in names:
        raw.append((b"content-length", str(body_length).encode()))
    expect = any(
        k == "expect" and v.lower() == "100-continue" for k, v in ((k.lower(), v) for k, v in given)
    )
    return RequestHead(
        method=method.upper(),
        path=unquote_to_bytes(raw_path).decode("utf-8", "replace"),  # as the parser does
        raw_path=raw_path,
        query_string=query.encode("latin-1"),
        http_version=http_version,
        headers=raw,
        keep_alive=True,
        client=client,
        server=("testserver", 80),
        expect_continue=expect,
    )


class AsyncTestClient:
    """``await client.get(...)`` against an app, in the running loop. ``async with`` runs hooks."""

    __test__ = False

    def __init__(
        self, app: Any, *, config: Config | None = None, interface: str | None = None
    ) -> None:
        from server.cli import make_handler

        self.config = config or Config()
        if interface is not None:
            self.config = self.config.with_(interface=interface)
        self.handler, self._startup, self._shutdown = make_handler(app, self.config)
        self.started = False  # startup hooks ran and shutdown did not yet

    async def startup(self) -> None:
        for hook in self._startup:
            await hook()
        self.started = True

    async def shutdown(self) -> None:
        if self.started:
            self.started = False
            for hook in self._shutdown:
                await hook()

    async def __aenter__(self) -> AsyncTestClient:
        await self.startup()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    async def request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, Any] | Iterable[tuple[str, Any]] | None = None,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        cookies: Mapping[str, str] | None = None,
        content: bytes | str | Iterable[bytes] | None = None,
        json: Any = None,
        data: Mapping[str, Any] | None = None,
        http_version: str = "1.1",
    ) -> TestResponse:
        hdrs = list(headers.items()) if isinstance(headers, Mapping) else list(headers or [])
        body: bytes | list[bytes]
        if json is not None:
            body = jsonlib.dumps(json).encode()
            hdrs.append(("content-type", "application/json"))
        elif data is not None:
            body = urlencode(data, doseq=True).encode()
            hdrs.append(("content-type", "application/x-www-form-urlencoded"))
        elif isinstance(content, str):
            body = content.encode()
        elif content is None or isinstance(content, bytes):
            body = content or b""
        else:
            body = list(content)  # several chunks: sent as a chunked body
            hdrs.append(("transfer-encoding", "chunked"))
        length = len(body) if isinstance(body, bytes) else None
        head = build_head(
            method,
            url,
            params=params,
            headers=hdrs,
            cookies=cookies,
            body_length=length,
            http_version=http_version,
        )
        exchange = MemoryExchange(head, body, max_body_size=self.config.max_body_size)
        if length is not None and length > self.config.max_body_size:
            # the server's parser answers this from the head, before any app code runs
            exchange.respond(
                413,
                [(b"content-type", b"text/plain; charset=utf-8"), (b"connection", b"close")],
                b"request body too large\n",
            )
            return TestResponse(exchange, False)
        aborted = await run_exchange(self.handler, exchange)
        return TestResponse(exchange, aborted)

    async def get(self, url: str, **kw: Any) -> TestResponse:
        return await self.request("GET", url, **kw)

    async def head(self, url: str, **kw: Any) -> TestResponse:
        return await self.request("HEAD", url, **kw)

    async def post(self, url: str, **kw: Any) -> TestResponse:
        return await self.request("POST", url, **kw)

    async def put(self, url: str, **kw: Any) -> TestResponse:
        return await self.request("PUT", url, **kw)

    async def patch(self, url: str, **kw: Any) -> TestResponse:
        return await self.request("PATCH", url, **kw)

    async def delete(self, url: str, **kw: Any) -> TestResponse:
        return await self.request("DELETE", url, **kw)

    async def options(self, url: str, **kw: Any) -> TestResponse:
        return await self.request("OPTIONS", url, **kw)

    def __repr__(self) -> str:
        return f"<AsyncTestClient handler={self.handler!r} started={self.started}>"


class TestClient:
    """Synchronous test client: ``client.get("/x")``. Drives a private event loop."""

    __test__ = False

    def __init__(
        self, app: Any, *, config: Config | None = None, interface: str | None = None
    ) -> None:
        self._client = AsyncTestClient(app, config=config, interface=interface)
        self._loop: asyncio.AbstractEventLoop | None = None  # created on first use

    def _run(self, coro: Any) -> Any:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            coro.close()
            raise RuntimeError(
                "TestClient cannot run inside a running event loop; use AsyncTestClient"
            )
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(coro)

    def __enter__(self) -> TestClient:
        self._run(self._client.startup())
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._run(self._client.shutdown())
        finally:
            self.close()

    def close(self) -> None:
        if self._loop is not None:
            loop, self._loop = self._loop, None
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def request(self, method: str, url: str, **kw: Any) -> TestResponse:
        return self._run(self._client.request(method, url, **kw))

    def get(self, url: str, **kw: Any) -> TestResponse:
        return self.request("GET", url, **kw)

    def head(self, url: str, **kw: Any) -> TestResponse:
        return self.request("HEAD", url, **kw)

    def post(self, url: str, **kw: Any) -> TestResponse:
        return self.request("POST", url, **kw)

    def put(self, url: str, **kw: Any) -> TestResponse:
        return self.request("PUT", url, **kw)

    def patch(self, url: str, **kw: Any) -> TestResponse:
        return self.request("PATCH", url, **kw)

    def delete(self, url: str, **kw: Any) -> TestResponse:
        return self.request("DELETE", url, **kw)

    def options(self, url: str, **kw: Any) -> TestResponse:
        return self.request("OPTIONS", url, **kw)

    def __repr__(self) -> str:
        return f"<TestClient {self._client!r} loop={'open' if self._loop else 'none'}>"


@contextlib.asynccontextmanager
async def live_server(
    app: Any, config: Config | None = None, **settings: Any
) -> AsyncIterator[str]:
    """Serve ``app`` on a real socket in the running loop; yields its base URL.

    Binds 127.0.0.1 port 0 unless ``config``/``settings`` say otherwise, runs the startup hooks
    (or ASGI lifespan), and on exit stops the server and runs the shutdown hooks.
    """
    from server import serve

    cfg = (config or Config(port=0)).with_(**settings)
    handler, startup, shutdown = make_handler_for(app, cfg)
    for hook in startup:
        await hook()
    bound: list[Any] = []
    ready = asyncio.Event()
    stop = asyncio.Event()

    def on_ready(addresses: list[Any]) -> None:
        bound.extend(addresses)
        ready.set()

    task = asyncio.ensure_future(serve.serve(handler, cfg, ready=on_ready, shutdown=stop))
    waiter = asyncio.ensure_future(ready.wait())
    try:
        await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()  # raises the bind error
            raise RuntimeError("server stopped before it was ready")
        addr = bound[0]
        if isinstance(addr, tuple):
            host, port = addr[0], addr[1]
            yield f"http://{'[' + host + ']' if ':' in host else host}:{port}"
        else:
            yield str(addr)
    finally:
        waiter.cancel()
        stop.set()
        try:
            await task
        finally:
            for hook in shutdown:
                await hook()


def make_handler_for(app: Any, config: Config) -> tuple[Any, list[Any], list[Any]]:
    from server.cli import make_handler

    return make_handler(app, config)
