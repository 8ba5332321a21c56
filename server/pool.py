"""The connection pool: reuse of connection objects and the max-connections limit.

Theory of operation
-------------------
A :class:`ConnectionPool` *is* the protocol factory given to ``loop.create_server``. Each
accepted socket gets an :class:`~server.connection.HttpConnection` taken from the free list
(reset, not reallocated: the parser, the queue and the config-derived state are kept), or a
new one while fewer than ``max_connections`` exist. ``connection_lost`` hands the object back
through :meth:`release`.

An idle keep-alive connection holds no receive buffer of its own: bytes are parsed straight out
of what the transport delivers, and only the unparsed rest of a read is kept, and only while
reading is paused (backpressure). On netpoll the transport's read buffers are pooled by the
loop.

Beyond ``max_connections`` the ``overload`` setting decides:

* ``"503"``: the socket gets an :class:`OverloadProtocol` that answers ``503`` with
  ``Connection: close`` once the request arrives (so the answer is not lost to a reset), then
  closes;
* ``"defer"``: asyncio has no portable way to pause a listening socket's accept (removing the
  reader is loop-specific and ``Server.close`` closes the socket), so we *accept and hold*: the
  socket gets a :class:`HeldProtocol` that pauses reading and waits, FIFO, for a slot; when one
  frees, the transport is switched to a real connection with ``transport.set_protocol``. At most
  ``backlog`` sockets are held; past that the 503 path applies. Held sockets cost one fd each.

Decisions are plain methods (:meth:`acquire` returns what to use); ``repr(pool)`` shows counts.
"""

from __future__ import annotations

import asyncio
import types
from collections import deque
from collections.abc import Callable

from .config import Config
from .connection import HttpConnection, memory_path_memo
from .deadlines import DeadlineWheel
from .exchange import AppHandler
from .http11 import error_response, server_line

__all__ = ["ConnectionPool", "HeldProtocol", "OverloadProtocol"]


class OverloadProtocol(asyncio.Protocol):
    """Answer 503 and close (a socket accepted past ``max_connections``)."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        return f"<OverloadProtocol open={self.transport is not None}>"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.pool.refused += 1
        # Answer on the first bytes (reading them avoids a reset that would eat the answer),
        # or after a short while for a client that sends nothing.
        self._timer = asyncio.get_running_loop().call_later(1.0, self._answer)

    def data_received(self, data: bytes) -> None:
        self._answer()

    def _answer(self) -> None:
        t = self.transport
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if t is not None and not t.is_closing():
            t.writelines(
                error_response(503, "server overloaded, try again later", self.pool.server)
            )
            t.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.transport = None


class HeldProtocol(asyncio.Protocol):
    """An accepted socket waiting for a free connection slot (``overload="defer"``)."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.early = b""  # bytes that arrived before reading could be paused

    def __repr__(self) -> str:
        return f"<HeldProtocol open={self.transport is not None} early={len(self.early)}>"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.pause_reading()  # type: ignore[attr-defined]
        self.pool._held.append(self)

    def data_received(self, data: bytes) -> None:
        self.early += data

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        try:
            self.pool._held.remove(self)
        except ValueError:
            pass


def direct_call(handler: AppHandler) -> AppHandler:
    """``handler`` as the pool's connections call it per request: an object whose ``__call__`` is a
    Python function (an ``App``, an ``ASGIHandler``) becomes that bound method, which Python
    calls directly instead of through the type's call slot (about 2 % of a pipelined request;
    made once per pool: the connections share it)."""
    if isinstance(type(handler).__call__, types.FunctionType):
        return handler.__call__  # type: ignore[no-any-return]
    return handler


