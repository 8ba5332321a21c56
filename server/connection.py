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
module; this one keeps everything per connection: parsing, ordering, flow control, timers,
handler scheduling and the pool.

Handlers run without a Task per request: each connection has one *worker* task. A new request's
handler takes its first step right inside ``data_received`` with the worker registered as the
current task (so ``asyncio.current_task()`` is a real, cancellable task); a handler that
completes without suspending costs no loop round trip and no Task. One that suspends is handed
to the worker, which resumes it through :class:`_Continue` (exactly what ``await`` would have
done, cancellation included) and then runs queued pipelined requests itself. Every handler runs
in a ``contextvars.Context`` of its own, copied from the connection's when the request starts
and kept for all its steps: what a task per request would give (a request-id variable set
before an ``await`` is still set after it and never seen by the next request). The worker is
created with the connection's first request and let go after ``_WORKER_IDLE`` seconds without
one (at the next deadline tick after the first request: ``_IDLE_AFTER``), so an idle
keep-alive connection holds no task (memory: ``python -m loadtest.idlemem``).

Timeouts use one lazy deadline per connection: activity only stores a timestamp; the deadline is
the earliest instant a timeout may expire, and when it comes ``_on_timer`` re-checks the state
and arms the next one. Header deadline (whole head) -> 408 and close; keep-alive idle -> close
silently; body idle -> 408; a client not reading for ``send_timeout`` -> abort. Deadlines are
places in the pool's :class:`~server.deadlines.DeadlineWheel` (one loop timer for all
connections, at most ``TICK`` = 50 ms late), not a ``TimerHandle`` each: that is ~260 bytes less
per idle connection.

