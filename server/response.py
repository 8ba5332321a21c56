"""Responses: objects that know how to send themselves through an Exchange.

Theory of operation: every response class has ``async def send(exchange, method)``. Whole-body
responses (:class:`Response`, :class:`JSONResponse`, :class:`RedirectResponse`, ...) are
``streaming = False``: the app may call :meth:`Response.respond_now` synchronously, which is one
``exchange.respond(status, headers, body)`` call and lets the connection layer frame the whole
response into one write. :class:`StreamingResponse` uses ``start``/``write``/``end``;
:class:`FileResponse` uses ``start``/``sendfile``/``end`` so the body never passes through
Python on loops with zero-copy ``sendfile``; :class:`PipeResponse` uses ``exchange.splice``
for pipe-backed bodies. :func:`send_plan` writes the plans both :class:`FileResponse` and
:class:`~server.staticfiles.StaticFiles` (a directory mount, in its own module) make.

Handlers may also return plain values; :func:`to_response` maps them: ``str`` -> text/plain
(UTF-8), ``bytes`` -> application/octet-stream, ``dict``/``list`` -> JSON, ``None`` -> 204.
HEAD requests: the connection layer suppresses the body of ``respond``; streamed and file
responses skip producing the body themselves and send only the head.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import stat
import sys
import termios
import time
from collections.abc import AsyncIterable, Coroutine, Iterable
from datetime import datetime
from email.utils import formatdate
from http.cookies import SimpleCookie
from typing import Any, ClassVar
from urllib.parse import quote

from server import static
from server.exchange import ClientDisconnected, Exchange
from server.filecache import FileView
from server.request import HeaderInit, Headers

CT_TEXT = (b"content-type", b"text/plain; charset=utf-8")
CT_BYTES = (b"content-type", b"application/octet-stream")
CT_JSON = (b"content-type", b"application/json")
CT_HTML = (b"content-type", b"text/html; charset=utf-8")


# built once: dumps() with options would build a new encoder per call. allow_nan=False: NaN and
# infinities are not JSON (RFC 8259; JSON.parse refuses them), so they raise ValueError (a 500
# with the error logged) instead of leaving as invalid JSON, as in Starlette and Go
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
# JSONEncoder.encode is a Python wrapper that builds json's C encoder on every call. We build that
# C encoder once, with _ENCODER's settings and no circular-reference markers (the markers are
# what would make it single-use): 53.7k -> 49.7k instructions for a whole /json request
# (python -m loadtest instrcount --path /json). A cycle then ends in RecursionError (the C
# encoder guards its recursion), and dump_json re-runs that rare case with the checking encoder,
# so its errors stay json.dumps's (ValueError for a cycle). None where the C module is missing.
_c_make_encoder = getattr(json.encoder, "c_make_encoder", None)


def _c_encoder(markers: dict[int, Any] | None) -> Any:
    return _c_make_encoder(  # type: ignore[misc]
        markers,
        _ENCODER.default,
        json.encoder.encode_basestring,
        None,
        ":",
        ",",
        False,  # sort_keys
        False,  # skipkeys
        False,  # allow_nan
    )


_encode = None if _c_make_encoder is None else _c_encoder(None)


def dump_json(content: Any) -> bytes:
    """Compact UTF-8 JSON (no spaces, non-ASCII kept as is); the same bytes, and the same
    errors, as ``json.dumps(content, separators=(",", ":"), ensure_ascii=False,
    allow_nan=False).encode()``: NaN or an infinity raises ``ValueError``."""
    if _encode is None:
        return _ENCODER.encode(content).encode("utf-8")
    try:
        return "".join(_encode(content, 0)).encode("utf-8")
    except RecursionError:  # a cycle, or just very deep: the checking encoder tells which
        return "".join(_c_encoder({})(content, 0)).encode("utf-8")


class Response:
    """A whole-body response. ``body`` may be ``str`` (UTF-8 encoded) or ``bytes``."""

    media_type: ClassVar[str | None] = None  # default Content-Type of the class
    streaming: ClassVar[bool] = False  # False: respond_now() sends it synchronously

    __slots__ = ("body", "headers", "status")

    def __init__(
        self,
        body: bytes | str | None = b"",
        status: int = 200,
        headers: HeaderInit = None,
        content_type: str | None = None,
    ) -> None:
        self.status = status
        self.body: bytes = self.render(body)
        self.headers = Headers(headers)
        ctype = content_type or self.media_type
        if ctype is None and isinstance(body, str):
            ctype = "text/plain; charset=utf-8"
        if ctype is not None and "content-type" not in self.headers:
            self.headers.append("content-type", ctype)

    def render(self, body: Any) -> bytes:
        if body is None:
            return b""
        if isinstance(body, str):
            return body.encode("utf-8")
        return bytes(body)

    def set_cookie(
        self,
        key: str,
        value: str = "",
        *,
        max_age: int | None = None,
        expires: int | datetime | str | None = None,
        path: str | None = "/",
        domain: str | None = None,
        secure: bool = False,
        httponly: bool = False,
        samesite: str | None = "lax",
    ) -> None:
        """Append a ``Set-Cookie`` header (values are quoted as ``http.cookies`` does).

        ``expires``: seconds from now (an ``int``, as in Starlette), an aware ``datetime``, or
        the attribute's text as it is sent."""
        cookie: SimpleCookie = SimpleCookie()
        cookie[key] = value
        morsel = cookie[key]
        if max_age is not None:
            morsel["max-age"] = max_age
        if expires is not None:
            if isinstance(expires, datetime):
                expires = formatdate(expires.timestamp(), usegmt=True)
            elif isinstance(expires, int):
                expires = formatdate(time.time() + expires, usegmt=True)
            morsel["expires"] = expires
        if path is not None:
            morsel["path"] = path
        if domain is not None:
            morsel["domain"] = domain
        if secure:
            morsel["secure"] = True
        if httponly:
            morsel["httponly"] = True
        if samesite is not None:
            morsel["samesite"] = samesite
        self.headers.append("set-cookie", morsel.OutputString())

    def delete_cookie(self, key: str, *, path: str = "/", domain: str | None = None) -> None:
        self.set_cookie(key, "", max_age=0, expires=0, path=path, domain=domain)

    def respond_now(self, exchange: Exchange) -> None:
        """Send synchronously (only for ``streaming = False`` classes)."""
        exchange.respond(self.status, self.headers.raw, self.body)

    async def send(self, exchange: Exchange) -> None:
        exchange.respond(self.status, self.headers.raw, self.body)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.status} {len(self.body)} bytes>"


