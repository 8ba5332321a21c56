"""The HTTP/1.1 connection: an ``asyncio.Protocol`` driving the sans-IO core for one socket.

Theory of operation
-------------------
``data_received`` feeds bytes to :class:`~server.http11.RequestParser` one piece at a time
(a piece never spans two messages, except a batch of whole pipelined requests answered from
the parser's head cache, at most as many as the queue has room for) and turns its events
into :class:`HttpExchange` objects kept in ``_queue`` in arrival order. ``_queue[0]`` is the
only exchange whose handler runs; the next one starts when that handler returns, so pipelined
responses leave strictly in order. Feeding stops (the rest is kept in ``_pending`` and reading
is paused) when

* ``max_pipelined`` requests are queued,
* the body being parsed belongs to a request whose handler is not running yet, or
* the running handler has not consumed ``_BODY_HIGH`` bytes of its body (backpressure),

and resumes when the reason goes away. Responses are written with one ``write``/``writelines``
of ``[head, body]``; streamed writes await ``resume_writing`` while the transport is above its
high-water mark (a slow reader pauses the handler). The per-request side (body chunks, response
framing, sendfile/splice bodies) is :class:`~server.http_exchange.HttpExchange`, in its own
module; this one keeps everything per connection: parsing, ordering, flow control, timers
and the pool.

Handlers are run by :class:`~server.worker.HandlerRunner` (a mixin of this class, in its own
module): the first step of a handler right inside ``data_received``, the rest by one *worker*
task per connection, each request in a ``contextvars.Context`` of its own. The worker is
created with the connection's first request and let go after ``_WORKER_IDLE`` seconds without
one (at the next deadline tick after the first request: ``_IDLE_AFTER``), so an idle
keep-alive connection holds no task (memory: ``python -m loadtest.idlemem``).

A handler with an ``answer_from_memory(head)`` method (``--static`` mounts; see
:class:`~server.exchange.MemoryAnswering`) is asked first for a bodyless request with nothing
unanswered before it; its answer is framed and written right in ``_on_events``
(``_answer_from_memory``), and the request never becomes an exchange.

Timeouts use one lazy deadline per connection: activity only stores a timestamp; the deadline is
the earliest instant a timeout may expire, and when it comes ``_on_timer`` re-checks the state
and arms the next one. Header deadline (whole head) -> 408 and close; keep-alive idle -> close
silently; body idle -> 408; a client not reading for ``send_timeout`` -> abort; a handler on
the worker past ``request_timeout`` -> cancelled, 503 (the deadline belongs to the connection's
state, so a connection object reused from the pool inherits none of it). Deadlines are
places in the pool's :class:`~server.deadlines.DeadlineWheel` (one loop timer for all
connections, at most ``TICK`` = 50 ms late), not a ``TimerHandle`` each: that is ~260 bytes less
per idle connection.

Connection objects are reused through :class:`server.pool.ConnectionPool`: ``connection_lost``
resets the object and returns it to the pool; a generation number makes a stale exchange held
by a finished handler harmless.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from contextvars import Context, copy_context
from typing import TYPE_CHECKING, Any

from .compat import guard_writelines
from .config import Config
from .deadlines import DeadlineWheel
from .exchange import AppHandler, BodyTooLarge, ClientDisconnected, MemoryAnswer, RequestHead
from .http11 import (
    END,
    ProtocolError,
    RequestParser,
    error_response,
    response_head,
    server_line,
)
from .http_exchange import _BODY_HIGH, _JOIN_MAX, HttpExchange, _BodyProtocolError, _Disconnected
from .routing import PathMemo
from .worker import HandlerRunner, _ErrorSlot, only_makes_a_coroutine

if TYPE_CHECKING:
    from .pool import ConnectionPool

__all__ = ["HttpConnection", "HttpExchange"]

logger = logging.getLogger("server")

_LINGER = 2.0  # seconds a lingering close waits for the client's FIN
_WORKER_IDLE = 1.0  # seconds idle after which a connection lets its worker task go
# Seconds idle after which a connection lets its worker task and llhttp parser go, indexed by
# "has it served more than one request": at the next deadline tick after its first request (most
# connections that served one request stay idle: that is where idle memory piles up when many
# arrive at once), _WORKER_IDLE once it has served more (a busy keep-alive connection keeps them;
# re-making them costs at most once per connection). A table, not a function: read per request.
_IDLE_AFTER = (0.0, _WORKER_IDLE)


@functools.cache
def _idle_arms(keepalive_timeout: float) -> tuple[float, ...]:
    """``_IDLE_AFTER`` capped at the keep-alive deadline: one tuple shared by the connections
    (an idle connection's size counts)."""
    return tuple(min(idle, keepalive_timeout) for idle in _IDLE_AFTER)


def memory_path_memo(prefixes: tuple[str, ...]) -> PathMemo:
    """Whether a handler's ``answer_from_memory`` may be asked for a path: below one of its
    ``memory_paths`` (remembered per path; one for all the connections of a pool)."""
    return PathMemo(lambda path: path.startswith(prefixes))


class HttpConnection(HandlerRunner, asyncio.Protocol):
    """One client connection (see the module docstring)."""

    __slots__ = (
        "_base_ctx _body_wait_since _busy _cancel_pending _close_waiters _closing _dispatching "
        "_dl_bucket "
        "_dl_next _dl_prev "
        "_drain_waiters _eof _gen _handler_is_async _head_started _job _job_since "
        "_from_memory _idle_arm _last_activity _lingering _loop _memory_find _memory_known "
        "_parser _parsing _pending "
        "_queue _requests _server_line "
        "_shutdown _stopped "
        "_timed_out _transport _wake _wheel _worker _write_paused _write_paused_at config "
        "handler pool scheme"
    ).split()

    def __init__(
        self,
        handler: AppHandler,
        config: Config,
        pool: ConnectionPool | None = None,
        *,
        scheme: str = "http",
        from_memory: Callable[[RequestHead], MemoryAnswer | None] | None = None,
        memory_paths: PathMemo | None = None,
    ) -> None:
        self.handler = handler
        self._handler_is_async = only_makes_a_coroutine(handler)
        # the handler's answer_from_memory (see server.exchange), or None, and whether it may
        # be asked for a path: a PathMemo of path.startswith(its memory_paths), shared by the
        # pool's connections (default: every path)
        self._from_memory = from_memory
        if memory_paths is None:
            memory_paths = memory_path_memo(("",))
        self._memory_known = memory_paths.memo  # path -> bool, for paths seen before
        self._memory_find = memory_paths.find
        self.config = config
        # when a connection that just went idle wakes next, after its first request and after
        # more (_IDLE_AFTER, capped at the keep-alive deadline): read per request, made once
        self._idle_arm = _idle_arms(config.keepalive_timeout)
        self.pool = pool
        self.scheme = scheme
        self._server_line = server_line(config.server_header)
        self._parser = RequestParser(config, scheme=scheme)
        self._gen = 0  # incremented on every reuse
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self._wheel: DeadlineWheel | None = None  # the pool's (per loop), set by connection_made
        # the pending deadline: a place in one of _wheel's buckets (all None when there is none)
        self._dl_bucket: Any = None
        self._dl_prev: Any = None
        self._dl_next: Any = None
        self._worker: asyncio.Task[None] | None = None  # created lazily, see _work
        self._init_state()

    def _init_state(self) -> None:
        self._transport: asyncio.Transport | None = None  # None once the connection is lost
        self._queue: list[HttpExchange | _ErrorSlot] = []  # [0] is the running one (<= 16)
        self._parsing: HttpExchange | None = None  # exchange whose body is being parsed
        self._busy = False  # the worker task is running a handler (for _queue[0])
        self._job: tuple[HttpExchange, Any, Any, Any] | None = None  # next job for the worker
        self._job_since = 0.0  # when the worker's job started (0.0: no request_timeout to watch)
        # a cancel of the worker task that was meant for the job not yet taken (see _work)
        self._cancel_pending = False
        # the context requests copy theirs from: the connection's, as it was when it was made
        self._base_ctx: Context | None = None
        self._wake: asyncio.Future[None] | None = None  # the idle worker waits on it
        self._pending = b""  # received bytes not fed yet (reading is paused)
        self._stopped = False  # feeding stopped; reading paused
        self._closing = False  # no more requests will be parsed
        self._eof = False  # client half-closed
        self._write_paused = False
        self._write_paused_at = 0.0
        self._drain_waiters: list[asyncio.Future[None]] | None = None  # made by _drain
        # handlers in wait_client_closed() (made there): woken by a FIN or the connection's loss
        self._close_waiters: list[asyncio.Future[None]] | None = None
        self._requests = 0
        self._last_activity = 0.0
        self._head_started = 0.0
        self._body_wait_since = 0.0
        self._timed_out = False  # the current handler was cancelled by request_timeout
        self._dispatching = False  # inside _dispatch (guards against recursion)
        self._lingering = False  # FIN sent, discarding input until the client's FIN
        self._shutdown = False  # server shutting down: close without lingering

    def __repr__(self) -> str:
        peer = self._parser.client
        return (
            f"<HttpConnection peer={peer} gen={self._gen} open={self._transport is not None} "
            f"queued={len(self._queue)} requests={self._requests} stopped={self._stopped} "
            f"write_paused={self._write_paused} closing={self._closing}>"
        )

    # --- asyncio.Protocol ---
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        pool = self.pool
        if pool is not None and self not in pool.active and not pool.made(self, transport):
            return  # over TLS, counted only now: no place left (held or answered 503 instead)
        guard_writelines(transport)  # stock asyncio 3.12+: a writelines that never pauses
        self._transport = transport  # type: ignore[assignment]
        self._loop = loop = asyncio.get_running_loop()
        # Not the context data_received runs in later: stock asyncio's resume_reading makes a
        # reader handle in whatever context calls it (a handler's, through receive()).
        self._base_ctx = copy_context()
        peer = transport.get_extra_info("peername")
        sock = transport.get_extra_info("sockname")
        self._parser.reset(
            client=tuple(peer[:2]) if isinstance(peer, tuple) else None,
            server=tuple(sock[:2]) if isinstance(sock, tuple) else None,
        )
        wheel = self._wheel
        if wheel is None or wheel.loop is not loop:
            self._wheel = pool.wheel(loop) if pool is not None else DeadlineWheel(loop)
        self._last_activity = now = loop.time()
        cfg = self.config
        self._arm(now + min(cfg.keepalive_timeout, cfg.header_timeout))

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return
        if self._stopped or self._pending:
            self._pending += data
            return
        self._feed(data)

    def eof_received(self) -> bool:
        self._eof = True
        if self._lingering:
            return False
        parsing = self._parsing
        if parsing is not None and not parsing._done_body:
            # the request can never be complete: a 400 (as nginx), which a half-closed client
            # may still read; a handler sees it as a disconnect (a ClientDisconnected)
            parsing._body_error = _BodyProtocolError(
                ProtocolError(400, "client closed before the body was complete")
            )
            parsing._wake()
        self._wake_close_waiters()  # a handler in wait_client_closed() learns of it now
        if not self._queue:
            return False  # nothing to answer: let the transport close
        return True  # half-close: still answer what was asked

    def _wake_close_waiters(self) -> bool:
        """Wake the handlers in ``wait_client_closed()``; returns whether there were any."""
        waiters, self._close_waiters = self._close_waiters, None
        woken = False
        for w in waiters or ():
            if not w.done():
                w.set_result(None)
                woken = True
        return woken

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        err = _Disconnected("client disconnected")
        woken = False  # the handler waits on our I/O: it gets ClientDisconnected, not a cancel
        for ex in self._queue:
            if not isinstance(ex, HttpExchange):
                continue
            if not ex._done_body and ex._body_error is None:
                ex._body_error = err
            if ex._waiter is not None and not ex._waiter.done():  # (receive)
                woken = True
                ex._wake()
        if self._wake_close_waiters():
            woken = True
        waiters, self._drain_waiters = self._drain_waiters, None
        if waiters:
            for w in waiters:
                if not w.done():
                    w.set_result(None)  # _drain raises a fresh ClientDisconnected: no cycle
                    woken = True
        if self._dl_bucket is not None:
            self._wheel.cancel(self)  # type: ignore[union-attr]
        worker = self._worker
        if worker is not None and worker.done() and self._job is not None:
            pass  # cancelled before its first step: _worker_done cancels the job, releases us
        elif worker is None or worker.done():
            self._worker = None  # (one cancelled before its first step never cleared itself)
            self._release()
        elif self._busy:
            ex = self._queue[0] if self._queue else None
            if type(ex) is HttpExchange and ex._ended and ex._pending_head is None:
                pass  # a handler working after its complete answer is left to finish: _detach
            elif not woken and (self._shutdown or self.pool is None or self.pool.cancel_on_reset):
                worker.cancel()  # the handler gets CancelledError; the worker releases us
            elif self._job_since and self._wheel is not None:
                # left to learn of it from our I/O (woken) or, an ASGI app, from receive() and
                # send() as under uvicorn: request_timeout still bounds it (_on_timer)
                self._wheel.schedule(self, self._job_deadline())
        else:
            wake = self._wake
            self._worker = None
            if wake is not None and not wake.done():
                wake.set_result(None)  # the idle worker sees it was detached and ends
            self._release()

    def pause_writing(self) -> None:
        self._write_paused = True
        self._write_paused_at = t = self._loop.time()
        self._arm(t + self.config.send_timeout)

    def resume_writing(self) -> None:
        self._write_paused = False
        waiters, self._drain_waiters = self._drain_waiters, None
        if waiters:
            for w in waiters:
                if not w.done():
                    w.set_result(None)
        if self._stopped:
            # held-back requests: resumed from the loop, not inside a write (TLS transports
            # call this from write()): no request is answered in the middle of another answer
            self._loop.call_soon(self._resume_held, self._gen)

    def _resume_held(self, gen: int) -> None:
        if gen == self._gen and not self._write_paused:
            self._resume()

    # --- feeding ---
    def _must_stop(self) -> bool:
        if len(self._queue) >= self.config.max_pipelined:
            return True
        parsing = self._parsing
        if parsing is None:
            # a new request: none is read while the client is not reading the answers (as
            # nginx), so a pipelining client that never reads gets ~max_pipelined buffered
            return self._write_paused
        if self._queue and parsing is not self._queue[0] and self._parser.in_body:
            return True  # a pipelined body waits until its handler runs
        return parsing._buffered >= _BODY_HIGH

    def _feed(self, data: bytes) -> None:
        parser = self._parser
        events = parser.events
        n = len(data)
        pos = 0
        while pos < n:
            if self._closing and self._parsing is None:
                pos = n  # nothing more will be answered: discard
                break
            if (
                self._parsing is not None or len(self._queue) >= self.config.max_pipelined
            ) and self._must_stop():
                self._pending = data[pos:] if pos else data
                if not self._stopped:
                    self._stopped = True
                    if self._transport is not None:
                        self._transport.pause_reading()
                break
            pos = parser.feed(data, pos, self.config.max_pipelined - len(self._queue))
            if events:
                self._on_events(events)
        else:
            self._pending = b""
        if parser.begun and not self._head_started and parser.in_head:  # (cheapest first)
            self._head_started = t = self._loop.time()
            self._arm(t + self.config.header_timeout)
        if not self._busy and self._queue:
            self._dispatch()

    def _resume(self) -> None:
        """Feed what was held back and resume reading if nothing stops us any more."""
        if not self._stopped or self._must_stop() or self._transport is None:
            return
        self._stopped = False
        pending, self._pending = self._pending, b""
        if pending:
            self._feed(pending)
        if not self._stopped and self._transport is not None and not self._closing:
            self._transport.resume_reading()

    def _on_events(self, events: list[Any]) -> None:
        queue = self._queue
        for ev in events:
            if ev is END:  # first: the cheapest test, and one per request
                ex = self._parsing
                self._parsing = None
                if ex is not None:
                    ex._done_body = True
                    if ex._waiter is not None:
                        ex._wake()
                    if not ex.head.keep_alive:
                        self._closing = True
            elif type(ev) is RequestHead:
                self._requests += 1
                self._head_started = 0.0
                if self._requests >= self.config.max_requests_per_connection:
                    ev.keep_alive = False
                if (
                    self._from_memory is not None
                    and (
                        (known := self._memory_known.get(ev.path))  # (first: it rules most out)
                        or (known is None and self._memory_find(ev.path))
                    )
                    and not queue
                    and events[-1] is END  # no body: the parser emits END with such a head
                    and not self._busy
                    and not self._closing
                    and not self._write_paused
                    and self._answer_from_memory(ev)
                ):
                    if self._closing:
                        break  # answered with a close: what follows is not read
                    continue
                ex = HttpExchange(self, ev)
                self._parsing = ex
                queue.append(ex)
            elif type(ev) is bytes:
                ex = self._parsing
                if ex is None:
                    continue
                if ex._drained >= 0:
                    ex._drained += len(ev)
                    if ex._drained > self.config.max_drain_body:
                        self._closing = True
                        self._close_when_idle()
                    continue
                if ex._chunks is None:
                    ex._chunks = [ev]
                else:
                    ex._chunks.append(ev)
                ex._buffered += len(ev)
                ex._wake()
            else:  # ProtocolError
                self._closing = True
                ex = self._parsing
                if ex is not None:
                    self._parsing = None
                    if ev.status == 413:
                        ex._body_error = BodyTooLarge(ev.message)
                    else:
                        ex._body_error = _BodyProtocolError(ev)
                    ex._wake()
                    if ex._drained >= 0:
                        self._close_when_idle()
                else:
                    queue.append(_ErrorSlot(ev))
        events.clear()

    def _answer_from_memory(self, head: RequestHead) -> bool:
        """Answer ``head`` with the handler's answer from memory, if it has one (a request without
        a body, nothing before it unanswered; see :mod:`server.exchange`): framed and written
        here, no exchange made and no handler called. False: the request goes the usual way."""
        try:
            answer = self._from_memory(head)  # type: ignore[misc]
            if answer is None:
                return False
            status, headers, body = answer
            out, chunked, keep = response_head(
                status,
                headers,
                len(body),
                head.keep_alive,
                head.http_version == "1.0",
                self._server_line,
                head.method == "HEAD",
            )
        except Exception:  # (its own bug, or a header response_head refuses: the usual way)
            logger.exception("answer_from_memory() failed: %s %r", head.method, head.raw_path)
            return False
        if chunked:
            return False  # (a Transfer-Encoding of its own: the handler frames it)
        transport = self._transport
        assert transport is not None
        if head.method == "HEAD" or not body or status in (204, 304):
            transport.write(out)
        elif len(body) <= _JOIN_MAX and type(body) is bytes:
            transport.write(out + body)
        else:
            transport.writelines([out, body])
        if keep:
            self._went_idle()
        else:
            self._closing = True
            self._close()
        return True

    def _went_idle(self) -> None:
        """Nothing left to answer: arm the idle deadlines; close if the client half-closed."""
        self._last_activity = t = self._loop.time()
        # wake when the worker task and the parser may go, or at the keep-alive deadline
        self._arm(t + self._idle_arm[self._requests > 1])
        if self._eof:
            self._close()

    def _retire(self, ex: HttpExchange) -> None:
        """The response of ``ex`` is complete: keep the connection or close it."""
        if not ex._keep_alive or (self._closing and not self._queue):
            self._closing = True
            self._queue.clear()
            self._close()
            return
        if self._parsing is ex and not ex._done_body:
            # Unread body: drain it (counted in _on_events) before the next request.
            ex._drained = 0
            ex._chunks = None
            ex._buffered = 0
        if not self._queue:  # (with more queued, the last of them does this when retired)
            # _went_idle, inlined: the call alone is ~1.4 % of a keep-alive request
            self._last_activity = t = self._loop.time()
            self._arm(t + self._idle_arm[self._requests > 1])
            if self._eof:
                self._close()
                return
        if self._stopped:
            self._resume()

    def _send_error(self, err: ProtocolError) -> None:
        self._queue.clear()
        self._closing = True
        # (as uvicorn warns of each invalid request: the app never sees these)
        peer = self._parser.client
        where = f"{peer[0]}:{peer[1]}" if peer else "?"
        logger.info("refused a request from %s: %d %s", where, err.status, err.message)
        pool = self.pool
        if pool is not None and pool.on_refused is not None:
            pool.on_refused(err.status)
        if self._transport is not None:
            self._transport.writelines(error_response(err.status, err.message, self._server_line))
            self._close()

    def _close(self) -> None:
        """Lingering close: send FIN, discard what the client still sends, close on its FIN
        (or after ``_LINGER`` s). Closing with unread data would send a reset that can destroy
        the last response before the client reads it."""
        t = self._transport
        if t is None or t.is_closing() or self._lingering:
            return
        self._closing = True
        if self._shutdown or self._eof or not t.can_write_eof():
            t.close()  # (after the client's FIN there is nothing left to linger for)
            return
        self._lingering = True
        t.write_eof()
        self._pending = b""
        if self._stopped:
            self._stopped = False
            t.resume_reading()
        self._arm(self._loop.time() + _LINGER)

    def _close_when_idle(self) -> None:
        if not self._queue:
            self._close()

    def _abort(self, why: str) -> None:
        t = self._transport
        if t is not None:
            logger.debug("aborting connection %r: %s", self, why)
            t.abort()

    # --- output flow control ---
    async def _drain(self, gen: int) -> None:
        if gen != self._gen or self._transport is None:
            raise ClientDisconnected("client disconnected")
        w = self._loop.create_future()
        if self._drain_waiters is None:
            self._drain_waiters = []  # made here, not per connection: most never wait
        self._drain_waiters.append(w)
        await w
        if gen != self._gen or self._transport is None:
            raise _Disconnected("client disconnected")

    # --- timers ---
    def _arm(self, when: float) -> None:
        """Make ``_on_timer`` run at ``when`` unless it is due earlier already."""
        if self._transport is not None:
            bucket = self._dl_bucket
            if bucket is None or when < bucket.start:  # (else no earlier: nothing to do)
                self._wheel.schedule(self, when)  # type: ignore[union-attr]

    def _job_deadline(self) -> float:
        """When the running job passes ``request_timeout`` (while ``_job_since`` is set)."""
        return self._job_since + (self.config.request_timeout or 0.0)

    def _check_job(self, now: float) -> float | None:
        """Cancel the running job if it is past ``request_timeout``; else its deadline, None
        when no job is watched."""
        if not self._job_since:
            return None
        dl = self._job_deadline()
        if now < dl:
            return dl
        self._job_since = 0.0
        self._request_timeout()
        return None

    def _on_timer(self) -> None:
        if self._transport is None:  # a handler left running after a reset (connection_lost)
            dl = self._check_job(self._loop.time())
            if dl is not None:
                self._wheel.schedule(self, dl)  # type: ignore[union-attr]
            return
        if self._lingering:
            self._transport.close()
            return
        cfg = self.config
        now = self._loop.time()
        deadlines: list[float] = []
        if self._write_paused:
            dl = self._write_paused_at + cfg.send_timeout
            if now >= dl:
                self._abort("send timeout")
                return
            deadlines.append(dl)
        if self._body_wait_since:
            dl = self._body_wait_since + cfg.body_timeout
            if now >= dl:
                ex = self._queue[0] if self._queue else None
                if isinstance(ex, HttpExchange) and ex._waiter is not None:
                    ex._body_error = _BodyProtocolError(ProtocolError(408, "request body timeout"))
                    ex._wake()
                self._closing = True
            else:
                deadlines.append(dl)
        dl = self._check_job(now)
        if dl is not None:
            deadlines.append(dl)
        if not self._queue:
            if self._parser.in_head and self._head_started:
                dl = self._head_started + cfg.header_timeout
                if now >= dl:
                    self._send_error(ProtocolError(408, "request header timeout"))
                    return
                deadlines.append(dl)
            elif not self._parser.in_body and self._parsing is None and not self._pending:
                # (input held back while the client does not read is not idle: send_timeout)
                dl = self._last_activity + cfg.keepalive_timeout
                if now >= dl:
                    self._transport.close()  # idle keep-alive: close silently
                    return
                deadlines.append(dl)
                # idle for a while: let the worker task and the llhttp parser go (the next
                # request makes new ones), so an idle keep-alive connection stays small
                idle_for = _IDLE_AFTER[self._requests > 1]
                if now - self._last_activity >= idle_for:
                    if self._worker is not None:
                        self._drop_worker()
                    self._parser.shrink()
                else:
                    deadlines.append(self._last_activity + idle_for)
        # No periodic tick: every state change that brings a deadline arms it (_arm keeps the
        # earliest), so an idle keep-alive connection wakes only when something is due.
        if deadlines:
            self._arm(min(deadlines))

    # --- pool and shutdown ---
    def _release(self) -> None:
        if self._dl_bucket is not None:
            self._wheel.cancel(self)  # type: ignore[union-attr]
        self._gen += 1
        self._init_state()
        if self.pool is not None:
            self.pool.release(self)

    @property
    def idle(self) -> bool:
        """No request in progress (safe to close for shutdown)."""
        return not self._queue and not self._parser.in_head and self._parsing is None

    def shutdown(self) -> None:
        """Graceful shutdown: close now if idle, else after the response in flight."""
        self._closing = self._shutdown = True
        if self._lingering and self._transport is not None:
            self._transport.close()
        elif self.idle:
            self._close()

    def abort(self) -> None:
        """Force-close (end of the graceful period); a handler still running for a client that
        has gone (an ASGI app after a reset) is cancelled."""
        if self._transport is None:
            if self._busy and self._worker is not None:
                self._worker.cancel()
            return
        self._abort("forced shutdown")