Connection objects are reused through :class:`server.pool.ConnectionPool`: ``connection_lost``
resets the object and returns it to the pool; a generation number makes a stale exchange held
by a finished handler harmless.
"""

from __future__ import annotations

import asyncio
import logging
from contextvars import Context, copy_context
from typing import TYPE_CHECKING, Any

from .compat import guard_writelines
from .config import Config
from .deadlines import DeadlineWheel
from .exchange import AppHandler, BodyTooLarge, ClientDisconnected, RequestHead
from .http11 import END, ProtocolError, RequestParser, error_response, server_line
from .http_exchange import (
    _BODY_HIGH,
    _NOT_STARTED,
    HttpExchange,
    _BodyProtocolError,
    _Continue,
    _Disconnected,
)

if TYPE_CHECKING:
    from .pool import ConnectionPool

__all__ = ["HttpConnection", "HttpExchange"]

logger = logging.getLogger("server")

_LINGER = 2.0  # seconds a lingering close waits for the client's FIN
_WORKER_IDLE = 1.0  # seconds idle after which a connection lets its worker task go
try:  # asyncio.current_task(loop) without its Python wrapper (3.11 has no C version)
    from _asyncio import current_task as _current_task  # type: ignore[attr-defined]
except ImportError:
    _current_task = asyncio.tasks._current_tasks.get  # type: ignore[attr-defined]
_enter_task = asyncio.tasks._enter_task
_leave_task = asyncio.tasks._leave_task


# Seconds idle after which a connection lets its worker task and llhttp parser go, indexed by
# "has it served more than one request": at the next deadline tick after its first request (most
# connections that served one request stay idle: that is where idle memory piles up when many
# arrive at once), _WORKER_IDLE once it has served more (a busy keep-alive connection keeps them;
# re-making them costs at most once per connection). A table, not a function: read per request.
_IDLE_AFTER = (0.0, _WORKER_IDLE)


def _cancelled(loop: asyncio.AbstractEventLoop, coro: Any, first: Any) -> Any:
    """Deliver a cancel to a handler coroutine about to be continued from ``first``: what
    ``Task.cancel`` does (cancel the future it waits on; a bare yield gets a cancelled one).
    Not started yet: it is closed and the cancel raised, as for a task cancelled before it ran."""
    if first is _NOT_STARTED:
        coro.close()
        raise asyncio.CancelledError
    if not (asyncio.isfuture(first) and first.cancel()):
        first = loop.create_future()
        first.cancel()
        first._asyncio_future_blocking = True  # as Future.__await__ yields it
    return first


class _ErrorSlot:
    """A queue entry standing for a protocol error to answer in turn, then close."""

    __slots__ = ("error",)

    def __init__(self, error: ProtocolError) -> None:
        self.error = error

    def __repr__(self) -> str:
        return f"<_ErrorSlot {self.error!r}>"


class HttpConnection(asyncio.Protocol):
    """One client connection (see the module docstring)."""

    __slots__ = (
        "_base_ctx _body_wait_since _busy _cancel_pending _closing _dispatching _dl_bucket "
        "_dl_next _dl_prev "
        "_drain_waiters _eof _gen _head_started _job _job_id _last_activity _lingering _loop "
        "_parser _parsing _pending _queue _requests _server_line _shutdown _stopped "
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
    ) -> None:
        self.handler = handler
        self.config = config
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
        self._job_id = 0  # increments per job (request_timeout matches it)
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
            pool = self.pool
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
            parsing._body_error = ClientDisconnected("client closed before the body was complete")
            parsing._wake()
        if not self._queue:
            return False  # nothing to answer: let the transport close
        return True  # half-close: still answer what was asked

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        err = _Disconnected("client disconnected")
        woken = False  # the handler waits on our I/O: it gets ClientDisconnected, not a cancel
        for ex in self._queue:
            if isinstance(ex, HttpExchange) and not ex._done_body and ex._body_error is None:
                ex._body_error = err
                if ex._waiter is not None and not ex._waiter.done():
                    woken = True
                ex._wake()
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
            if not woken:
                worker.cancel()  # the handler gets CancelledError; the worker releases us
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

    # --- feeding ---
    def _must_stop(self) -> bool:
        if len(self._queue) >= self.config.max_pipelined:
            return True
        parsing = self._parsing
        if parsing is not None:
            if self._queue and parsing is not self._queue[0] and self._parser.in_body:
                return True  # a pipelined body waits until its handler runs
            if parsing._buffered >= _BODY_HIGH:
                return True
        return False

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
        if parser.in_head and not self._head_started:
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

    # --- running handlers ---
    def _dispatch(self) -> None:
        if self._dispatching:
            return  # re-entered through _retire -> _resume -> _feed: the outer loop goes on
        self._dispatching = True
        queue = self._queue
        loop = self._loop
        # Inside some task (e.g. a handler's receive() resumed reading), handlers go to the
        # connection's worker task; else they start right here. Entering and leaving the worker
        # below restores this, so it is asked once, not per request.
        in_task = _current_task(loop) is not None
        try:
            while queue and not self._busy and self._transport is not None:
                ex = queue[0]
                if type(ex) is _ErrorSlot:
                    self._send_error(ex.error)
                    return
                worker = self._worker
                if worker is None:
                    # Created lazily, dropped after a while idle (_on_timer, armed by _retire): an
                    # idle keep-alive connection holds no task. Not started yet: _work finds the
                    # job, if any.
                    worker = self._new_worker()
                if in_task:
                    self._start_job((ex, None, None, None))
                    return
                # Run handlers' first steps right here, as the worker task (so
                # asyncio.current_task() is a real task that can be cancelled): entered once for
                # a pipelined batch of handlers that complete without suspending.
                _enter_task(loop, worker)
                try:
                    while True:
                        coro = self.handler(ex)
                        ctx = self._base_ctx.copy()  # type: ignore[union-attr]  # see _Continue
                        exc: BaseException | None = None
                        try:
                            first = ctx.run(coro.send, None)
                        except StopIteration:
                            pass
                        except (KeyboardInterrupt, SystemExit):
                            raise
                        except BaseException as e:
                            exc = e
                        else:
                            self._start_job((ex, coro, first, ctx))  # suspended: to the worker
                            return
                        stale = worker.cancelling() > 0  # it cancelled its own task, then ended
                        if stale:
                            self._drop_worker()  # the cancel goes with it, not to the next one
                        if (
                            exc is None
                            and ex._ended
                            and ex._pending_head is None
                            and ex._gen == self._gen
                            and self._transport is not None
                            and not self._timed_out
                        ):
                            del queue[0]  # the common case of _handler_done: a complete response
                            if (
                                queue
                                and not stale
                                and ex._keep_alive
                                and not self._closing
                                and not self._stopped
                                and self._parsing is not ex
                                and type(queue[0]) is HttpExchange
                            ):
                                ex = queue[0]  # _retire would do nothing yet: the next one
                                continue
                            self._retire(ex)
                        else:
                            self._handler_done(ex, exc, False)
                        break
                finally:
                    _leave_task(loop, worker)
        finally:
            self._dispatching = False

    def _start_job(self, job: tuple[HttpExchange, Any, Any, Any]) -> None:
        self._busy = True
        self._job = job
        self._job_id += 1
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)
        if self.config.request_timeout is not None:
            self._loop.call_later(self.config.request_timeout, self._request_timeout, self._job_id)

    async def _work(self) -> None:
        """The connection's worker task: continues suspended handlers, runs queued ones."""
        loop = self._loop
        worker = _current_task(loop)  # this task (self._worker may already be another's)
        try:
            while True:
                if self._worker is not worker:
                    return
                if self._job is None:
                    if self._transport is None:
                        return
                    self._wake = wake = loop.create_future()
                    try:
                        await wake
                    except asyncio.CancelledError:
                        # Cancelled after a job was handed over but before this task took it
                        # (a handler cancelling its own task, a timeout, a lost client): the
                        # cancel is the job's, as it would be with a task per request.
                        if self._worker is not worker or self._job is None:
                            raise
                        self._cancel_pending = True  # (cancelling() stays 1, as for a task)
                    if self._worker is not worker:
                        return  # the connection was released (and maybe reused) meanwhile
                    self._wake = None
                job, self._job = self._job, None
                if job is None:
                    continue
                ex, coro, first, ctx = job
                exc: BaseException | None = None
                cancelled = False
                try:
                    if coro is None:  # not started yet: a fresh context, as for the others
                        ctx = self._base_ctx.copy()  # type: ignore[union-attr]
                        coro = self.handler(ex)
                        first = _NOT_STARTED
                    if self._cancel_pending:
                        self._cancel_pending = False
                        first = _cancelled(loop, coro, first)
                    await _Continue(coro, first, ctx)
                except asyncio.CancelledError:
                    cancelled = True
                except Exception as e:
                    exc = e
                # No cancel request outlives its job. One the handler did not let escape may
                # still be armed on this task (before 3.13 uncancel() leaves it): a fresh worker
                # serves what comes next.
                stale = False
                if worker.cancelling():  # type: ignore[union-attr]
                    while worker.uncancel() > 0:  # type: ignore[union-attr]
                        pass
                    stale = not cancelled
                self._busy = False
                self._handler_done(ex, exc, cancelled)
                # Drop references now: an exception's traceback holds the handler's frames
                # (and e.g. its async generators) until this task next wakes up otherwise.
                exc = job = ex = coro = first = ctx = None  # type: ignore[assignment]
                queue = self._queue
                if queue and self._transport is not None and not self._busy:
                    nxt = queue[0]
                    if isinstance(nxt, _ErrorSlot):
                        self._send_error(nxt.error)
                    else:
                        self._start_job((nxt, None, None, None))  # (its request_timeout too)
                if stale and self._worker is worker and self._transport is not None:
                    self._worker = None
                    if self._job is not None:
                        self._new_worker()
                    return
        finally:
            if self._worker is worker:
                self._worker = None
                if self._transport is None:
                    self._release()

    def _worker_done(self, task: asyncio.Task[None]) -> None:
        """A worker task ended. If it is still ours, it was cancelled before its first step
        (a handler cancelled its own task in the step it took inline) and ``_work`` never ran:
        a new worker takes the job and the cancel, or the connection is let go."""
        if self._worker is not task:
            return  # it ended through _work's finally
        self._worker = None
        if self._job is None:
            if self._transport is None and self._busy:  # connection_lost left it to the worker
                self._release()
            return
        self._cancel_pending = True  # (also when the client is gone: the new worker releases)
        self._new_worker()

    def _new_worker(self) -> asyncio.Task[None]:
        self._worker = worker = self._loop.create_task(self._work())
        worker.add_done_callback(self._worker_done)
        return worker

    def _drop_worker(self) -> None:
        """Let an idle worker task end (it holds ~1 KiB); the next request makes a new one."""
        if self._busy or self._job is not None:
            return
        wake = self._wake
        self._worker = self._wake = None
        if wake is not None and not wake.done():
            wake.set_result(None)  # _work sees it was detached and returns

    def _request_timeout(self, job_id: int) -> None:
        if job_id == self._job_id and self._busy and self._worker is not None:
            self._timed_out = True
            self._worker.cancel()

    def _handler_done(self, ex: HttpExchange, exc: BaseException | None, cancelled: bool) -> None:
        """Apply the after-the-handler rules, then retire ``ex`` (decide, then act)."""
        if self._queue and self._queue[0] is ex:
            del self._queue[0]
        timed_out, self._timed_out = self._timed_out, False
        lost = ex.disconnected
        if cancelled:
            if lost:
                return
            if not timed_out:
                self._abort("handler cancelled")
                return
            status, message = 503, "request timed out"
        else:
            status, message = 500, "internal server error"
        if lost:
            if exc is not None and not isinstance(exc, ClientDisconnected):
                logger.error("handler failed after the client left", exc_info=exc)
            return
        if exc is not None:
            if isinstance(exc, BodyTooLarge):
                status, message = 413, "request body too large"
            elif isinstance(exc, _BodyProtocolError):
                status, message = exc.error.status, exc.error.message
            elif isinstance(exc, ClientDisconnected):
                self._abort("client disconnected")
                return
            else:
                logger.error(
                    "handler failed: %s %r", ex.head.method, ex.head.raw_path, exc_info=exc
                )
        elif not ex._started and not timed_out:
            logger.error(
                "handler returned without responding: %s %r", ex.head.method, ex.head.raw_path
            )
        if not ex._started:
            if status != 500:
                self._closing = True
            ex._keep_alive = status == 500 and ex._response_keep_alive()
            ex._started = ex._ended = True
            bufs = error_response(status, message, self._server_line, keep_alive=ex._keep_alive)
            self._transport.writelines(bufs)  # type: ignore[union-attr]
        elif not ex._ended or ex._pending_head is not None or exc is not None:
            self._abort("response started but not ended")
            return
        self._retire(ex)

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
        if not self._queue:
            self._last_activity = t = self._loop.time()
            # idle from here: wake when the worker task and the parser may go, or at the
            # keep-alive deadline; _on_timer re-checks whatever state it finds. (With more
            # queued, the last of them does this when it is retired.)
            idle_for = _IDLE_AFTER[self._requests > 1]
            self._arm(t + min(idle_for, self.config.keepalive_timeout))
            if self._eof:
                self._close()
                return
        if self._stopped:
            self._resume()

    def _send_error(self, err: ProtocolError) -> None:
        self._queue.clear()
        self._closing = True
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
        if self._shutdown or not t.can_write_eof():
            t.close()
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

    def _on_timer(self) -> None:
        if self._transport is None:
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
        if not self._queue:
            if self._parser.in_head and self._head_started:
                dl = self._head_started + cfg.header_timeout
                if now >= dl:
                    self._send_error(ProtocolError(408, "request header timeout"))
                    return
                deadlines.append(dl)
            elif not self._parser.in_body and self._parsing is None:
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
        """Force-close (end of the graceful period)."""
        self._abort("forced shutdown")
