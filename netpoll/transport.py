"""netpoll's socket transport: pooled reads, writes corked per loop turn, native sendfile/splice.

Theory of operation
-------------------
Reading. The transport's reader is registered once (when ``connection_made`` has run) and stays
registered until reading is paused or the transport closes. The loop calls it directly from the
poll results (no queued Handle). What the selector holds for it is one shared stand-in
(:data:`READING`), not a Handle per transport: the loop finds the transport by fd in
``loop._sockets`` and runs ``_on_readable`` in the transport's own ``Context`` (copied when the
transport was made, as uvloop does), which saves ~280 bytes per idle connection. A plain ``Protocol`` gets bytes copied out of the loop's one
shared receive buffer (``recv_into``: one allocation per read, sized to the data, instead of a
256 KiB ``recv`` buffer); a ``BufferedProtocol`` gets ``recv_into`` its own buffer, no copy.

Writing. ``write``/``writelines`` append to ``_buffer`` and put the transport on the loop's
"dirty" list once per turn. Just before the loop polls again it flushes every dirty transport
with one ``sendmsg`` (bounded by IOV_MAX; repeated while the kernel takes everything). So the
sixteen responses to sixteen pipelined requests leave in one syscall. What the kernel refuses
stays in ``_buffer`` (as memoryview tails) and the writer is registered for EPOLLOUT; it is
unregistered as soon as the buffer empties. If one turn corks more than the high-water mark,
the transport flushes early instead of buffering without bound. Flow control is asyncio's:
``pause_writing`` above the high-water mark, ``resume_writing`` at or below the low one,
``get_write_buffer_size`` counts corked and refused bytes alike.

Closing. ``close`` stops reading and lets the buffer drain, then ``connection_lost(None)``;
``abort``/fatal errors drop the buffer and call ``connection_lost(exc)``. The socket is closed
right after ``connection_lost`` returns, and unregistered from the poller before that; the
transport leaves ``loop._sockets`` then (a plain dict: no weak reference per connection).

Memory. An idle transport holds no output list (``_buffer`` is the shared empty tuple between
turns; a list is made by the first write of a turn), no extra-info dict of its own (sockname and
peername are slots, and equal addresses share one object through the loop's small cache), and
no reader Handle (above).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import socket
import warnings
from asyncio import constants, events, futures, protocols, transports, trsock
from typing import TYPE_CHECKING, Any

from .transport_zc import ZeroCopyMixin

if TYPE_CHECKING:
    from .loop import Loop

logger = logging.getLogger("netpoll")

try:
    IOV_MAX = min(os.sysconf("SC_IOV_MAX"), 1024)
except (AttributeError, ValueError, OSError):  # pragma: no cover - platform dependent
    IOV_MAX = 16

HAS_SPLICE = hasattr(os, "splice")
_NO_EXTRA: dict[str, Any] = {}  # shared, never written: the extra info of most transports
_NO_BUFFER: Any = ()  # shared, immutable: ``_buffer`` between turns (see the module docstring)


def _own_bytes(data: Any) -> Any:
    """Validate a write() argument; copy mutable buffers the caller may reuse once we return."""
    if isinstance(data, (bytearray, memoryview)):
        if isinstance(data, bytearray) or not data.readonly:
            return bytes(data)
        return data
    if isinstance(data, bytes):
        return data
    raise TypeError(f"data argument must be a bytes-like object, not {type(data).__name__!r}")


def _set_nodelay(sock: socket.socket) -> None:
    if (
        sock.family in (socket.AF_INET, socket.AF_INET6)
        and sock.type == socket.SOCK_STREAM
        and sock.proto == socket.IPPROTO_TCP
    ):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class IOHandle(events.Handle):
    """A reader/writer handle the loop runs straight from poll results (never queued)."""

    __slots__ = ()


class _SocketReader:
    """The one reader every netpoll socket transport has in the selector (see the module
    docstring). asyncio's ``_remove_reader`` cancels the old reader: nothing to do here."""

    __slots__ = ()
    _cancelled = False

    def cancel(self) -> None:
        pass

    def __repr__(self) -> str:
        return "<netpoll socket reader>"


SOCKET_READER = _SocketReader()
READING = (SOCKET_READER, None)  # selector key data of a transport that is only reading


