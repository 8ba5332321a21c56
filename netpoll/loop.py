"""netpoll's event loop: asyncio's Unix selector loop with its own poller, turn and transports.

Theory of operation
-------------------
``Loop`` subclasses asyncio's Unix selector loop, so everything asyncio already does well and
that is not on the per-request path (subprocesses, signals, Unix sockets, datagram endpoints,
SSL/``start_tls``, DNS, executors, ``sock_*``) is asyncio's own code. What we replace:

* the selector: a :class:`~netpoll.selector.PollerSelector` over an epoll/kqueue/poll backend
  (:mod:`netpoll.pollers`);
* one loop turn (``_run_once``): flush the transports written to during the previous turn
  (one ``sendmsg`` each), poll, run I/O callbacks, expire timers, run the ready queue.
  Readiness for netpoll's own transports and listening sockets is dispatched straight to them:
  a transport's reader is the shared :data:`~netpoll.transport.SOCKET_READER` and the transport
  is found by fd in ``_sockets``; listeners and writers have an
  :class:`~netpoll.transport.IOHandle` made when the fd is registered (never per event); ``add_reader``/``add_writer`` callbacks of user code go through the ready queue
  exactly as in asyncio. In debug mode everything goes through the queue so slow callbacks are
  timed and reported;
* socket transports (:class:`~netpoll.transport.SocketTransport`), used for TCP and Unix stream
  connections and as the raw transport under SSL;
* the accept loop: batches of ``accept``, no Task per plain connection, EMFILE back-off;
* ``sendfile`` on our transports: ``os.sendfile`` one slice per turn.

Counters for ``stats()`` are plain int attributes bumped where the work happens.
"""

from __future__ import annotations

import asyncio
import errno
import heapq
import inspect
import logging
import os
import socket
import ssl as _ssl
import time as _time
from asyncio import base_events, constants, futures, sslproto
from collections.abc import Callable
from typing import Any

from . import pollers
from .selector import PollerSelector
from .transport import READING, SOCKET_READER, IOHandle, SocketTransport

logger = logging.getLogger("netpoll")

_READ = 1
_WRITE = 2
_MAX_TIMEOUT = 24 * 3600  # as asyncio: no poll longer than a day
# cancelled timers are purged from the heap when they are this many and this large a share
_MIN_CANCELLED = 100
_CANCELLED_SHARE = 0.5
_RBUF_SIZE = 256 * 1024  # the shared receive buffer for plain Protocols
_ACCEPT_BACKOFF_MIN = 0.005
_ACCEPT_BACKOFF_MAX = 1.0
_OUT_OF_FDS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_NAMES_MAX = 256  # distinct addresses kept by Loop._shared_name
_on_readable = SocketTransport._on_readable

# Server._attach/_detach take the transport on 3.13+ (and late 3.12 patch releases)
_ATTACH_TAKES_TRANSPORT = len(inspect.signature(base_events.Server._attach).parameters) > 1

_STAT_NAMES = (
    "turns",
    "polls",
    "events",
    "reads",
    "bytes_in",
    "writes",
    "extra_iovecs",  # buffers beyond one per write (stats() reports iovecs = writes + these)
    "bytes_out",
    "sendfile",
    "splice",
    "accepts",
    "accept_backoffs",
)