class ConnectionPool:
    """Protocol factory, free list and connection limit (see the module docstring)."""

    def __init__(self, handler: AppHandler, config: Config, *, scheme: str = "http") -> None:
        self.handler = handler
        self._call = direct_call(handler)  # what the connections call: one for all of them
        # whether a client's reset cancels a handler that has not answered yet (see
        # HttpConnection.connection_lost); ASGIHandler says no, as uvicorn never cancels an app
        self.cancel_on_reset: bool = getattr(handler, "cancel_on_reset", True)
        from_memory = getattr(handler, "answer_from_memory", None)  # (MemoryAnswering)
        self._from_memory = from_memory if callable(from_memory) else None
        self._memory_paths = memory_path_memo(tuple(getattr(handler, "memory_paths", ("",))))
        self.config = config
        self.scheme = scheme
        self.server = server_line(config.server_header)
        self.max = config.max_connections
        self.active: set[HttpConnection] = set()  # connections with a live transport
        self._free: list[HttpConnection] = []  # reset connections ready for reuse
        self._held: deque[HeldProtocol] = deque()  # deferred sockets, FIFO
        self.created = 0  # connection objects ever allocated
        self.reused = 0  # acquisitions served from the free list
        self.refused = 0  # sockets answered 503
        self._closed = False  # shutting down: no new connections
        self._empty: asyncio.Event | None = None
        self._wheel: DeadlineWheel | None = None  # the connections' deadlines (one loop)
        # told the status of each request a connection refuses itself (WorkerState: metrics)
        self.on_refused: Callable[[int], None] | None = None
        # worker tasks still running a handler whose response is complete (work after the
        # answer, see HandlerRunner._detach): shutdown waits for them like for connections
        self.detached: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return (
            f"<ConnectionPool active={len(self.active)} free={len(self._free)} "
            f"held={len(self._held)} max={self.max} created={self.created} "
            f"reused={self.reused} refused={self.refused}>"
        )

    def wheel(self, loop: asyncio.AbstractEventLoop) -> DeadlineWheel:
        """The deadline wheel the connections share on ``loop``."""
        wheel = self._wheel
        if wheel is None or wheel.loop is not loop:
            wheel = self._wheel = DeadlineWheel(loop)
        return wheel

    @property
    def held(self) -> int:
        return len(self._held)

    @property
    def free(self) -> int:
        return len(self._free)

    def acquire(self, counted: bool = True) -> HttpConnection | None:
        """A connection object for a new socket, or None when the limit is reached. ``counted``:
        it takes its place in ``active`` now (else once its transport is made: :meth:`made`)."""
        if len(self.active) >= self.max or self._closed:
            return None
        if self._free:
            conn = self._free.pop()
            self.reused += 1
        else:
            conn = HttpConnection(
                self._call,
                self.config,
                self,
                scheme=self.scheme,
                from_memory=self._from_memory,
                memory_paths=self._memory_paths,
            )
            self.created += 1
        if counted:
            self.active.add(conn)
        return conn

    def made(self, conn: HttpConnection, transport: asyncio.BaseTransport) -> bool:
        """``conn``, not counted yet (over TLS), has its ``transport`` (the handshake is done):
        it counts from now on. False when there is no place left (or the server is shutting
        down): the transport goes where :meth:`__call__` sends such a socket (held, or a
        503), and ``conn`` back to the free list."""
        if len(self.active) < self.max and not self._closed:
            self.active.add(conn)
            return True
        proto = self._overflow()
        transport.set_protocol(proto)
        proto.connection_made(transport)
        if len(self._free) < self.max:
            self._free.append(conn)
        return False

    def __call__(self) -> asyncio.Protocol:
        """The protocol factory for ``loop.create_server``."""
        # Over TLS a connection counts once its handshake is done (made): when one fails (a
        # TCP probe, plain HTTP, a refused certificate, the handshake timeout), the SSL layer
        # drops the protocol without calling it, and a place taken here would never be freed.
        conn = self.acquire(counted=self.scheme == "http")
        if conn is not None:
            return conn
        return self._overflow()

    def _overflow(self) -> asyncio.Protocol:
        """The protocol of a socket beyond ``max_connections``: held (``overload="defer"``,
        while the queue has room) or answered 503."""
        if (
            self.config.overload == "defer"
            and not self._closed
            and len(self._held) < self.config.backlog
        ):
            return HeldProtocol(self)
        return OverloadProtocol(self)

    def release(self, conn: HttpConnection) -> None:
        """Called by a connection once its socket is gone and it has been reset."""
        self.active.discard(conn)
        if len(self._free) < self.max:
            self._free.append(conn)
        while self._held and not self._closed:
            held = self._held.popleft()
            transport = held.transport
            if transport is None or transport.is_closing():
                continue
            new = self.acquire()
            if new is None:
                self._held.appendleft(held)
                break
            transport.set_protocol(new)
            new.connection_made(transport)
            if held.early:
                new.data_received(held.early)
            transport.resume_reading()
            break
        if not self.active and self._empty is not None:
            self._empty.set()

    # --- shutdown ---
    def shutdown(self) -> None:
        """Stop taking connections; idle ones close now, busy ones after their response."""
        self._closed = True
        while self._held:
            held = self._held.popleft()
            if held.transport is not None:
                held.transport.close()
        for conn in list(self.active):
            conn.shutdown()

    async def wait_empty(self, timeout: float) -> bool:
        """Wait until every connection is gone; False if ``timeout`` passed first."""
        if not self.active:
            return True
        self._empty = asyncio.Event()
        try:
            await asyncio.wait_for(self._empty.wait(), timeout)
        except TimeoutError:
            return not self.active
        return True

    def add_detached(self, task: asyncio.Task[None]) -> None:
        """Track a detached worker task until it ends (see ``detached``)."""
        self.detached.add(task)
        task.add_done_callback(self.detached.discard)

    async def wait_detached(self, timeout: float) -> None:
        """Let detached handlers finish for up to ``timeout`` seconds, then cancel them."""
        if self.detached:
            await asyncio.wait(set(self.detached), timeout=timeout)
        for task in list(self.detached):
            task.cancel()

    def abort_all(self) -> None:
        for conn in list(self.active):
            conn.abort()
