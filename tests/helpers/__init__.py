"""Shared helpers for the loop edge-case tests (``tests/test_loop_*.py``).

Theory of operation: the code under test is always the *loop's* transport (created with
``create_connection``/``create_server``/``connect_accepted_socket``); the other end of the TCP
connection is a plain blocking ``socket`` driven from a worker thread (``asyncio.to_thread``), so
the peer never depends on the loop being tested. :class:`Recorder` is a protocol that logs every
callback in order and exposes futures/events to wait on, which replaces ``sleep()`` ordering with
explicit synchronisation.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import socket
from collections.abc import Callable
from typing import Any

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def loop_factories(all_pollers: bool = True) -> dict[str, LoopFactory]:
    """The loops a synchronous test can create by hand (same names as ``conftest.py``)."""
    out: dict[str, LoopFactory] = {}
    try:
        import netpoll

        out["netpoll"] = netpoll.new_event_loop
        if all_pollers:
            out["netpoll-poll"] = functools.partial(netpoll.Loop, poller="poll")
    except (ImportError, AttributeError):  # pragma: no cover - while netpoll is being built
        pass
    try:
        import uvloop

        out["uvloop"] = uvloop.new_event_loop
    except ImportError:  # pragma: no cover
        pass
    out["asyncio"] = asyncio.SelectorEventLoop
    return out


async def until(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    """Poll ``condition`` every 10 ms until it holds or ``timeout`` passes (the caller then
    asserts what it expects, so a timeout fails there with the state it saw)."""
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)


def is_netpoll(loop: asyncio.AbstractEventLoop) -> bool:
    return type(loop).__module__.split(".")[0] == "netpoll"


def pattern(n: int, seed: int = 0) -> bytes:
    """``n`` bytes that are not periodic at any small stride (so reordering is detected)."""
    out = bytearray()
    block = 0
    while len(out) < n:
        out += hashlib.sha256(b"%d:%d" % (seed, block)).digest()
        block += 1
    return bytes(out[:n])


def digest(data: bytes | bytearray | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def recv_exactly(sock: socket.socket, n: int, chunk: int = 1 << 16) -> bytes:
    """Blocking: read exactly ``n`` bytes (raises EOFError if the peer closes first)."""
    buf = bytearray()
    while len(buf) < n:
        got = sock.recv(min(chunk, n - len(buf)))
        if not got:
            raise EOFError(f"EOF after {len(buf)} of {n} bytes")
        buf += got
    return bytes(buf)


def recv_until_eof(sock: socket.socket, chunk: int = 1 << 16) -> bytes:
    buf = bytearray()
    while True:
        got = sock.recv(chunk)
        if not got:
            return bytes(buf)
        buf += got


def listener() -> socket.socket:
    """A blocking TCP listener on 127.0.0.1, port 0."""
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.bind(("127.0.0.1", 0))
    ls.listen(128)
    return ls


def raw_pair(peer_rcvbuf: int | None = None) -> tuple[socket.socket, socket.socket]:
    """A connected loopback pair ``(ours, peer)``; ``ours`` is non-blocking, ``peer`` blocking."""
    with listener() as ls:
        peer = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if peer_rcvbuf is not None:
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, peer_rcvbuf)
        peer.connect(ls.getsockname())
        ours, _ = ls.accept()
    ours.setblocking(False)
    peer.settimeout(30)
    return ours, peer


class Recorder(asyncio.Protocol):
    """Logs every callback; futures and events let a test wait for a callback explicitly."""

    def __init__(self, eof_result: bool | None = None, echo: bool = False) -> None:
        loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.calls: list[str] = []  # callback names, in call order
        self.data = bytearray()  # everything passed to data_received, concatenated
        self.eof_result = eof_result  # what eof_received returns
        self.echo = echo  # write back whatever arrives
        self.made: asyncio.Future[None] = loop.create_future()
        self.lost: asyncio.Future[BaseException | None] = loop.create_future()
        self.eof: asyncio.Future[None] = loop.create_future()
        self.paused = asyncio.Event()
        self.resumed = asyncio.Event()
        self.got_data = asyncio.Event()
        self.buffer_at_resume: int | None = None
        self.on_data: Callable[[bytes], None] | None = None

    def __repr__(self) -> str:
        return f"<Recorder calls={len(self.calls)} data={len(self.data)} lost={self.lost.done()}>"

    def connection_made(self, transport: Any) -> None:
        self.calls.append("connection_made")
        self.transport = transport
        self.made.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.calls.append("data_received")
        self.data += data
        self.got_data.set()
        if self.echo and self.transport is not None:
            self.transport.write(data)
        if self.on_data is not None:
            self.on_data(data)

    def eof_received(self) -> bool | None:
        self.calls.append("eof_received")
        self.eof.set_result(None)
        return self.eof_result

    def pause_writing(self) -> None:
        self.calls.append("pause_writing")
        self.paused.set()

    def resume_writing(self) -> None:
        self.calls.append("resume_writing")
        assert self.transport is not None
        self.buffer_at_resume = self.transport.get_write_buffer_size()
        self.resumed.set()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.calls.append("connection_lost")
        if self.lost.done():  # a second call is a bug the tests look for
            self.calls.append("connection_lost-again")
            return
        self.lost.set_result(exc)


async def connect(
    factory: Callable[[], asyncio.BaseProtocol], peer_rcvbuf: int | None = None
) -> tuple[asyncio.Transport, Any, socket.socket]:
    """A loop transport over a fresh loopback connection, and the blocking peer socket."""
    loop = asyncio.get_running_loop()
    ours, peer = raw_pair(peer_rcvbuf)
    transport, protocol = await loop.connect_accepted_socket(factory, sock=ours)
    return transport, protocol, peer


async def warm_up() -> None:
    """Open and close one connection and one worker thread: some loops (uvloop) allocate an
    internal fd lazily on first use, which would otherwise look like a leak."""
    transport, proto, peer = await connect(Recorder)
    transport.close()
    await proto.lost
    peer.close()
    await asyncio.to_thread(int)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))