class Loop(asyncio.SelectorEventLoop):  # type: ignore[misc,valid-type]
    """An asyncio event loop on epoll (Linux), kqueue (BSD/macOS) or poll.

    ``poller`` names the backend (``"epoll"``, ``"kqueue"``, ``"poll"``); by default
    ``$NETPOLL_POLLER`` or the best the platform has.
    """

    def __init__(self, poller: str | None = None) -> None:
        self._poller = pollers.choose(poller)
        self._dirty: list[SocketTransport] = []  # transports written to this turn
        self._rbuf = bytearray(_RBUF_SIZE)
        self._rview = memoryview(self._rbuf)
        self._accept_delay: dict[int, float] = {}  # listening fd -> current back-off
        # fd -> open netpoll socket transport; it removes itself when it closes. asyncio's own
        # transports (datagram) stay in the inherited weak ``_transports``.
        self._sockets: dict[int, SocketTransport] = {}
        self._names: dict[Any, Any] = {}  # address -> the one shared equal object (bounded)
        for name in _STAT_NAMES:
            setattr(self, "_st_" + name, 0)
        super().__init__(PollerSelector(self._poller))

    # asyncio's clock (``time.monotonic``), called directly rather than through a Python method:
    # the loop and the server read it several times per request.
    time = staticmethod(_time.monotonic)

    def __repr__(self) -> str:
        return (
            f"<{self.__class__.__name__} poller={self._poller.name} "
            f"running={self.is_running()} closed={self.is_closed()} debug={self.get_debug()} "
            f"fds={len(self._selector.keys) if self._selector is not None else 0}>"  # type: ignore[attr-defined]
        )

    # ------------------------------------------------------------------ stats

    def stats(self) -> dict[str, Any]:
        """Counters since the loop was created.

        ``turns`` loop iterations; ``polls`` poll calls that returned events and ``events`` the
        events they returned; ``reads``/``bytes_in`` receive calls and bytes; ``writes`` send and
        sendmsg calls, ``iovecs`` buffers passed to them, ``bytes_out`` bytes sent (including
        sendfile/splice); ``sendfile``/``splice`` zero-copy calls; ``accepts`` connections
        accepted and ``accept_backoffs`` pauses for running out of fds. Derived:
        ``events_per_poll`` and ``iovecs_per_write``.
        """
        out: dict[str, Any] = {name: getattr(self, "_st_" + name) for name in _STAT_NAMES}
        out["iovecs"] = out["writes"] + out.pop("extra_iovecs")
        out["poller"] = self._poller.name
        out["events_per_poll"] = out["events"] / out["polls"] if out["polls"] else 0.0
        out["iovecs_per_write"] = out["iovecs"] / out["writes"] if out["writes"] else 0.0
        return out

    # ------------------------------------------------------------------ the turn

    def _run_once(self) -> None:
        if self._dirty:
            self._flush_dirty()
        self._st_turns += 1  # type: ignore[attr-defined]
        scheduled = self._scheduled
        ready = self._ready
        # drop cancelled timers: in bulk when they are many, else just off the top
        n_sched = len(scheduled)
        if n_sched > _MIN_CANCELLED and self._timer_cancelled_count / n_sched > _CANCELLED_SHARE:
            live = []
            for h in scheduled:
                if h._cancelled:
                    h._scheduled = False
                else:
                    live.append(h)
            heapq.heapify(live)
            self._scheduled = scheduled = live
            self._timer_cancelled_count = 0
        else:
            while scheduled and scheduled[0]._cancelled:
                self._timer_cancelled_count -= 1
                heapq.heappop(scheduled)._scheduled = False

        if ready or self._stopping:
            timeout: float | None = 0
        elif scheduled:
            timeout = min(max(0.0, scheduled[0]._when - self.time()), _MAX_TIMEOUT)
        else:
            timeout = None

        event_list = self._poller.poll(timeout)
        if event_list:
            self._dispatch(event_list)

        if scheduled:
            end_time = self.time() + self._clock_resolution
            while scheduled and scheduled[0]._when < end_time:
                h = heapq.heappop(scheduled)
                h._scheduled = False
                ready.append(h)

        if self._debug:
            self._run_ready_debug()
            return
        for _ in range(len(ready)):
            h = ready.popleft()
            if not h._cancelled:
                h._run()

    def _dispatch(self, event_list: list[tuple[int, int]]) -> None:
        self._st_polls += 1  # type: ignore[attr-defined]
        self._st_events += len(event_list)  # type: ignore[attr-defined]
        keys = self._selector.keys  # type: ignore[attr-defined]
        sockets = self._sockets
        read_bits = self._poller.READ
        write_bits = self._poller.WRITE
        ready = self._ready
        queue = ready.append
        # Through the queue: in debug mode everything (so slow callbacks are timed), and
        # whenever callbacks were queued before this poll, which asyncio and uvloop run before
        # the I/O it found (code such as aiohttp's relies on that order). Else readiness goes
        # straight to the transport, no Handle per event.
        if ready or self._debug:
            for fd, mask in event_list:
                key = keys.get(fd)
                if key is not None:
                    self._queue_io(fd, mask, key.data, read_bits, write_bits)
            return
        for fd, mask in event_list:
            key = keys.get(fd)
            if key is None:
                continue
            reader, writer = key.data
            if reader is not None and mask & read_bits:
                # netpoll's own readers run now, no queue round trip; they handle their own
                # errors (as asyncio's transports do)
                ran = True
                if reader is SOCKET_READER:  # a transport: in its own context
                    t = sockets.get(fd)
                    if t is not None:
                        t._context.run(_on_readable, t)  # (no bound method per event)
                elif reader.__class__ is IOHandle and not reader._cancelled:  # a listener
                    reader._context.run(reader._callback)
                else:
                    ran = False
                    if reader._cancelled:
                        self._remove_reader(fd)
                    else:
                        queue(reader)
                if ran and writer is not None:
                    key = keys.get(fd)  # the reader may have closed or re-registered fd
                    if key is None:
                        continue
                    writer = key.data[1]
            if writer is not None and mask & write_bits:
                if writer.__class__ is IOHandle and not writer._cancelled:
                    writer._context.run(writer._callback)
                elif writer._cancelled:
                    self._remove_writer(fd)
                else:
                    queue(writer)

    def _queue_io(self, fd: int, mask: int, data: Any, read_bits: int, write_bits: int) -> None:
        reader, writer = data
        if reader is SOCKET_READER:
            t = self._sockets.get(fd)
            reader = None if t is None else asyncio.Handle(_read_if_reading, (t,), self, t._context)
        for handle, bits, remove in (
            (reader, read_bits, self._remove_reader),
            (writer, write_bits, self._remove_writer),
        ):
            if handle is not None and mask & bits:
                if handle._cancelled:
                    remove(fd)
                else:
                    self._ready.append(handle)

    def _run_ready_debug(self) -> None:
        ready = self._ready
        for _ in range(len(ready)):
            h = ready.popleft()
            if h._cancelled:
                continue
            try:
                self._current_handle = h
                t0 = self.time()
                h._run()
                dt = self.time() - t0
                if dt >= self.slow_callback_duration:
                    # asyncio's own logger, looked up now: whoever configured (or patched) it
                    # sees these warnings exactly as with asyncio's loop
                    base_events.logger.warning(
                        "Executing %s took %.3f seconds", base_events._format_handle(h), dt
                    )
            finally:
                self._current_handle = None

    def _flush_dirty(self) -> None:
        dirty = self._dirty
        self._dirty = []
        for t in dirty:
            t._flush()

    # ------------------------------------------------------------------ I/O registration

    def _add_io(
        self, fd: int, read: bool, callback: Callable[[], None], exclusive: bool = False
    ) -> None:
        """Register a netpoll-internal reader (``read``) or writer run straight from poll;
        ``exclusive`` (listening sockets) wakes one of several processes polling the fd."""
        handle = IOHandle(callback, (), self, None)
        sel: PollerSelector = self._selector  # type: ignore[assignment]
        key = sel.keys.get(fd)
        if key is None:
            data = (handle, None) if read else (None, handle)
            sel.register(fd, _READ if read else _WRITE, data, exclusive=exclusive)
            return
        reader, writer = key.data
        if read:
            sel.modify(fd, key.events | _READ, (handle, writer))
            old = reader
        else:
            sel.modify(fd, key.events | _WRITE, (reader, handle))
            old = writer
        if old is not None:
            old.cancel()

    def _add_socket_reader(self, fd: int) -> None:
        """Register the reader of the netpoll transport on ``fd`` (see ``_dispatch``)."""
        sel: PollerSelector = self._selector  # type: ignore[assignment]
        key = sel.keys.get(fd)
        if key is None:
            sel.register(fd, _READ, READING)
            return
        reader, writer = key.data
        sel.modify(fd, key.events | _READ, READING if writer is None else (SOCKET_READER, writer))
        if reader is not None:
            reader.cancel()

    def _ensure_fd_no_transport(self, fd: Any) -> None:
        super()._ensure_fd_no_transport(fd)  # asyncio's transports; validates ``fd``
        fileno = fd if isinstance(fd, int) else int(fd.fileno())
        transport = self._sockets.get(fileno)
        if transport is not None and not transport.is_closing():
            raise RuntimeError(f"File descriptor {fd!r} is used by transport {transport!r}")

    def _shared_name(self, value: Any) -> Any:
        """``value`` or an equal object seen before: the accepted connections of one listener
        share one sockname tuple, and the peers on one host one host string."""
        names = self._names
        try:
            got = names.get(value)
        except TypeError:  # unhashable: keep as is
            return value
        if got is None:
            if len(names) >= _NAMES_MAX:
                names.clear()
            names[value] = got = value
        return got

    async def _wait_fd_readable(self, fd: int) -> None:
        fut = self.create_future()
        self._add_reader(fd, futures._set_result_unless_cancelled, fut, None)
        try:
            await fut
        finally:
            self._remove_reader(fd)

    def _server_attach(self, server: Any, transport: SocketTransport) -> None:
        if _ATTACH_TAKES_TRANSPORT:
            server._attach(transport)
        else:
            server._attach()

    def _server_detach(self, server: Any, transport: SocketTransport) -> None:
        if _ATTACH_TAKES_TRANSPORT:
            server._detach(transport)
        else:
            server._detach()

    # ------------------------------------------------------------------ transports

    def _make_socket_transport(  # type: ignore[override]
        self,
        sock: socket.socket,
        protocol: asyncio.BaseProtocol,
        waiter: asyncio.Future[None] | None = None,
        *,
        extra: dict[str, Any] | None = None,
        server: Any = None,
    ) -> SocketTransport:
        self._ensure_fd_no_transport(sock)
        return SocketTransport(self, sock, protocol, waiter, extra, server)

    def _make_ssl_transport(  # type: ignore[override]
        self,
        rawsock: socket.socket,
        protocol: asyncio.BaseProtocol,
        sslcontext: _ssl.SSLContext,
        waiter: asyncio.Future[None] | None = None,
        *,
        server_side: bool = False,
        server_hostname: str | None = None,
        extra: dict[str, Any] | None = None,
        server: Any = None,
        ssl_handshake_timeout: float | None = constants.SSL_HANDSHAKE_TIMEOUT,
        ssl_shutdown_timeout: float | None = constants.SSL_SHUTDOWN_TIMEOUT,
    ) -> asyncio.Transport:
        self._ensure_fd_no_transport(rawsock)
        ssl_protocol = sslproto.SSLProtocol(
            self,
            protocol,
            sslcontext,
            waiter,
            server_side,
            server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
        )
        SocketTransport(self, rawsock, ssl_protocol, extra=extra, server=server)
        return ssl_protocol._app_transport

    # ------------------------------------------------------------------ accept loop

    def _start_serving(  # type: ignore[override]
        self,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        sock: socket.socket,
        sslcontext: _ssl.SSLContext | None = None,
        server: Any = None,
        backlog: int = 100,
        ssl_handshake_timeout: float | None = constants.SSL_HANDSHAKE_TIMEOUT,
        ssl_shutdown_timeout: float | None = constants.SSL_SHUTDOWN_TIMEOUT,
    ) -> None:
        def on_readable() -> None:
            self._accept_connection(
                protocol_factory,
                sock,
                sslcontext,
                server,
                backlog,
                ssl_handshake_timeout,
                ssl_shutdown_timeout,
            )

        self._add_io(sock.fileno(), True, on_readable, exclusive=True)

    def _accept_connection(  # type: ignore[override]
        self,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        sock: socket.socket,
        sslcontext: _ssl.SSLContext | None = None,
        server: Any = None,
        backlog: int = 100,
        ssl_handshake_timeout: float | None = constants.SSL_HANDSHAKE_TIMEOUT,
        ssl_shutdown_timeout: float | None = constants.SSL_SHUTDOWN_TIMEOUT,
    ) -> None:
        """Accept up to ``backlog`` connections now; back off when out of fds."""
        lfd = sock.fileno()
        for _ in range(backlog):
            try:
                conn, addr = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # the peer gave up while queued: next one
            except OSError as exc:
                if exc.errno not in _OUT_OF_FDS:
                    raise
                self._accept_backoff(
                    lfd,
                    exc,
                    protocol_factory,
                    sock,
                    sslcontext,
                    server,
                    backlog,
                    ssl_handshake_timeout,
                    ssl_shutdown_timeout,
                )
                return
            self._accept_delay.pop(lfd, None)
            self._st_accepts += 1  # type: ignore[attr-defined]
            conn.setblocking(False)
            if sslcontext is None:
                self._connect_accepted(protocol_factory, conn, addr, server)
            else:
                self.create_task(
                    self._accept_connection2(
                        protocol_factory,
                        conn,
                        {"peername": addr},
                        sslcontext,
                        server,
                        ssl_handshake_timeout,
                        ssl_shutdown_timeout,
                    )
                )

    def _accept_backoff(self, lfd: int, exc: OSError, *accept_args: Any) -> None:
        delay = self._accept_delay.get(lfd)
        delay = _ACCEPT_BACKOFF_MIN if delay is None else min(delay * 2, _ACCEPT_BACKOFF_MAX)
        self._accept_delay[lfd] = delay
        self._st_accept_backoffs += 1  # type: ignore[attr-defined]
        if delay == _ACCEPT_BACKOFF_MIN:  # report once per episode, not every retry
            self.call_exception_handler(
                {
                    "message": "socket.accept() out of system resource; "
                    f"retrying with back-off from {delay * 1000:.0f} ms",
                    "exception": exc,
                    "socket": asyncio.trsock.TransportSocket(accept_args[1]),
                }
            )
        self._remove_reader(lfd)
        self.call_later(delay, self._resume_accept, *accept_args)

    def _resume_accept(self, *accept_args: Any) -> None:
        sock: socket.socket = accept_args[1]
        server = accept_args[3]
        if sock.fileno() < 0 or (server is not None and not server.is_serving()):
            return  # closed while we waited
        self._start_serving(*accept_args)

    def _connect_accepted(
        self,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        conn: socket.socket,
        addr: Any,
        server: Any,
    ) -> None:
        """Plain TCP/Unix: build protocol and transport synchronously (no Task)."""
        protocol = None
        try:
            protocol = protocol_factory()
            self._ensure_fd_no_transport(conn)
            SocketTransport(self, conn, protocol, server=server, peername=addr)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            conn.close()
            context: dict[str, Any] = {
                "message": "Error on transport creation for incoming connection",
                "exception": exc,
            }
            if protocol is not None:
                context["protocol"] = protocol
            self.call_exception_handler(context)

    # ------------------------------------------------------------------ sendfile

    async def _sendfile_native(  # type: ignore[override]
        self, transp: asyncio.WriteTransport, file: Any, offset: int, count: int | None
    ) -> int:
        _check_sendfile_args(file, offset, count)
        if not isinstance(transp, SocketTransport) or not hasattr(os, "sendfile"):
            raise asyncio.SendfileNotAvailableError("not a netpoll socket transport")
        try:
            fileno = file.fileno()
        except (AttributeError, OSError) as err:
            raise asyncio.SendfileNotAvailableError("not a regular file") from err
        try:
            fsize = os.fstat(fileno).st_size
        except OSError as err:
            raise asyncio.SendfileNotAvailableError("not a regular file") from err
        if not (count if count else fsize):
            return 0
        resume_reading = transp.is_reading()
        transp.pause_reading()
        progress = [0]
        try:
            return await transp._sendfile(fileno, offset, count, progress)
        finally:
            if progress[0] > 0:
                file.seek(offset + progress[0])
            if resume_reading:
                transp.resume_reading()

    # ------------------------------------------------------------------ closing

    def close(self) -> None:
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        if self.is_closed():
            return
        # asyncio leaves open transports' sockets to the garbage collector; we free them now
        for transport in list(self._sockets.values()):
            transport._release_on_loop_close()
        self._dirty.clear()
        super().close()


