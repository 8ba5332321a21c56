"""ASGI 3 adapter: any ASGI application becomes an app handler on the Exchange contract.

Theory of operation: :class:`ASGIHandler` builds one ``http`` scope per exchange and gives the
application a ``receive``/``send`` pair backed by a small per-request :class:`_Cycle`:

* ``receive`` pulls body chunks from ``exchange.receive()`` as ``http.request`` events; the body
  end is known from ``Content-Length`` (no extra empty event), or from the exchange returning
  ``b""`` for chunked bodies. Once the body is complete, ``receive`` waits until the response
  is finished (or the client is gone or has closed its side: a FIN) and then returns
  ``http.disconnect``. A body that breaks
  its framing or the size limit is reported as ``http.disconnect`` too (as uvicorn does); the
  app's response after that is refused like one to a client that left, and the connection
  answers 400 or 413 once the app returns.
* ``send``: ``http.response.start`` is held back; a first ``http.response.body`` with
  ``more_body`` false becomes one ``exchange.respond`` (one write, Content-Length computed),
  otherwise ``exchange.start`` then ``write``s and ``end``. ``http.response.pathsend``
  (advertised in ``scope["extensions"]``) opens the file and uses ``exchange.sendfile``.
  After the client has gone, ``send`` raises ``OSError`` (ASGI spec 2.4), which is why the scope
  advertises ``spec_version`` 2.4 (apps such as Starlette then need no disconnect watcher).
* An app that raises before the response started gets a 500; after it started, the exception is
  logged and the handler returns without ending, so the connection layer aborts the connection.

Lifespan (:meth:`ASGIHandler.startup` / :meth:`ASGIHandler.shutdown`): the ``lifespan`` scope
runs in its own task. ``"auto"`` (default) treats an app that raises before answering startup as
"does not support lifespan" and carries on; ``"on"`` makes that an error; ``"off"`` skips
lifespan. ``lifespan.startup.failed`` raises :class:`LifespanFailure` in every mode. The state
dict the app fills during startup is shallow-copied into each request scope.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from server.config import Config
from server.exchange import BodyTooLarge, ClientDisconnected, Exchange
from server.filecache import FileView
from server.response import send_plan
from server.static import Plan

log = logging.getLogger("server.asgi")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[
    [Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]
]


_ASGI = {"version": "3.0", "spec_version": "2.4"}


class LifespanFailure(RuntimeError):
    """The application reported ``lifespan.startup.failed`` / ``shutdown.failed`` (or crashed
    in ``lifespan="on"`` mode)."""


class _Cycle:
    """One request/response exchange between an ASGI app and an Exchange."""

    __slots__ = ("body_done", "done", "exchange", "failed", "remaining", "start", "state")

    def __init__(self, exchange: Exchange) -> None:
        self.exchange = exchange
        # remaining: body bytes still expected (None: unknown, read until b""); -1 until the
        # first receive() works it out (most apps that answer GETs never call receive)
        self.remaining: int | None = -1
        self.body_done = False  # True once the last http.request event was handed out
        self.start: Message | None = None  # held http.response.start
        self.state = 0  # 0: nothing sent, 1: streaming, 2: response complete
        self.done: asyncio.Future[None] | None = None  # set when complete (for receive waiters)
        # the request body broke its framing or the size limit: the app is told the client
        # left (as uvicorn does), and the connection answers 400 or 413 once the app returns
        self.failed = False

    def _expected(self) -> int | None:
        head = self.exchange.head
        cl = head.get_header(b"content-length")
        te = head.get_header(b"transfer-encoding")
        remaining = int(cl) if cl is not None and cl.isdigit() else None
        if te is None and remaining is None:
            remaining = 0
        return remaining

    async def receive(self) -> Message:
        if not self.body_done:
            if self.remaining == -1:
                self.remaining = self._expected()
            if self.remaining == 0:
                self.body_done = True
                return {"type": "http.request", "body": b"", "more_body": False}
            try:
                chunk = await self.exchange.receive()
            except (ClientDisconnected, BodyTooLarge):
                self.body_done = True
                self.failed = not self.exchange.disconnected
                return {"type": "http.disconnect"}
            if self.remaining is not None:
                self.remaining -= len(chunk)
                more = self.remaining > 0 and bool(chunk)
            else:
                more = bool(chunk)
            if not more:
                self.body_done = True
            return {"type": "http.request", "body": chunk, "more_body": more}
        if self.state != 2 and not self.exchange.client_closed and not self.failed:
            if self.done is None:
                self.done = asyncio.get_running_loop().create_future()
            await self._wait_done()
        return {"type": "http.disconnect"}

    async def _wait_done(self) -> None:
        """Until the response is complete or the client has closed (gone, or a FIN: as Go
        cancels a request's context on EOF; the answer is still sent if the app sends one)."""
        assert self.done is not None
        closed = asyncio.ensure_future(self.exchange.wait_client_closed())
        try:
            await asyncio.wait((self.done, closed), return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()

    def _finish(self) -> None:
        self.state = 2
        if self.done is not None and not self.done.done():
            self.done.set_result(None)

    async def send(self, message: Message) -> None:
        kind = message["type"]
        ex = self.exchange
        if self.state == 2:
            raise RuntimeError(f"ASGI message {kind!r} after the response completed")
        if ex.disconnected or self.failed:
            raise OSError("client disconnected")
        try:
            if kind == "http.response.start":
                if self.start is not None or self.state:
                    raise RuntimeError("http.response.start sent twice")
                self.start = message
            elif kind == "http.response.body":
                if self.state == 0 and not message.get("more_body", False):
                    # the whole response in one message: one respond, no nested coroutine
                    status, headers, length = self._head()
                    body = message.get("body", b"")
                    if type(body) is not bytes:
                        body = bytes(body)
                    if length is not None and length != len(body):
                        self._check_length(status, length, len(body))
                    ex.respond(status, headers, body)
                    self._finish()
                else:
                    await self._body(message)
            elif kind == "http.response.pathsend":
                await self._pathsend(message)
            else:
                raise RuntimeError(f"unexpected ASGI message {kind!r}")
        except ClientDisconnected as exc:
            raise OSError("client disconnected") from exc

    def _check_length(self, status: int, length: int, size: int) -> None:
        """A whole body of ``size`` bytes whose Content-Length from the app says ``length``:
        refused (as when streamed), except for a HEAD, 204 or 304, which send no body."""
        if status not in (204, 304) and self.exchange.head.method != "HEAD":
            raise RuntimeError(
                f"response Content-Length {length} does not match its body ({size} bytes)"
            )

    def _head(self) -> tuple[int, list[tuple[bytes, bytes]], int | None]:
        start = self.start
        if start is None:
            raise RuntimeError("response body sent before http.response.start")
        headers: list[tuple[bytes, bytes]] = []
        length: int | None = None
        for name, value in start.get("headers", ()):
            if type(name) is not bytes:
                name = bytes(name)
            if type(value) is not bytes:
                value = bytes(value)
            if len(name) == 14 and name.lower() == b"content-length":
                length = int(value)
                if self.exchange.head.method == "HEAD":
                    headers.append((name, value))
                continue
            headers.append((name, value))
        status = start["status"]
        return status if type(status) is int else int(status), headers, length

    async def _body(self, message: Message) -> None:
        body = message.get("body", b"")
        more = message.get("more_body", False)
        ex = self.exchange
        if self.state == 0:  # (with more_body: send() answers a whole body itself)
            status, headers, length = self._head()
            ex.start(status, headers, length)
            self.state = 1
        if body:
            await ex.write(body)
        if not more:
            await ex.end()
            self._finish()

    async def _pathsend(self, message: Message) -> None:
        """``http.response.pathsend``: the app's status and headers, then the file through the
        same path as static files (``send_plan``: sendfile where the loop can; a file that
        shrinks mid-send closes the connection). Opened non-blocking, so a FIFO cannot hang
        the loop; anything but a regular file is refused."""
        if self.state != 0:
            raise RuntimeError("http.response.pathsend after the body started")
        status, headers, _ = self._head()
        fd = os.open(message["path"], _OPEN_FLAGS)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise RuntimeError(f"pathsend of a non-regular file: {message['path']!r}")
            size = st.st_size
            head_only = self.exchange.head.method == "HEAD"
            plan = Plan(status, headers, size, [(b"", 0, size)] if size else [], body=not head_only)
            self.state = 1
            await send_plan(self.exchange, plan, FileView(fd))
        finally:
            os.close(fd)
        self._finish()


_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)


class ASGIHandler:
    """Wraps an ASGI 3 application as ``async def handler(exchange)``."""

    # A client's reset does not cancel the app (as under uvicorn: ASGI apps are not written
    # for a CancelledError at any await): it learns of it from receive() (http.disconnect) and
    # send() (OSError), and the connection is let go when it returns. request_timeout and the
    # end of a graceful shutdown still cancel it.
    cancel_on_reset = False

    def __init__(
        self, app: ASGIApp, config: Config | None = None, lifespan: str | None = None
    ) -> None:
        self.app = app
        self.config = config or Config()
        self.lifespan = lifespan or str(self.config.extra.get("lifespan", "auto"))
        if self.lifespan not in ("auto", "on", "off"):
            raise ValueError(f"lifespan must be auto, on or off, not {self.lifespan!r}")
        # the prefix a proxy in front strips (e.g. "/api"): the app is told it is mounted there
        self.root_path = str(self.config.extra.get("root_path", "")).rstrip("/")
        self._raw_root = self.root_path.encode("utf-8")
        self.state: dict[str, Any] = {}  # lifespan state, copied into each request scope
        self._lifespan_task: asyncio.Task[None] | None = None
        self._to_app: asyncio.Queue[Message] | None = None  # lifespan events for the app
        self._from_app: asyncio.Queue[Message] | None = None  # the app's lifespan answers

    async def __call__(self, exchange: Exchange) -> None:
        head = exchange.head
        root = self.root_path
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": _ASGI.copy(),  # (the app may change its own; a copy beats a literal)
            "http_version": head.http_version,
            "method": head.method,
            "scheme": head.scheme,
            # below root_path, path and raw_path include it (ASGI: PATH_INFO is path with
            # root_path cut off; uvicorn does the same)
            "path": root + head.path if root else head.path,
            "raw_path": self._raw_root + head.raw_path if root else head.raw_path,
            "query_string": head.query_string,
            "root_path": self.root_path,
            "headers": head.headers,
            "client": head.client,
            "server": head.server,
            "state": self.state.copy(),
            "extensions": {"http.response.pathsend": {}},
        }
        cycle = _Cycle(exchange)
        try:
            await self.app(scope, cycle.receive, cycle.send)
        except Exception as exc:
            if exchange.disconnected or cycle.failed or isinstance(exc, ClientDisconnected):
                return
            if isinstance(exc, OSError) and cycle.state != 0 and exchange.disconnected:
                return
            log.error("Exception in ASGI application %s %s", head.method, head.path, exc_info=exc)
            if not exchange.response_started:
                exchange.respond(
                    500, [(b"content-type", b"text/plain; charset=utf-8")], b"Internal Server Error"
                )
            return
        finally:
            cycle._finish()
        if not exchange.response_started and not exchange.disconnected and not cycle.failed:
            log.error("ASGI application returned without a response: %s %s", head.method, head.path)
            exchange.respond(
                500, [(b"content-type", b"text/plain; charset=utf-8")], b"Internal Server Error"
            )

    # --- lifespan ---
    async def startup(self) -> None:
        if self.lifespan == "off":
            return
        self._to_app, self._from_app = asyncio.Queue(), asyncio.Queue()
        self._lifespan_task = asyncio.get_running_loop().create_task(self._run_lifespan())
        await self._to_app.put({"type": "lifespan.startup"})
        answer = await self._from_app.get()
        kind = answer["type"]
        if kind == "lifespan.startup.complete":
            return
        if kind == "lifespan.startup.failed":
            raise LifespanFailure(f"ASGI lifespan startup failed: {answer.get('message', '')}")
        # the app exited or raised without answering
        self._lifespan_task = None
        if self.lifespan == "on" or kind == "lifespan.crash.after":
            raise LifespanFailure(
                f"ASGI lifespan startup did not complete: {answer.get('message', '')}"
            )
        log.debug("ASGI application does not support lifespan: %s", answer.get("message", ""))

    async def shutdown(self) -> None:
        task, to_app, from_app = self._lifespan_task, self._to_app, self._from_app
        if task is None or to_app is None or from_app is None:
            return
        self._lifespan_task = None
        await to_app.put({"type": "lifespan.shutdown"})
        answer = await from_app.get()
        await asyncio.gather(task, return_exceptions=True)
        if answer["type"] == "lifespan.shutdown.failed":
            raise LifespanFailure(f"ASGI lifespan shutdown failed: {answer.get('message', '')}")
        if answer["type"] != "lifespan.shutdown.complete":
            log.error("ASGI lifespan shutdown did not complete: %s", answer.get("message", ""))

    async def _run_lifespan(self) -> None:
        assert self._to_app is not None and self._from_app is not None
        to_app, from_app = self._to_app, self._from_app
        scope = {"type": "lifespan", "asgi": _ASGI.copy(), "state": self.state}
        started = False

        async def send(message: Message) -> None:
            nonlocal started
            if message["type"].startswith("lifespan.startup"):
                started = True
            await from_app.put(message)

        try:
            await self.app(scope, to_app.get, send)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                raise
            kind = "lifespan.crash.after" if started else "lifespan.crash.before"
            if started:
                log.error("ASGI lifespan task failed", exc_info=exc)
            await from_app.put({"type": kind, "message": f"{type(exc).__name__}: {exc}"})
        else:
            await from_app.put({"type": "lifespan.exit", "message": "application returned"})

    def __repr__(self) -> str:
        return f"<ASGIHandler app={self.app!r} lifespan={self.lifespan} running={self._lifespan_task is not None}>"


def asgi_handler(
    app: ASGIApp, config: Config | None = None, *, lifespan: str | None = None
) -> ASGIHandler:
    """Turn an ASGI 3 application into an app handler (with ``startup``/``shutdown`` methods)."""
    return ASGIHandler(app, config, lifespan)
