"""One request and its response on an HTTP/1.1 connection: :class:`HttpExchange`.

Theory of operation
-------------------
:class:`~server.connection.HttpConnection` makes one :class:`HttpExchange` per parsed request
head and keeps it in its queue; the exchange implements the
:class:`server.exchange.Exchange` contract for the handler. It owns only per-request state:
the body chunks received and not yet consumed (``_chunks``, at most ``_BODY_HIGH`` bytes
before the connection stops reading), whether the body is complete, and the response's
progress (started, ended, the head of a started response not yet written, bytes announced
and sent). Everything that touches the socket, the timers or the order of pipelined requests
is the connection's: the exchange calls back into it (``_transport``, ``_resume``, ``_arm``,
``_drain``, ``_abort``); :func:`_send_file` and :func:`_splice` send zero-copy bodies through
``loop.sendfile`` / ``netpoll.splice``, with read + write where the loop or transport cannot.

A response is framed synchronously: ``respond`` builds the head (cached byte strings,
:func:`server.http11.response_head`) and hands ``[head, body]`` to the transport in one
``writelines``; ``start`` keeps the head until the first ``write``/``sendfile``/``end`` so
that it leaves with the first body bytes. ``_gen`` pins the exchange to one use of a pooled
connection object: once the connection is reset, the exchange reports ``disconnected``.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, BinaryIO

from .exchange import (
    ClientDisconnected,
    ExchangeError,
    RequestHead,
    ResponseHeaders,
    ResponseStarted,
)
from .http11 import LAST_CHUNK, ProtocolError, chunk_frame, declared_length, response_head

if TYPE_CHECKING:
    from .connection import HttpConnection

__all__ = ["HttpExchange"]

_BODY_HIGH = 256 * 1024  # buffered, unread request body that pauses reading
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_FILE_CHUNK = 256 * 1024  # read + write fallback of sendfile
_JOIN_MAX = 16 * 1024  # a body up to this size leaves in one buffer with its head (one send)
_NO_SENDFILE: tuple[type[BaseException], ...] = (
    NotImplementedError,
    asyncio.SendfileNotAvailableError,
    RuntimeError,
    AttributeError,
)


class _Disconnected(ClientDisconnected):
    """Raised into waiters when the transport is gone."""


class HttpExchange:
    """One request and its response (implements :class:`server.exchange.Exchange`)."""

    __slots__ = (
        "_body_error",
        "_buffered",
        "_chunked",
        "_chunks",
        "_conn",
        "_continue_sent",
        "_declared",
        "_done_body",
        "_drained",
        "_ended",
        "_gen",
        "_no_body",
        "_keep_alive",
        "_pending_head",
        "_sent",
        "_started",
        "_waiter",
        "head",
    )

    def __init__(self, conn: HttpConnection, head: RequestHead) -> None:
        self.head = head
        self._conn = conn
        self._gen = conn._gen  # the connection generation this exchange belongs to
        self._chunks: list[bytes] | None = None  # received, not yet consumed body chunks
        self._buffered = 0  # bytes in _chunks
        self._done_body = False  # END seen: the body is complete
        self._body_error: ExchangeError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._continue_sent = False
        self._started = False
        self._ended = False
        self._keep_alive = head.keep_alive
        self._pending_head: bytes | None = None  # head of a started response, not yet written
        self._drained = -1  # >= 0 once retired with its body unread: bytes discarded
        # Set by start(), read only after it (not made per request): _no_body (a HEAD, a 204
        # or a 304: body writes are counted, never sent), _chunked (writes are chunk-framed),
        # _declared (the Content-Length announced) and _sent (body bytes sent; respond() sets
        # it too).
        self._no_body: bool
        self._sent: int
        self._chunked: bool
        self._declared: int | None

    def __repr__(self) -> str:
        h = self.head
        state = "ended" if self._ended else "started" if self._started else "pending"
        return (
            f"<HttpExchange {h.method} {h.raw_path!r} {state} body_buffered={self._buffered} "
            f"body_complete={self._done_body} sent={getattr(self, '_sent', 0)}>"
        )

    # --- the Exchange contract ---
    @property
    def response_started(self) -> bool:
        return self._started

    @property
    def disconnected(self) -> bool:
        conn = self._conn
        return conn._gen != self._gen or conn._transport is None

    @property
    def client_closed(self) -> bool:
        conn = self._conn
        return conn._gen != self._gen or conn._transport is None or conn._eof

    async def wait_client_closed(self) -> None:
        conn = self._conn
        while not self.client_closed:
            # (not the body's waiter: a streamed answer may read the body while this waits)
            waiter = conn._loop.create_future()
            if conn._close_waiters is None:
                conn._close_waiters = []
            conn._close_waiters.append(waiter)
            try:
                await waiter
            finally:
                waiters = conn._close_waiters
                if waiters is not None and waiter in waiters:
                    waiters.remove(waiter)  # (cancelled: a connection may see many such waits)

    async def receive(self) -> bytes:
        conn = self._conn
        while True:
            if self._chunks:
                chunk = self._chunks.pop(0)  # type: ignore[union-attr]
                self._buffered -= len(chunk)
                if conn._stopped and self._buffered < _BODY_HIGH // 2:
                    conn._resume()
                return chunk
            if self._done_body:
                return b""
            if self._body_error is not None:
                raise _fresh(self._body_error)
            if self.disconnected:
                raise ClientDisconnected("client disconnected before the body was complete")
            if self.head.expect_continue and not self._continue_sent and not self._started:
                self._continue_sent = True
                conn._transport.write(_CONTINUE)  # type: ignore[union-attr]
            conn._resume()
            waiter = conn._loop.create_future()
            self._waiter = waiter
            conn._body_wait_since = conn._loop.time()
            conn._arm(conn._body_wait_since + conn.config.body_timeout)
            try:
                await waiter
            finally:
                self._waiter = None
                conn._body_wait_since = 0.0

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _response_keep_alive(self) -> bool:
        """Whether this response may keep the connection (decided before its head is built)."""
        conn = self._conn
        if not self._keep_alive or (conn._closing and len(conn._queue) <= 1):
            return False
        if not self._done_body:
            if self.head.expect_continue and not self._continue_sent:
                return False  # the client may or may not send the body: close
            remaining = conn._parser.body_remaining if conn._parsing is self else 0
            if remaining is not None and remaining > conn.config.max_drain_body:
                return False
        return True

    def respond(self, status: int, headers: ResponseHeaders, body: bytes) -> None:
        if self._started:
            raise ResponseStarted("response already started")
        conn = self._conn
        keep = self._keep_alive
        if keep and (conn._closing or not self._done_body):
            keep = self._response_keep_alive()
        head = self.head
        head_only = head.method == "HEAD"
        n = len(body)
        out, chunked, keep = response_head(
            status,
            headers,
            n,
            keep,
            head.http_version == "1.0",
            conn._server_line,
            head_only,
        )
        self._started = self._ended = True
        self._keep_alive = keep
        transport = conn._transport
        if transport is None or conn._gen != self._gen:  # disconnected
            self._sent = 0
            return
        if head_only or not (body or chunked) or status in (204, 304):
            self._sent = 0
            transport.write(out)
        elif chunked:  # the handler's Transfer-Encoding: chunked (rare): the body as one chunk
            self._sent = n
            transport.writelines([out, *chunk_frame(body), LAST_CHUNK])
        else:
            self._sent = n
            if n <= _JOIN_MAX and type(body) is bytes:
                transport.write(out + body)  # copying a small body beats a 2-vector sendmsg
            else:
                transport.writelines([out, body])

    def start(
        self, status: int, headers: ResponseHeaders, content_length: int | None = None
    ) -> None:
        if self._started:
            raise ResponseStarted("response already started")
        if content_length is None:  # the handler's own Content-Length counts like one passed
            content_length = declared_length(headers)
        head_only = self.head.method == "HEAD"
        # (a 204 or 304 ends at its head, RFC 9112 6.3: bytes after it would be read as the
        # next response, so a streamed body is dropped as respond() drops a whole one)
        self._no_body = head_only or status in (204, 304)
        self._sent = 0
        head, chunked, keep = response_head(
            status,
            headers,
            content_length=content_length,
            keep_alive=self._response_keep_alive(),
            http10=self.head.http_version == "1.0",
            server=self._conn._server_line,
            head_only=head_only,
        )
        self._started = True
        self._keep_alive = keep
        self._chunked = chunked and not self._no_body
        self._declared = content_length
        self._pending_head = head

    def _emit(self, bufs: list[Any]) -> None:
        head = self._pending_head
        if head is not None:
            self._pending_head = None
            bufs.insert(0, head)
        if bufs:
            transport = self._conn._transport
            assert transport is not None
            transport.writelines(bufs)

    def _check_write(self) -> None:
        if not self._started:
            raise ExchangeError("write before start")
        if self._ended:
            raise ExchangeError("write after end")
        if self.disconnected:
            raise ClientDisconnected("client disconnected")

    async def write(self, chunk: bytes) -> None:
        self._check_write()
        n = len(chunk)
        if self._declared is not None and self._sent + n > self._declared:
            raise ExchangeError("body longer than the declared Content-Length")
        self._sent += n
        if self._no_body:
            if self._pending_head is not None:
                self._emit([])
            return
        self._emit(chunk_frame(chunk) if self._chunked else [chunk] if n else [])
        conn = self._conn
        if conn._write_paused:
            await conn._drain(self._gen)

    async def sendfile(self, file: BinaryIO, offset: int, count: int) -> None:
        await self._send_counted(count, _send_file, file, offset)

    async def splice(self, pipe_fd: int, count: int) -> None:
        """Send exactly ``count`` bytes read from pipe ``pipe_fd`` (``netpoll.splice``: zero-copy
        on netpoll/Linux, read + write elsewhere). Fewer bytes (the writer closed the pipe)
        abort the connection, as a short ``sendfile`` does."""
        await self._send_counted(count, _splice, pipe_fd)

    async def _send_counted(self, count: int, send: Any, *args: Any) -> None:
        """A body piece of exactly ``count`` bytes that ``send(conn, gen, *args, count)`` puts on
        the socket itself (sendfile, splice): accounted and chunk-framed like ``write``."""
        self._check_write()
        if self._declared is not None and self._sent + count > self._declared:
            raise ExchangeError("body longer than the declared Content-Length")
        self._sent += count
        if self._no_body or count <= 0:
            if self._pending_head is not None:
                self._emit([])
            return
        self._emit([b"%x\r\n" % count] if self._chunked else [])
        await send(self._conn, self._gen, *args, count)
        if self._chunked:
            self._emit([b"\r\n"])

    async def end(self) -> None:
        if not self._started:
            raise ExchangeError("end before start")
        if self._ended:
            return
        self._ended = True
        if self.disconnected:
            return
        if self._declared is not None and self._sent != self._declared and not self._no_body:
            self._conn._abort("response shorter than its Content-Length")
            return
        self._emit([LAST_CHUNK] if self._chunked else [])
        if self._conn._write_paused:
            await self._conn._drain(self._gen)


# --- zero-copy bodies (the connection's transport, flow control and abort) ---
async def _send_file(
    conn: HttpConnection, gen: int, file: BinaryIO, offset: int, count: int
) -> None:
    loop = conn._loop
    transport = conn._transport
    if transport is None or gen != conn._gen:
        raise ClientDisconnected("client disconnected")
    try:
        direct = getattr(transport, "sendfile_range", None)
        if direct is not None:  # netpoll: no pause/resume of reading, no fstat, no seek
            sent = await direct(file.fileno(), offset, count)
        else:
            sent = await loop.sendfile(transport, file, offset, count, fallback=False)
        if conn._stopped and conn._transport is not None:
            conn._transport.pause_reading()  # asyncio's sendfile resumes reading
        if sent < count:  # the file shrank while being sent: the length was promised
            conn._abort("file shorter than announced")
            raise ClientDisconnected("file ended early")
        return
    except _NO_SENDFILE:
        if gen != conn._gen or conn._transport is None:
            raise ClientDisconnected("client disconnected")
    except OSError as exc:
        raise ClientDisconnected(str(exc)) from exc
    # read + write fallback (uvloop, TLS)
    file.seek(offset)
    left = count
    while left > 0:
        data = file.read(min(_FILE_CHUNK, left))
        if not data:
            conn._abort("file shorter than announced")
            raise ClientDisconnected("file ended early")
        left -= len(data)
        if gen != conn._gen or conn._transport is None:
            raise ClientDisconnected("client disconnected")
        conn._transport.write(data)
        if conn._write_paused:
            await conn._drain(gen)


async def _splice(conn: HttpConnection, gen: int, pipe_fd: int, count: int) -> None:
    from netpoll import splice  # works on any loop: read + write where splice cannot

    transport = conn._transport
    if transport is None or gen != conn._gen:
        raise ClientDisconnected("client disconnected")
    try:
        moved = await splice(transport, pipe_fd, count)
    except OSError as exc:
        raise ClientDisconnected(str(exc)) from exc
    if conn._stopped and conn._transport is not None:
        conn._transport.pause_reading()  # splice resumes reading it had paused
    if moved < count:
        conn._abort("pipe ended before the announced length")
        raise ClientDisconnected("pipe ended early")


def _fresh(err: ExchangeError) -> ExchangeError:
    """A new instance of a stored error, so raising it never ties a traceback (and the
    handler's frames) to the exchange that stores the original: no reference cycle."""
    if isinstance(err, _BodyProtocolError):
        return _BodyProtocolError(err.error)
    return type(err)(*err.args)


class _BodyProtocolError(ClientDisconnected):
    """The body broke HTTP framing: ``receive`` raises it, the connection answers ``error``."""

    def __init__(self, error: ProtocolError) -> None:
        super().__init__(error.message)
        self.error = error
