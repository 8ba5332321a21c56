"""Running handlers for one connection: the per-connection *worker* task and its jobs.

Theory of operation
-------------------
Handlers run without a Task per request: each connection has one worker task. A new request's
handler takes its first step right inside ``data_received`` (:meth:`HandlerRunner._dispatch`)
with the worker registered as the current task, so ``asyncio.current_task()`` is a real,
cancellable task; a handler that completes without suspending costs no loop round trip and no
Task. One that suspends is handed to the worker as a *job* (``_job``: exchange, coroutine, what
it yielded, its context), which resumes it through :class:`_Continue` (exactly what ``await``
would have done, cancellation included) and then starts queued pipelined requests itself.

Every handler runs in a ``contextvars.Context`` of its own, copied from the connection's when
the request starts and kept for all its steps: what a task per request would give (a
request-id variable set before an ``await`` is still set after it and never seen by the next
request).

The worker is created with the connection's first request and let go after a while idle (the
connection's timer calls ``_drop_worker``), so an idle keep-alive connection holds no task.

Cancellation, as a task per request would see it: a cancel of the worker (a handler cancelling
its own task, ``request_timeout``, a lost client) is delivered to the job it was meant for,
even when it lands before the worker took the job (``_cancel_pending``, :func:`_cancelled`) or
before the worker's first step (``_worker_done``), and never outlives that job: a worker on
which a cancel may still be armed is replaced before the next request.

:class:`HandlerRunner` is a mixin of :class:`~server.connection.HttpConnection`: it owns the
fields declared below (``_worker``, ``_busy``, ``_job``, ...; initialised by the connection's
``_init_state``) and calls back into the connection for what happens after a handler
(``_retire``, ``_send_error``, ``_abort``, ``_release``).
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import types
from typing import TYPE_CHECKING, Any

from .exchange import BodyTooLarge, ClientDisconnected
from .http11 import ProtocolError, error_response
from .http_exchange import HttpExchange, _BodyProtocolError

if TYPE_CHECKING:
    from contextvars import Context

    from .config import Config
    from .exchange import AppHandler
    from .pool import ConnectionPool

__all__ = ["HandlerRunner"]

logger = logging.getLogger("server")

try:  # asyncio.current_task(loop) without its Python wrapper (3.11 has no C version)
    from _asyncio import current_task as _current_task  # type: ignore[attr-defined]
except ImportError:
    _current_task = asyncio.tasks._current_tasks.get  # type: ignore[attr-defined]
_enter_task = asyncio.tasks._enter_task
_leave_task = asyncio.tasks._leave_task
_Coroutine = types.CoroutineType
_send = _Coroutine.send  # unbound: ctx.run(_send, coro, None) makes no bound method
_CO_COROUTINE = inspect.CO_COROUTINE


def only_makes_a_coroutine(handler: Any) -> bool:
    """Whether calling ``handler`` runs none of its code: an ``async def`` function or bound
    method (an ``App``'s ``__call__``, as the pool calls it) only makes the coroutine. A handler
    object may also say so itself with a boolean attribute ``only_makes_a_coroutine`` (a
    wrapper of ours that only picks the coroutine to hand back, e.g. the ``--static`` mounts;
    also read through its bound ``__call__``). Any other callable is called inside the
    request's context, since its own code may set context variables for what it returns."""
    owner = handler
    if isinstance(handler, types.MethodType) and handler.__func__.__name__ == "__call__":
        owner = handler.__self__
    marked = getattr(owner, "only_makes_a_coroutine", None)
    if type(marked) is bool:
        return marked
    func = getattr(handler, "__func__", handler)
    return isinstance(func, types.FunctionType) and bool(func.__code__.co_flags & _CO_COROUTINE)


def _body_failure(err: BaseException | None) -> tuple[int, str] | None:
    """The status and message for a request body that broke its framing or the size limit
    (``err``: what the handler raised, or the exchange's stored body error)."""
    if isinstance(err, BodyTooLarge):
        return 413, "request body too large"
    if isinstance(err, _BodyProtocolError):
        return err.error.status, err.error.message
    return None


_NOT_STARTED = object()  # _Continue.first for a coroutine that has not taken its first step


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


class _Continue:
    """Awaitable that runs a handler coroutine, every step in the request's own context.

    Awaited by the worker task, it passes the futures the coroutine yields up to the task and
    sends/throws what the task delivers back down: exactly what ``await coro`` would have
    done (cancellation included), except that each step runs inside ``ctx`` (one
    :class:`contextvars.Context` per request, as a task per request would have): context
    variables a handler sets survive its awaits and never leak into the next request. ``first``
    is what the coroutine yielded when its first step already ran (outside any task), or
    ``_NOT_STARTED``.
    """

    __slots__ = ("conn", "coro", "ctx", "detached", "ex", "first")

    def __init__(
        self,
        coro: Any,
        first: Any,
        ctx: contextvars.Context,
        conn: HandlerRunner | None = None,
        ex: HttpExchange | None = None,
    ) -> None:
        self.coro = coro
        self.first = first
        self.ctx = ctx
        # the connection and exchange: once the response is complete and the handler still
        # suspends, the connection goes on without it (HandlerRunner._detach)
        self.conn = conn
        self.ex = ex
        self.detached = False

    def __await__(self) -> Any:
        coro = self.coro
        run = self.ctx.run
        out = self.first
        ex = self.ex
        self.first = None
        if out is _NOT_STARTED:
            try:
                out = run(coro.send, None)
            except StopIteration as stop:
                return stop.value
        while True:
            if ex is not None and ex._ended and ex._pending_head is None:
                if self.conn._detach(ex):  # type: ignore[union-attr]
                    self.detached = True
                    ex = self.ex = None
            try:
                sent = yield out
            except GeneratorExit:
                run(coro.close)
                raise
            except BaseException as exc:
                try:
                    out = run(coro.throw, exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    out = run(coro.send, sent)
                except StopIteration as stop:
                    return stop.value


class _ErrorSlot:
    """A queue entry standing for a protocol error to answer in turn, then close."""

    __slots__ = ("error",)

    def __init__(self, error: ProtocolError) -> None:
        self.error = error

    def __repr__(self) -> str:
        return f"<_ErrorSlot {self.error!r}>"


class HandlerRunner:
    """Handler scheduling for :class:`~server.connection.HttpConnection` (see the module doc)."""

    __slots__ = ()

    if TYPE_CHECKING:  # the connection's fields and methods this mixin uses
        handler: AppHandler
        _handler_is_async: bool  # only_makes_a_coroutine(handler)
        config: Config
        _loop: asyncio.AbstractEventLoop
        _transport: asyncio.Transport | None
        _queue: list[HttpExchange | _ErrorSlot]  # [0] is the one whose handler runs
        _parsing: HttpExchange | None
        _closing: bool
        _stopped: bool
        _gen: int
        _base_ctx: Context | None
        _worker: asyncio.Task[None] | None  # this connection's worker (None: none yet)
        _busy: bool  # the worker is running a handler (for _queue[0])
        _job: tuple[HttpExchange, Any, Any, Any] | None  # next job for the worker
        _job_since: float  # when the worker's job started (0.0: no request_timeout to watch)
        _cancel_pending: bool  # a cancel meant for the job not yet taken
        _wake: asyncio.Future[None] | None  # the idle worker waits on it
        _dispatching: bool  # inside _dispatch (guards against recursion)
        _timed_out: bool  # the current handler was cancelled by request_timeout
        _server_line: bytes
        _write_paused: bool
        pool: ConnectionPool | None

        def _retire(self, ex: HttpExchange) -> None: ...
        def _send_error(self, err: ProtocolError) -> None: ...
        def _abort(self, why: str) -> None: ...
        def _release(self) -> None: ...
        def _arm(self, when: float) -> None: ...

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
                        ctx = self._base_ctx.copy()  # type: ignore[union-attr]  # see _Continue
                        exc: BaseException | None = None
                        try:
                            if self._handler_is_async:
                                coro = self.handler(ex)
                            else:  # see only_makes_a_coroutine
                                coro = ctx.run(self.handler, ex)
                            if type(coro) is _Coroutine:  # (no bound method per request)
                                first = ctx.run(_send, coro, None)
                            else:  # any other awaitable handler result
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
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)
        timeout = self.config.request_timeout
        if timeout is not None:  # a deadline on the connection's wheel: _on_timer checks it
            self._job_since = now = self._loop.time()
            self._arm(now + timeout)

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
                cont: _Continue | None = None
                try:
                    if coro is None:  # not started yet: a fresh context, as for the others
                        ctx = self._base_ctx.copy()  # type: ignore[union-attr]
                        coro = ctx.run(self.handler, ex)
                        first = _NOT_STARTED
                    if self._cancel_pending:
                        self._cancel_pending = False
                        first = _cancelled(loop, coro, first)
                    cont = _Continue(coro, first, ctx, self, ex)
                    await cont
                except asyncio.CancelledError:
                    cancelled = True
                except Exception as e:
                    exc = e
                if cont is not None and cont.detached:  # the connection went on without it
                    if exc is not None and not isinstance(exc, ClientDisconnected):
                        logger.error(
                            "handler failed after its response: %s %r",
                            ex.head.method,
                            ex.head.raw_path,
                            exc_info=exc,
                        )
                    return
                # No cancel request outlives its job. One the handler did not let escape may
                # still be armed on this task (before 3.13 uncancel() leaves it): a fresh worker
                # serves what comes next.
                stale = False
                if worker.cancelling():  # type: ignore[union-attr]
                    while worker.uncancel() > 0:  # type: ignore[union-attr]
                        pass
                    stale = not cancelled
                self._busy = False
                self._job_since = 0.0
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

    def _detach(self, ex: HttpExchange) -> bool:
        """``ex``'s response is complete but its handler goes on (work after the answer, e.g.
        Starlette's BackgroundTasks; called by :class:`_Continue` before the handler
        suspends): the connection goes on as if it had returned (the next request is answered,
        a ``Connection: close`` closes now). Its worker task keeps running it, detached: a lost
        client or ``request_timeout`` no longer cancels it, shutdown waits for it
        (``ConnectionPool.wait_detached``); the next request gets a new worker. False (asked
        again at its next suspension) while the client is not reading what was sent, or while
        the request body is not all read."""
        queue = self._queue
        if (
            not self._busy
            or not queue
            or queue[0] is not ex
            or ex._gen != self._gen
            or self._transport is None
            or self._timed_out
            or self._write_paused
            or not ex._done_body
        ):
            return False
        worker = self._worker
        if worker is None or worker is not _current_task(self._loop):
            return False
        del queue[0]
        self._busy = False
        self._job_since = 0.0
        self._worker = None
        if self.pool is not None:
            self.pool.add_detached(worker)
        self._retire(ex)
        if queue and not self._busy and self._transport is not None:
            self._dispatch()
        return True

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

    def _request_timeout(self) -> None:
        """The running job is past ``request_timeout`` (called by ``_on_timer``): cancel it."""
        if self._busy and self._worker is not None:
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
            failure = _body_failure(exc)
            if failure is not None:
                status, message = failure
            elif isinstance(exc, ClientDisconnected):
                self._abort("client disconnected")
                return
            else:
                logger.error(
                    "handler failed: %s %r", ex.head.method, ex.head.raw_path, exc_info=exc
                )
        elif not ex._started and not timed_out:
            failure = _body_failure(ex._body_error)
            if failure is None:
                logger.error(
                    "handler returned without responding: %s %r", ex.head.method, ex.head.raw_path
                )
            else:  # the handler took the broken body as a disconnect (the App, ASGI): say why
                status, message = failure
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
