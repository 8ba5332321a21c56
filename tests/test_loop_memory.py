"""What the small-idle-transport work must not change: extra info, per-transport contexts, the
"fd is used by a transport" check. Every loop runs these (netpoll with both pollers, uvloop,
asyncio); the sharing of equal address objects is checked on netpoll only (it is how netpoll
saves memory, not a promise of the asyncio API)."""

from __future__ import annotations

import asyncio
import contextvars
import socket
from typing import Any

import pytest
from helpers import Recorder, connect, is_netpoll

pytestmark = pytest.mark.pollers

_seen: contextvars.ContextVar[str] = contextvars.ContextVar("seen", default="")


class Accepted(Recorder):
    """Records, per read, the context variable's value before setting it."""

    def __init__(self, accepted: asyncio.Queue[Accepted]) -> None:
        super().__init__()
        self.accepted = accepted
        self.values: list[str] = []

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self.accepted.put_nowait(self)

    def data_received(self, data: bytes) -> None:
        self.values.append(_seen.get())
        _seen.set(data.decode())
        super().data_received(data)


async def test_accepted_extra_info_before_and_after_close() -> None:
    loop = asyncio.get_running_loop()
    accepted: asyncio.Queue[Accepted] = asyncio.Queue()
    server = await loop.create_server(lambda: Accepted(accepted), "127.0.0.1", 0)
    addr = server.sockets[0].getsockname()
    clients = []
    protos = []
    for _ in range(5):
        c = socket.create_connection(addr)
        clients.append(c)
        protos.append(await asyncio.wait_for(accepted.get(), 10))
    for c, p in zip(clients, protos, strict=True):
        t = p.transport
        assert t is not None
        assert t.get_extra_info("sockname") == addr
        assert t.get_extra_info("peername") == c.getsockname()
        sock = t.get_extra_info("socket")
        assert sock is t.get_extra_info("socket")
        assert sock.getpeername() == c.getsockname()
        assert t.get_extra_info("nonesuch", 42) == 42
    if is_netpoll(loop):  # equal addresses are one shared object
        first = protos[0].transport
        assert first is not None
        for p in protos[1:]:
            assert p.transport is not None
            assert p.transport.get_extra_info("sockname") is first.get_extra_info("sockname")
            peer = p.transport.get_extra_info("peername")
            assert peer[0] is first.get_extra_info("peername")[0]
    for c, p in zip(clients, protos, strict=True):
        assert p.transport is not None
        p.transport.close()
        await asyncio.wait_for(p.lost, 10)
        assert p.transport.get_extra_info("sockname") == addr
        assert p.transport.get_extra_info("peername") == c.getsockname()
        c.close()
    server.close()
    await server.wait_closed()


@pytest.mark.asyncio(loop_factories=["netpoll", "netpoll-poll", "asyncio"])
async def test_each_transport_reads_in_its_own_context() -> None:
    """A context variable set while handling one connection's bytes is still set for that
    connection's next bytes, and never seen by another connection. (Not uvloop: its accepted
    transports share one context, the server's.)"""
    loop = asyncio.get_running_loop()
    accepted: asyncio.Queue[Accepted] = asyncio.Queue()
    server = await loop.create_server(lambda: Accepted(accepted), "127.0.0.1", 0)
    addr = server.sockets[0].getsockname()
    a = socket.create_connection(addr)
    pa = await asyncio.wait_for(accepted.get(), 10)
    b = socket.create_connection(addr)
    pb = await asyncio.wait_for(accepted.get(), 10)
    for sock, proto, word in ((a, pa, b"a1"), (b, pb, b"b1"), (a, pa, b"a2"), (b, pb, b"b2")):
        proto.got_data.clear()
        sock.sendall(word)
        await asyncio.wait_for(proto.got_data.wait(), 10)
    assert pa.values == ["", "a1"]
    assert pb.values == ["", "b1"]
    assert _seen.get() == ""
    for sock, proto in ((a, pa), (b, pb)):
        sock.close()
        await asyncio.wait_for(proto.lost, 10)
    server.close()
    await server.wait_closed()


async def test_fd_of_an_open_transport_refuses_add_reader() -> None:
    loop = asyncio.get_running_loop()
    transport, proto, peer = await connect(Recorder)
    fd = transport.get_extra_info("socket").fileno()
    with pytest.raises(RuntimeError):
        loop.add_reader(fd, lambda: None)
    transport.pause_reading()
    transport.resume_reading()  # the reader registration comes and goes; data still flows
    peer.sendall(b"x")
    await asyncio.wait_for(proto.got_data.wait(), 10)
    transport.close()
    await asyncio.wait_for(proto.lost, 10)
    peer.close()