class SocketTransport(ZeroCopyMixin, transports._FlowControlMixin):
    """A TCP or Unix stream socket transport (see the module docstring)."""

    _start_tls_compatible = True
    _sendfile_compatible = constants._SendfileMode.TRY_NATIVE

    __slots__ = (
        "__weakref__",
        # as asyncio's transports, an instance takes attributes of its own (tests patch
        # write(), libraries tag transports); the dict is made only when one is set
        "__dict__",
        # _loop, _protocol_paused, _high_water, _low_water come from _FlowControlMixin, which
        # asyncio's sendfile fallback insists on
        "_sock",
        "_sock_fd",  # the fd number, kept after close for repr and the loop's maps
        "_context",  # the Context reads run in (copied when the transport was made)
        "_sockname",  # get_extra_info() values, computed when the transport was made
        "_peername",
        "_tsock",  # TransportSocket for get_extra_info("socket"), made on first request
        "_protocol",
        "_protocol_connected",
        "_buffered",  # protocol is a BufferedProtocol
        "_server",
        "_closing",  # close() or a fatal error happened
        "_conn_lost",  # >0 once connection_lost is scheduled (counts writes after that)
        "_paused",  # reading paused by pause_reading()
        "_eof",  # write_eof() called
        "_buffer",  # pending output: bytes/memoryview, in order
        "_bufsize",  # == sum(map(len, _buffer))
        "_corked",  # on loop._dirty, to be flushed before the next poll
        "_writing",  # writer registered (kernel refused bytes)
        "_empty_waiter",  # future set when the buffer empties (sendfile/splice waits on it)
        "_write_waiter",  # future set on the next writability (sendfile/splice)
    )

    def __init__(
        self,
        loop: Loop,
        sock: socket.socket,
        protocol: asyncio.BaseProtocol,
        waiter: asyncio.Future[None] | None = None,
        extra: dict[str, Any] | None = None,
        server: Any = None,
        *,
        peername: Any = _NO_EXTRA,  # accept() told it (else ``extra`` or getpeername())
    ) -> None:
        self._extra = extra if extra else _NO_EXTRA
        self._sock: socket.socket | None = None
        self._tsock: trsock.TransportSocket | None = None
        try:
            self._sockname = loop._shared_name(sock.getsockname())
        except OSError:
            self._sockname = None
        peer = self._extra.get("peername", peername)
        if peer is _NO_EXTRA:
            try:
                peer = sock.getpeername()
            except OSError:
                peer = None
        if type(peer) is tuple:  # (host, port, ...): peers on one host share the host string
            host = loop._shared_name(peer[0])
            if host is not peer[0]:
                peer = (host, *peer[1:])
        self._peername = peer
        self._context = contextvars.copy_context()
        self._loop: Loop | None = loop
        self._sock = sock
        self._sock_fd = sock.fileno()
        self._protocol_connected = False
        self.set_protocol(protocol)
        self._server = server
        self._closing = False
        self._conn_lost = 0
        self._paused = False
        self._eof = False
        self._buffer: list[Any] = _NO_BUFFER  # a list while corked or writing
        self._bufsize = 0
        self._corked = False
        self._writing = False
        self._high_water = 64 * 1024
        self._low_water = 16 * 1024
        self._protocol_paused = False
        self._empty_waiter: asyncio.Future[None] | None = None
        self._write_waiter: asyncio.Future[None] | None = None
        if server is not None:
            loop._server_attach(server, self)
        loop._sockets[self._sock_fd] = self
        _set_nodelay(sock)
        loop.call_soon(self._protocol.connection_made, self)
        # start reading only once connection_made() has run
        loop.call_soon(self._start_reading)
        if waiter is not None:
            loop.call_soon(futures._set_result_unless_cancelled, waiter, None)

    # ----------------------------------------------------------------- repr / info

    def __repr__(self) -> str:
        info = [self.__class__.__name__]
        if self._sock is None:
            info.append("closed")
        elif self._closing:
            info.append("closing")
        info.append(f"fd={self._sock_fd}")
        if self._sock is not None:
            info.append("read=paused" if self._paused else "read=polling")
            state = "polling" if self._writing else ("corked" if self._corked else "idle")
            info.append(f"write=<{state}, bufsize={self._bufsize}>")
        return "<{}>".format(" ".join(info))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self._peername
        if name == "sockname":
            return self._sockname
        if name == "socket":
            if self._tsock is None:
                if self._sock is None:
                    return default
                self._tsock = trsock.TransportSocket(self._sock)
            return self._tsock
        return self._extra.get(name, default)

    # ----------------------------------------------------------------- protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol
        self._buffered = isinstance(protocol, protocols.BufferedProtocol)
        self._protocol_connected = True

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def is_closing(self) -> bool:
        return self._closing

    # ----------------------------------------------------------------- reading

    def is_reading(self) -> bool:
        return not self._closing and not self._paused

    def pause_reading(self) -> None:
        if self._closing or self._paused:
            return
        self._paused = True
        self._loop._remove_reader(self._sock_fd)  # type: ignore[union-attr]
        if self._loop.get_debug():  # type: ignore[union-attr]
            logger.debug("%r pauses reading", self)

    def resume_reading(self) -> None:
        if self._closing or not self._paused:
            return
        self._paused = False
        self._loop._add_socket_reader(self._sock_fd)  # type: ignore[union-attr]
        if self._loop.get_debug():  # type: ignore[union-attr]
            logger.debug("%r resumes reading", self)

    def _start_reading(self) -> None:
        if not self._closing and not self._paused:
            self._loop._add_socket_reader(self._sock_fd)  # type: ignore[union-attr]

    def _on_readable(self) -> None:
        if self._conn_lost:
            return
        loop = self._loop
        if self._buffered:
            try:
                buf = self._protocol.get_buffer(-1)  # type: ignore[attr-defined]
                if not len(buf):
                    raise RuntimeError("get_buffer() returned an empty buffer")
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal error: protocol.get_buffer() call failed.")
                return
            try:
                n = self._sock.recv_into(buf)  # type: ignore[union-attr]
            except (BlockingIOError, InterruptedError):
                return
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal read error on socket transport")
                return
            loop._st_reads += 1  # type: ignore[union-attr]
            if not n:
                self._on_eof()
                return
            loop._st_bytes_in += n  # type: ignore[union-attr]
            try:
                self._protocol.buffer_updated(n)  # type: ignore[attr-defined]
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal error: protocol.buffer_updated() call failed.")
            return
        try:
            n = self._sock.recv_into(loop._rbuf)  # type: ignore[union-attr]
        except (BlockingIOError, InterruptedError):
            return
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal read error on socket transport")
            return
        loop._st_reads += 1  # type: ignore[union-attr]
        if not n:
            self._on_eof()
            return
        loop._st_bytes_in += n  # type: ignore[union-attr]
        try:
            self._protocol.data_received(loop._rview[:n].tobytes())  # type: ignore[attr-defined,union-attr]
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal error: protocol.data_received() call failed.")

    def _on_eof(self) -> None:
        if self._loop.get_debug():  # type: ignore[union-attr]
            logger.debug("%r received EOF", self)
        try:
            keep_open = self._protocol.eof_received()  # type: ignore[attr-defined]
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal error: protocol.eof_received() call failed.")
            return
        if keep_open:
            # the protocol may still write; there is nothing more to read
            self._loop._remove_reader(self._sock_fd)  # type: ignore[union-attr]
        else:
            self.close()

    # ----------------------------------------------------------------- writing

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if data.__class__ is not bytes:
            data = _own_bytes(data)
        if self._eof or self._empty_waiter is not None or self._conn_lost or not data:
            if not self._may_write(data):
                return
        if self._corked or self._writing:
            self._buffer.append(data)
        else:  # the buffer is empty (invariant): the first write of this turn makes it
            self._buffer = [data]
            self._corked = True
            self._loop._dirty.append(self)  # type: ignore[union-attr]
        self._bufsize += len(data)
        if self._bufsize > self._high_water:
            self._over_high_water()

    def _may_write(self, data: Any) -> bool:
        """The rare cases of write(): errors, empty data, a lost connection."""
        if self._eof:
            raise RuntimeError("Cannot call write() after write_eof()")
        if self._empty_waiter is not None:
            raise RuntimeError("unable to write; sendfile is in progress")
        if not data:
            return False
        if self._conn_lost:
            if self._conn_lost >= constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES:
                logger.warning("socket.send() raised exception.")
            self._conn_lost += 1
            return False
        return True

    def writelines(self, list_of_data: Any) -> None:
        items = [d if d.__class__ is bytes else _own_bytes(d) for d in list_of_data]
        size = sum(map(len, items))
        if self._eof or self._empty_waiter is not None or self._conn_lost or not size:
            if not self._may_write(size):
                return
        # empty items are harmless: they count 0 bytes in sendmsg
        if self._corked or self._writing:
            self._buffer.extend(items)
        else:  # the buffer is empty (invariant): ``items`` is a fresh list, it becomes it
            self._buffer = items
            self._corked = True
            self._loop._dirty.append(self)  # type: ignore[union-attr]
        self._bufsize += size
        if self._bufsize > self._high_water:
            self._over_high_water()

    def _over_high_water(self) -> None:
        """More than the high-water mark is buffered: flush early, pause the protocol if stuck."""
        if not self._writing:
            self._send_buffered()
            if self._buffer and not self._writing and not self._conn_lost:
                self._writing = True
                self._loop._add_io(self._sock_fd, False, self._on_writable)  # type: ignore[union-attr]
        if self._bufsize > self._high_water:
            self._pause_protocol()

    def _send_buffered(self) -> None:
        """Send as much of ``_buffer`` as the kernel takes now (never blocks)."""
        buf = self._buffer
        sock = self._sock
        loop = self._loop
        while buf:
            offered = buf if len(buf) <= IOV_MAX else buf[:IOV_MAX]
            try:
                if len(offered) == 1:
                    n = sock.send(offered[0])  # type: ignore[union-attr]
                else:
                    n = sock.sendmsg(offered)  # type: ignore[union-attr]
            except (BlockingIOError, InterruptedError):
                return
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal write error on socket transport")
                return
            loop._st_writes += 1  # type: ignore[union-attr]
            loop._st_extra_iovecs += len(offered) - 1  # type: ignore[union-attr]
            loop._st_bytes_out += n  # type: ignore[union-attr]
            if n == self._bufsize:
                buf.clear()
                self._bufsize = 0
                return
            offered_size = self._bufsize if offered is buf else sum(map(len, offered))
            self._bufsize -= n
            full = n < offered_size  # the kernel took less than offered: its buffer is full
            # drop what was sent; keep the unsent tail of a partly sent buffer
            i = 0
            while n:
                size = len(buf[i])
                if n >= size:
                    n -= size
                    i += 1
                else:
                    buf[i] = memoryview(buf[i])[n:]
                    n = 0
            del buf[:i]
            if full:
                return

    def _flush(self, flags: int = 0) -> None:
        """End of turn: send what was corked (called by the loop, once per dirty transport).

        ``flags`` go to a single ``send`` (sendfile passes ``MSG_MORE`` for a response head).
        """
        self._corked = False
        buf = self._buffer
        if not buf:
            self._buffer = _NO_BUFFER
            return
        if self._conn_lost or self._writing:
            return
        if len(buf) == 1:  # the common case, inlined: one send, all taken
            try:
                n = self._sock.send(buf[0], flags)  # type: ignore[union-attr]
            except (BlockingIOError, InterruptedError):
                n = 0
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal write error on socket transport")
                return
            loop = self._loop
            loop._st_writes += 1  # type: ignore[union-attr]  # (and one iovec: see stats())
            loop._st_bytes_out += n  # type: ignore[union-attr]
            if n == self._bufsize:
                self._buffer = buf = _NO_BUFFER
                self._bufsize = 0
            elif n:
                buf[0] = memoryview(buf[0])[n:]
                self._bufsize -= n
        else:
            self._send_buffered()
            buf = self._buffer
            if not buf:
                self._buffer = _NO_BUFFER
        if buf:
            if not self._conn_lost:
                self._writing = True
                self._loop._add_io(self._sock_fd, False, self._on_writable)  # type: ignore[union-attr]
            if self._bufsize > self._high_water:
                self._pause_protocol()
        elif self._protocol_paused or self._empty_waiter or self._closing or self._eof:
            self._drained()

    def _on_writable(self) -> None:
        if self._conn_lost:
            return
        waiter = self._write_waiter
        if waiter is not None and not self._buffer:
            self._write_waiter = None
            if not waiter.done():
                waiter.set_result(None)
            return
        self._send_buffered()
        if self._conn_lost:
            return
        if not self._buffer:
            self._buffer = _NO_BUFFER
            self._writing = False
            if self._write_waiter is None:
                self._loop._remove_writer(self._sock_fd)  # type: ignore[union-attr]
            self._drained()
        elif self._protocol_paused and self._bufsize <= self._low_water:
            self._resume_protocol()

    def _drained(self) -> None:
        """The buffer just became empty."""
        if self._protocol_paused:
            self._resume_protocol()
            if self._buffer:
                return  # resume_writing() wrote more: that flush finishes the job
        if self._empty_waiter is not None:
            w, self._empty_waiter = self._empty_waiter, None
            if not w.done():
                w.set_result(None)
        if self._closing:
            self._conn_lost += 1
            self._loop.call_soon(self._call_connection_lost, None)  # type: ignore[union-attr]
        elif self._eof:
            try:
                self._sock.shutdown(socket.SHUT_WR)  # type: ignore[union-attr]
            except OSError:
                pass

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        if self._closing or self._eof:
            return
        self._eof = True
        if not self._buffer:
            try:
                self._sock.shutdown(socket.SHUT_WR)  # type: ignore[union-attr]
            except OSError:
                pass

    def get_write_buffer_size(self) -> int:
        return self._bufsize

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (self._low_water, self._high_water)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = 64 * 1024 if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high_water = high
        self._low_water = low
        if self._bufsize > high:
            self._pause_protocol()

    def _pause_protocol(self) -> None:
        if self._protocol_paused:
            return
        self._protocol_paused = True
        try:
            self._protocol.pause_writing()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._loop.call_exception_handler(  # type: ignore[union-attr]
                {
                    "message": "protocol.pause_writing() failed",
                    "exception": exc,
                    "transport": self,
                    "protocol": self._protocol,
                }
            )

    def _resume_protocol(self) -> None:
        if not self._protocol_paused or self._bufsize > self._low_water:
            return
        self._protocol_paused = False
        try:
            self._protocol.resume_writing()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._loop.call_exception_handler(  # type: ignore[union-attr]
                {
                    "message": "protocol.resume_writing() failed",
                    "exception": exc,
                    "transport": self,
                    "protocol": self._protocol,
                }
            )

    # ----------------------------------------------------------------- closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._loop._remove_reader(self._sock_fd)  # type: ignore[union-attr]
        if not self._buffer:
            self._conn_lost += 1
            self._fail_waiters()
            self._loop._remove_writer(self._sock_fd)  # type: ignore[union-attr]
            self._loop.call_soon(self._call_connection_lost, None)  # type: ignore[union-attr]

    def abort(self) -> None:
        if self._corked and not self._writing and not self._conn_lost:
            # Writes of this loop turn were never tried (corked until its end): stock asyncio
            # and uvloop try them inside write(), so what the kernel takes now goes out before
            # the close, as it would there (e.g. the part of a response sent before an abort).
            self._send_buffered()
        self._force_close(None)

    def _fatal_error(self, exc: BaseException, message: str = "Fatal error on transport") -> None:
        if isinstance(exc, OSError):
            if self._loop.get_debug():  # type: ignore[union-attr]
                logger.debug("%r: %s", self, message, exc_info=True)
        else:
            self._loop.call_exception_handler(  # type: ignore[union-attr]
                {
                    "message": message,
                    "exception": exc,
                    "transport": self,
                    "protocol": self._protocol,
                }
            )
        self._force_close(exc)

    def _force_close(self, exc: BaseException | None) -> None:
        if self._conn_lost:
            return
        loop = self._loop
        if self._buffer:
            self._buffer = _NO_BUFFER
            self._bufsize = 0
        if self._writing or self._write_waiter is not None:
            self._writing = False
            loop._remove_writer(self._sock_fd)  # type: ignore[union-attr]
        self._fail_waiters()
        if not self._closing:
            self._closing = True
            loop._remove_reader(self._sock_fd)  # type: ignore[union-attr]
        self._conn_lost += 1
        loop.call_soon(self._call_connection_lost, exc)  # type: ignore[union-attr]

    def _fail_waiters(self) -> None:
        """Wake a sendfile/splice in progress with ConnectionResetError."""
        for w in (self._write_waiter, self._empty_waiter):
            if w is not None and not w.done():
                w.set_exception(ConnectionResetError("Connection lost"))
                w.exception()  # retrieved here: the sender learns it from its own await
        self._write_waiter = self._empty_waiter = None

    def _call_connection_lost(self, exc: BaseException | None) -> None:
        if self._loop is None:
            return  # called already (as asyncio's own transports, it may be scheduled twice)
        try:
            if self._protocol_connected:
                self._protocol.connection_lost(exc)
        finally:
            loop = self._loop
            if loop is not None:
                if loop._sockets.get(self._sock_fd) is self:
                    del loop._sockets[self._sock_fd]
                if not loop.is_closed():
                    # a writer may still be registered if close() raced a sendfile
                    loop._remove_writer(self._sock_fd)
            if self._sock is not None:
                self._sock.close()
            self._sock = None
            self._protocol = None  # type: ignore[assignment]
            self._loop = None
            server = self._server
            if server is not None:
                self._server = None
                if loop is not None:
                    loop._server_detach(server, self)

    def _release_on_loop_close(self) -> None:
        """The loop is closing under us: free the socket without calling the protocol."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._closing = True
        self._conn_lost += 1
        self._buffer = _NO_BUFFER
        self._bufsize = 0
        loop = self._loop
        if loop is not None and loop._sockets.get(self._sock_fd) is self:
            del loop._sockets[self._sock_fd]

    def __del__(self, _warn: Any = warnings.warn) -> None:
        if self._sock is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            self._sock.close()
