"""Access log: one line per request on ``logging.getLogger("server.access")``.

Theory of operation: :class:`AccessLogHandler` wraps an app handler and hands it a thin
:class:`_Recorder` around the real exchange that notes the status and counts body bytes as they
pass (``respond``/``write``/``sendfile``). When the handler finishes, one INFO line is logged:

    127.0.0.1:53122 - "GET /path?q=1 HTTP/1.1" 200 13 0.21ms

Every field that comes from the client is escaped by :func:`escape`: control characters (C0,
DEL, C1 - including CR, LF and ESC), backslash and double quote become ``\\xNN`` / ``\\\\`` /
``\\"``, so a request can neither forge log lines nor emit terminal escape sequences. The log is
off by default (``--access-log``); when off, the handler is not wrapped at all.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any, BinaryIO

from server.exchange import Exchange, RequestHead, ResponseHeaders

log = logging.getLogger("server.access")

_UNSAFE = re.compile(r'[\x00-\x1f\x7f-\x9f"\\]')


def _esc(m: re.Match[str]) -> str:
    c = m.group()
    if c in '"\\':
        return "\\" + c
    return f"\\x{ord(c):02x}"


def escape(text: str) -> str:
    """Escape control characters, backslash and double quote for a log line."""
    return _UNSAFE.sub(_esc, text)


def format_line(head: RequestHead, status: int | None, size: int, duration: float) -> str:
    client = head.client
    who = f"{client[0]}:{client[1]}" if client else "-"
    target = head.raw_path.decode("latin-1")
    if head.query_string:
        target += "?" + head.query_string.decode("latin-1")
    return (
        f'{escape(who)} - "{escape(head.method)} {escape(target)} HTTP/{escape(head.http_version)}" '
        f"{status if status is not None else '-'} {size} {duration * 1000:.2f}ms"
    )


class _Recorder:
    """An Exchange proxy that records status and body size."""

    __slots__ = ("exchange", "head", "logged", "size", "status", "t0")

    def __init__(self, exchange: Exchange) -> None:
        self.exchange = exchange
        self.head = exchange.head
        self.status: int | None = None  # status passed to respond/start
        self.size = 0  # body bytes handed to the exchange
        self.t0 = time.perf_counter()
        self.logged = False  # the line is written when the response is complete

    def log(self, status: int | None) -> None:
        """Write the request's line (once): when the response is complete, as uvicorn does,
        not when a handler that works on after it (background tasks) returns."""
        if not self.logged:
            self.logged = True
            log.info(format_line(self.head, status, self.size, time.perf_counter() - self.t0))

    async def receive(self) -> bytes:
        return await self.exchange.receive()

    def respond(self, status: int, headers: ResponseHeaders, body: bytes) -> None:
        self.exchange.respond(status, headers, body)
        self.status = status
        if self.head.method != "HEAD" and status not in (204, 304):
            self.size = len(body)
        self.log(status)

    def start(
        self, status: int, headers: ResponseHeaders, content_length: int | None = None
    ) -> None:
        self.exchange.start(status, headers, content_length)
        self.status = status

    async def write(self, chunk: bytes) -> None:
        await self.exchange.write(chunk)
        if self.head.method != "HEAD":
            self.size += len(chunk)

    async def sendfile(self, file: BinaryIO, offset: int, count: int) -> None:
        await self.exchange.sendfile(file, offset, count)
        if self.head.method != "HEAD":
            self.size += count

    async def end(self) -> None:
        await self.exchange.end()
        self.log(self.status)

    @property
    def response_started(self) -> bool:
        return self.exchange.response_started

    @property
    def disconnected(self) -> bool:
        return self.exchange.disconnected

    @property
    def client_closed(self) -> bool:
        return self.exchange.client_closed

    async def wait_client_closed(self) -> None:
        await self.exchange.wait_client_closed()

    def __repr__(self) -> str:
        return f"<_Recorder status={self.status} size={self.size} of {self.exchange!r}>"


class AccessLogHandler:
    """Wrap ``handler`` so each request is logged once its response is complete (or, when it
    never completes, once the handler ends)."""

    def __init__(self, handler: Any) -> None:
        self.handler = handler
        # lifecycle hooks of the wrapped handler stay reachable
        self.startup = getattr(handler, "startup", None)
        self.shutdown = getattr(handler, "shutdown", None)
        self.cancel_on_reset = getattr(handler, "cancel_on_reset", True)  # (ConnectionPool)

    async def __call__(self, exchange: Exchange) -> None:
        rec = _Recorder(exchange)
        try:
            await self.handler(rec)
        except BaseException:
            if rec.status is None:
                rec.status = 500  # the connection layer answers 500
            raise
        finally:
            if not rec.logged:  # (not complete: an error, a disconnect, no answer at all)
                status = rec.status
                if status is None and not exchange.disconnected:
                    status = 500  # returned without responding: the connection answers 500
                rec.log(status)

    def __repr__(self) -> str:
        return f"<AccessLogHandler {self.handler!r}>"