class PlainTextResponse(Response):
    media_type = "text/plain; charset=utf-8"
    __slots__ = ()


class HTMLResponse(Response):
    media_type = "text/html; charset=utf-8"
    __slots__ = ()


class JSONResponse(Response):
    """``content`` serialised as compact JSON."""

    media_type = "application/json"
    __slots__ = ()

    def render(self, body: Any) -> bytes:
        return dump_json(body)


class RedirectResponse(Response):
    """Redirect to ``url`` (307 by default: method and body preserved)."""

    __slots__ = ()

    def __init__(self, url: str, status: int = 307, headers: HeaderInit = None) -> None:
        super().__init__(b"", status, headers)
        self.headers["location"] = quote(url, safe=":/%#?=@[]!$&'()*+,;~")


class StreamingResponse(Response):
    """Body produced by an (async) iterable of ``bytes``/``str`` chunks; chunked on HTTP/1.1
    unless a ``Content-Length`` header is given.

    An async iterable is stopped (cancelled where it waits, so its ``finally`` runs) when the
    client closes the connection, as Starlette's is: a generator that waits for events
    (server-sent events) would otherwise wait on for a client that has gone."""

    streaming = True
    __slots__ = ("content",)

    def __init__(
        self,
        content: AsyncIterable[bytes | str] | Iterable[bytes | str],
        status: int = 200,
        headers: HeaderInit = None,
        content_type: str | None = None,
    ) -> None:
        super().__init__(b"", status, headers, content_type)
        self.content = content

    async def send(self, exchange: Exchange) -> None:
        length = self.headers.get("content-length")
        if length is not None:
            del self.headers["content-length"]
        exchange.start(self.status, self.headers.raw, int(length) if length is not None else None)
        if exchange.head.method != "HEAD":
            content = self.content
            if isinstance(content, AsyncIterable):
                await _until_client_closes(exchange, _write_all(exchange, content))
            else:
                for chunk in content:
                    await exchange.write(chunk.encode("utf-8") if isinstance(chunk, str) else chunk)
        await exchange.end()

    def __repr__(self) -> str:
        return f"<StreamingResponse {self.status} {type(self.content).__name__}>"