def _read_if_reading(t: SocketTransport) -> None:
    """A queued read (debug mode, or callbacks were queued before the poll: see _dispatch):
    the transport may have paused or closed since the poll."""
    if not t._paused and not t._closing:
        t._on_readable()


def _check_sendfile_args(file: Any, offset: Any, count: Any) -> None:
    """The argument errors asyncio's own sendfile raises, in the same order."""
    if "b" not in getattr(file, "mode", "b"):
        raise ValueError("file should be opened in binary mode")
    if count is not None:
        if not isinstance(count, int):
            raise TypeError(f"count must be a positive integer (got {count!r})")
        if count <= 0:
            raise ValueError(f"count must be a positive integer (got {count!r})")
    if not isinstance(offset, int):
        raise TypeError(f"offset must be a non-negative integer (got {offset!r})")
    if offset < 0:
        raise ValueError(f"offset must be a non-negative integer (got {offset!r})")


class EventLoopPolicy(asyncio.DefaultEventLoopPolicy):  # type: ignore[misc,valid-type]
    """asyncio's default (Unix) policy, creating :class:`Loop` instances."""

    _loop_factory = Loop


def new_event_loop() -> Loop:
    """Return a new :class:`Loop` (for ``asyncio.run(..., loop_factory=...)`` and Runners)."""
    return Loop()


def install() -> None:
    """Make netpoll the default event loop of this process (sets the asyncio policy)."""
    asyncio.set_event_loop_policy(EventLoopPolicy())


def run(main: Any, *, debug: bool | None = None) -> Any:
    """Run coroutine ``main`` on a new netpoll loop, as ``asyncio.run`` does, and close it."""
    with asyncio.Runner(debug=debug, loop_factory=new_event_loop) as runner:
        return runner.run(main)
