"""Responses: objects that know how to send themselves through an Exchange.

Theory of operation: every response class has ``async def send(exchange, method)``. Whole-body
responses (:class:`Response`, :class:`JSONResponse`, :class:`RedirectResponse`, ...) are
``streaming = False``: the app may call :meth:`Response.respond_now` synchronously, which is one
``exchange.respond(status, headers, body)`` call and lets the connection layer frame the whole
response into one write. :class:`StreamingResponse` uses ``start``/``write``/``end``;
:class:`FileResponse` uses ``start``/``sendfile``/``end`` so the body never passes through
Python on loops with zero-copy ``sendfile``.

Handlers may also return plain values; :func:`to_response` maps them: ``str`` -> text/plain
(UTF-8), ``bytes`` -> application/octet-stream, ``dict``/``list`` -> JSON, ``None`` -> 204.
HEAD requests: the connection layer suppresses the body of ``respond``; streamed and file
responses skip producing the body themselves and send only the head.
"""

from __future__ import annotations

import json
import mimetypes
import os
import stat
from collections.abc import AsyncIterable, Iterable
from email.utils import formatdate
from http.cookies import SimpleCookie
from typing import Any, ClassVar
from urllib.parse import quote

from server.exchange import Exchange
from server.request import HeaderInit, Headers

CT_TEXT = (b"content-type", b"text/plain; charset=utf-8")
CT_BYTES = (b"content-type", b"application/octet-stream")
CT_JSON = (b"content-type", b"application/json")
CT_HTML = (b"content-type", b"text/html; charset=utf-8")


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)  # built once: dumps() with
# options would build a new encoder per call


def dump_json(content: Any) -> bytes:
    """Compact UTF-8 JSON (no spaces, non-ASCII kept as is)."""
    return _ENCODER.encode(content).encode("utf-8")


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
        expires: int | str | None = None,
        path: str | None = "/",
        domain: str | None = None,
        secure: bool = False,
        httponly: bool = False,
        samesite: str | None = "lax",
    ) -> None:
        """Append a ``Set-Cookie`` header (values are quoted as ``http.cookies`` does)."""
        cookie: SimpleCookie = SimpleCookie()
        cookie[key] = value
        morsel = cookie[key]
        if max_age is not None:
            morsel["max-age"] = max_age
        if expires is not None:
            morsel["expires"] = (
                formatdate(expires, usegmt=True) if isinstance(expires, int) else expires
            )
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
    unless a ``Content-Length`` header is given."""

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
                async for chunk in content:
                    await exchange.write(chunk.encode("utf-8") if isinstance(chunk, str) else chunk)
            else:
                for chunk in content:
                    await exchange.write(chunk.encode("utf-8") if isinstance(chunk, str) else chunk)
        await exchange.end()

    def __repr__(self) -> str:
        return f"<StreamingResponse {self.status} {type(self.content).__name__}>"


def guess_type(path: str) -> str:
    ctype, encoding = mimetypes.guess_type(path, strict=False)
    if ctype is None or encoding is not None:
        return "application/octet-stream"
    if ctype.startswith("text/") or ctype in ("application/javascript", "application/json"):
        return f"{ctype}; charset=utf-8"
    return ctype


class FileResponse(Response):
    """A file sent with ``exchange.sendfile``; Content-Type from the extension. A missing or
    unreadable file answers 404."""

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
            f = open(self.path, "rb")
        except OSError:
            exchange.respond(404, [CT_TEXT], b"Not Found")
            return
        try:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                exchange.respond(404, [CT_TEXT], b"Not Found")
                return
            headers = list(self.headers.raw)
            headers.append((b"last-modified", formatdate(st.st_mtime, usegmt=True).encode()))
            size = st.st_size
            exchange.start(self.status, headers, size)
            if size and exchange.head.method != "HEAD":
                await exchange.sendfile(f, 0, size)
            await exchange.end()
        finally:
            f.close()

    def __repr__(self) -> str:
        return f"<FileResponse {self.status} {self.path!r}>"


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