async def _write_all(exchange: Exchange, content: AsyncIterable[bytes | str]) -> None:
    try:
        async for chunk in content:
            await exchange.write(chunk.encode("utf-8") if isinstance(chunk, str) else chunk)
    finally:  # stopped early (a disconnect, a cancel): an async generator's finally runs now
        aclose = getattr(content, "aclose", None)
        if aclose is not None:
            await aclose()


async def _until_client_closes(exchange: Exchange, body: Coroutine[Any, Any, None]) -> None:
    """Run ``body`` in a task of its own while watching for the client to close; if it closes
    first, cancel ``body``, let it finish, and raise :class:`ClientDisconnected`. Cancelled
    ourselves (a reset, request_timeout, shutdown; maybe more than once), we cancel ``body``
    too and still let it finish first: its cleanup belongs to the request."""
    task = asyncio.ensure_future(body)
    closed = asyncio.ensure_future(exchange.wait_client_closed())
    stopped = cancelled = False
    try:
        await asyncio.wait((task, closed), return_when=asyncio.FIRST_COMPLETED)
    finally:
        closed.cancel()
        if not task.done():
            stopped = True
            task.cancel()
            while not task.done():
                try:
                    await asyncio.wait((task,))
                except asyncio.CancelledError:
                    cancelled = True
                    task.cancel()
        if not task.cancelled():
            task.exception()  # (retrieved here: raised below, or moot once stopped)
    if cancelled:
        raise asyncio.CancelledError
    if stopped:
        raise ClientDisconnected("client closed the connection during a streamed response")
    task.result()


def guess_type(path: str) -> str:
    """Content-Type for ``path`` by extension (``charset=utf-8`` for text types)."""
    return static.content_type(path).decode("latin-1")


async def send_plan(
    exchange: Exchange, plan: static.Plan, file: Any, data: bytes | None = None
) -> None:
    """Write a static :class:`~server.static.Plan`: the file's bytes come from ``data`` (a
    memory-cached small file: one ``respond``, one write) or from ``file`` through
    ``exchange.sendfile`` (zero-copy where the loop can). A file that turns out shorter than
    announced makes the connection layer close the connection."""
    if not plan.body:
        if plan.status in (304, 412, 416):
            exchange.respond(plan.status, plan.headers, b"")
        else:  # HEAD: the head with the Content-Length a GET would have
            exchange.start(plan.status, plan.headers, plan.length)
            await exchange.end()
        return
    if data is not None:
        if len(plan.parts) == 1 and not plan.trailer:
            _, offset, count = plan.parts[0]
            body = data if count == len(data) else data[offset : offset + count]
        else:
            pieces = []
            for prefix, offset, count in plan.parts:
                pieces.append(prefix)
                pieces.append(data[offset : offset + count])
            pieces.append(plan.trailer)
            body = b"".join(pieces)
        exchange.respond(plan.status, plan.headers, body)
        return
    exchange.start(plan.status, plan.headers, plan.length)
    for prefix, offset, count in plan.parts:
        if prefix:
            await exchange.write(prefix)
        await exchange.sendfile(file, offset, count)
    if plan.trailer:
        await exchange.write(plan.trailer)
    await exchange.end()


_NOT_FOUND = [CT_TEXT]


class FileResponse(Response):
    """A file sent with ``exchange.sendfile``; Content-Type from the extension. A missing or
    unreadable file answers 404. With ``status`` 200 it honours conditional requests (ETag,
    Last-Modified: 304/412) and ``Range`` (206, multipart/byteranges, 416) the way static
    mounts do (:mod:`server.static`)."""

    streaming = True
    __slots__ = ("filename", "path")

    def __init__(
        self,
        path: str | os.PathLike[str],
        status: int = 200,
        headers: HeaderInit = None,
        content_type: str | None = None,
        filename: str | None = None,
    ) -> None:
        self.path = os.fspath(path)
        super().__init__(b"", status, headers, content_type or guess_type(self.path))
        self.filename = filename
        if filename is not None:
            self.headers.setdefault(
                "content-disposition", f"attachment; filename*=utf-8''{quote(filename)}"
            )

    async def send(self, exchange: Exchange) -> None:
        try:
            fd = os.open(self.path, _OPEN_FLAGS)
        except (OSError, ValueError):
            exchange.respond(404, _NOT_FOUND, b"Not Found")
            return
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                exchange.respond(404, _NOT_FOUND, b"Not Found")
                return
            ctype = b"application/octet-stream"
            extra = []
            for name, value in self.headers.raw:
                if name == b"content-type":
                    ctype = value
                elif name not in (b"etag", b"last-modified", b"content-length"):
                    extra.append((name, value))
            info = static.FileInfo(
                size=st.st_size,
                mtime=st.st_mtime,
                etag=static.make_etag(st),
                last_modified=static.http_date(st.st_mtime),
                content_type=ctype,
            )
            head = exchange.head
            plan = static.plan_response(
                head.method,
                static.request_fields(head.headers),
                info,
                extra=extra,
                status=self.status,
            )
            await send_plan(exchange, plan, FileView(fd))
        finally:
            os.close(fd)

    def __repr__(self) -> str:
        return f"<FileResponse {self.status} {self.path!r}>"


async def _readable(fd: int) -> None:
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    loop.add_reader(fd, lambda: fut.done() or fut.set_result(None))
    try:
        await fut
    finally:
        loop.remove_reader(fd)


def _pipe_available(fd: int) -> int:
    """Bytes waiting in pipe ``fd`` (FIONREAD), -1 where the ioctl is not available."""
    try:
        buf = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
    except OSError:
        return -1
    return int.from_bytes(buf, sys.byteorder, signed=True)


class PipeResponse(Response):
    """A body read from a pipe (a subprocess's stdout, a FIFO) until EOF.

    On a connection with ``exchange.splice`` the bytes go pipe -> socket with ``os.splice``
    (netpoll on Linux): with ``content_length`` in one call, else one chunk per batch of bytes
    the pipe holds (``FIONREAD`` says how many, so each chunk's size is known before it is
    sent). Elsewhere the pipe is read and written. ``pipe`` is an fd or an object with
    ``fileno()``; it is closed afterwards when ``close`` is true. A pipe that ends before
    ``content_length`` bytes aborts the connection (the length was promised).
    """

    streaming = True
    __slots__ = ("close", "content_length", "pipe")

    def __init__(
        self,
        pipe: int | Any,
        status: int = 200,
        headers: HeaderInit = None,
        content_type: str | None = "application/octet-stream",
        content_length: int | None = None,
        close: bool = True,
    ) -> None:
        super().__init__(b"", status, headers, content_type)
        self.pipe = pipe
        self.content_length = content_length
        self.close = close

    async def send(self, exchange: Exchange) -> None:
        fd = self.pipe if isinstance(self.pipe, int) else self.pipe.fileno()
        try:
            os.set_blocking(fd, False)
            exchange.start(self.status, self.headers.raw, self.content_length)
            if exchange.head.method != "HEAD":
                await self._body(exchange, fd)
            await exchange.end()
        finally:
            if self.close:
                if isinstance(self.pipe, int):
                    os.close(fd)
                else:
                    self.pipe.close()

    async def _body(self, exchange: Exchange, fd: int) -> None:
        splice = getattr(exchange, "splice", None)
        left = self.content_length
        if splice is not None and left is not None:
            await splice(fd, left)
            return
        while left is None or left > 0:
            await _readable(fd)
            n = _pipe_available(fd) if splice is not None else -1
            if n > 0:
                if left is not None:
                    n = min(n, left)
                    left -= n
                await splice(fd, n)  # type: ignore[misc]
                continue
            try:
                data = os.read(fd, 256 * 1024 if left is None else min(left, 256 * 1024))
            except BlockingIOError:
                continue
            if not data:
                break  # EOF
            if left is not None:
                left -= len(data)
            await exchange.write(data)
        # a short body with a declared length makes end() abort the connection

    def __repr__(self) -> str:
        return f"<PipeResponse {self.status} pipe={self.pipe!r} length={self.content_length}>"


_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)


def to_response(result: Any) -> Response:
    """Map a handler's return value to a :class:`Response`."""
    if isinstance(result, Response):
        return result
    if isinstance(result, str):
        return Response(result.encode("utf-8"), headers=[CT_TEXT])
    if isinstance(result, bytes | bytearray | memoryview):
        return Response(bytes(result), headers=[CT_BYTES])
    if isinstance(result, dict | list):
        return Response(dump_json(result), headers=[CT_JSON])
    if result is None:
        return Response(b"", 204)
    raise TypeError(f"handler returned an unsupported value: {type(result).__name__}")
