"""Transport edge cases that every loop must get right: partial writes and flow control, corked
writes beyond IOV_MAX, ``writelines`` with memoryviews, peer resets, EOF and half-close,
pause/resume reading, ``BufferedProtocol``, and a closed fd number reused by a new socket.

Each test runs on netpoll (epoll and poll backends), uvloop and stock asyncio (see conftest.py).
The far end of every connection is a blocking socket driven from a worker thread
(``tests/helpers``), so it never depends on the loop under test.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable

import pytest
from helpers import (
    Recorder,
    connect,
    digest,
    pattern,
    raw_pair,
    recv_exactly,
    recv_until_eof,
    warm_up,
)

pytestmark = pytest.mark.pollers

MiB = 1 << 20


async def test_large_write_partial_writes_and_flow_control(fd_count: Callable[[], int]) -> None:
    await warm_up()
    before = fd_count()
    transport, proto, peer = await connect(Recorder, peer_rcvbuf=64 * 1024)
    transport.set_write_buffer_limits(high=256 * 1024, low=64 * 1024)
    assert transport.get_write_buffer_limits() == (64 * 1024, 256 * 1024)
    payload = pattern(16 * MiB)

    transport.write(payload)
    # The kernel cannot take 16 MiB at once: the rest is buffered and the protocol paused now.
    size = transport.get_write_buffer_size()
    assert 0 < size <= len(payload)
    assert proto.calls[-1] == "pause_writing"
    assert proto.paused.is_set() and not proto.resumed.is_set()

    got = await asyncio.to_thread(recv_exactly, peer, len(payload))
    await asyncio.wait_for(proto.resumed.wait(), 30)
    assert proto.buffer_at_resume is not None and proto.buffer_at_resume <= 64 * 1024
    assert proto.calls.count("pause_writing") == proto.calls.count("resume_writing")
    assert digest(got) == digest(payload)
    assert transport.get_write_buffer_size() == 0

    transport.close()
    assert await asyncio.wait_for(proto.lost, 10) is None
    assert recv_until_eof(peer) == b""
    peer.close()
    assert fd_count() == before


async def test_more_writes_than_iov_max_in_one_turn() -> None:
    transport, proto, peer = await connect(Recorder)
    chunks = [b"%05d," % i for i in range(3000)]  # > IOV_MAX (1024 on Linux)
    for c in chunks:  # all in one loop turn: corked into sendmsg calls of <= IOV_MAX buffers
        transport.write(c)
    views = [memoryview(bytes(c)) for c in reversed(chunks)]
    transport.writelines(views)
    expected = b"".join(chunks) + b"".join(reversed(chunks))
    got = await asyncio.to_thread(recv_exactly, peer, len(expected))
    assert got == expected
    transport.close()
    await proto.lost
    peer.close()


async def test_writelines_with_memoryviews() -> None:
    transport, proto, peer = await connect(Recorder)
    backing = bytearray(pattern(300_000, seed=1))
    view = memoryview(backing)
    parts: list[bytes | bytearray | memoryview] = [
        view[:10],
        b"",
        view[10:10],  # empty view
        view[10:200_000],
        bytearray(b"-middle-"),
        memoryview(b"constant"),
        view[200_000:],
    ]
    expected = b"".join(bytes(p) for p in parts)
    transport.writelines(parts)
    transport.writelines([])  # no-op
    got = await asyncio.to_thread(recv_exactly, peer, len(expected))
    assert got == expected
    transport.close()
    await proto.lost
    peer.close()


async def test_peer_reset_during_write_only_affects_that_connection() -> None:
    victim_t, victim, victim_peer = await connect(Recorder, peer_rcvbuf=32 * 1024)
    other_t, other, other_peer = await connect(lambda: Recorder(echo=True))
    victim_t.write(pattern(8 * MiB))
    assert victim.paused.is_set()  # a write is in progress (kernel buffers are full)

    victim_peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    victim_peer.close()  # RST

    exc = await asyncio.wait_for(victim.lost, 10)
    assert isinstance(exc, OSError), exc
    assert victim.calls.count("connection_lost") == 1
    assert victim_t.is_closing()
    if "uvloop" not in type(asyncio.get_running_loop()).__module__:  # uvloop raises instead
        victim_t.write(b"after reset")  # asyncio: ignored (a warning after a few), no raise

    other_peer.sendall(b"still alive")
    assert await asyncio.to_thread(recv_exactly, other_peer, 11) == b"still alive"
    assert not other.lost.done()
    other_t.close()
    assert await other.lost is None
    other_peer.close()


async def test_eof_received_true_keeps_writing_possible() -> None:
    transport, proto, peer = await connect(lambda: Recorder(eof_result=True))
    peer.sendall(b"request")
    peer.shutdown(socket.SHUT_WR)
    await asyncio.wait_for(proto.eof, 10)
    assert bytes(proto.data) == b"request"
    assert not transport.is_closing()
    assert transport.can_write_eof()
    transport.write(b"answer after eof")
    transport.write_eof()
    assert await asyncio.to_thread(recv_until_eof, peer) == b"answer after eof"
    transport.close()
    assert await asyncio.wait_for(proto.lost, 10) is None
    assert proto.calls == ["connection_made", "data_received", "eof_received", "connection_lost"]
    peer.close()


async def test_abort_after_a_write_in_the_same_turn_sends_what_the_kernel_takes() -> None:
    """abort() drops what is still buffered, but a write made just before it, in the same
    turn, goes out as on stock asyncio (which tries it inside write()): netpoll corks writes
    until the end of the turn and must not lose them to the abort."""
    transport, proto, peer = await connect(Recorder)
    transport.write(b"partial ")
    transport.writelines([b"answer", b"!"])
    transport.abort()
    assert await asyncio.wait_for(proto.lost, 10) is None
    got = bytearray()
    try:
        got += await asyncio.to_thread(recv_until_eof, peer)
    except ConnectionResetError:
        pass
    assert bytes(got) == b"partial answer!"
    peer.close()


async def test_eof_received_false_closes_transport() -> None:
    _, proto, peer = await connect(lambda: Recorder(eof_result=None))
    peer.shutdown(socket.SHUT_WR)
    assert await asyncio.wait_for(proto.lost, 10) is None
    assert proto.calls == ["connection_made", "eof_received", "connection_lost"]
    assert await asyncio.to_thread(recv_until_eof, peer) == b""
    peer.close()


async def test_write_eof_half_close_then_keep_reading() -> None:
    transport, proto, peer = await connect(lambda: Recorder(eof_result=None))
    big = pattern(4 * MiB, seed=2)
    transport.write(big)
    transport.write_eof()  # with data still buffered: EOF goes after it
    assert transport.is_closing() is False
    with pytest.raises(RuntimeError):
        transport.write(b"x")  # asyncio: "Cannot call write() after write_eof()"
    got = await asyncio.to_thread(recv_until_eof, peer)
    assert digest(got) == digest(big)
    peer.sendall(b"peer keeps talking")  # our read side is still open
    await asyncio.wait_for(proto.got_data.wait(), 10)
    while len(proto.data) < 18:
        proto.got_data.clear()
        await asyncio.wait_for(proto.got_data.wait(), 10)
    assert bytes(proto.data) == b"peer keeps talking"
    peer.close()
    assert await asyncio.wait_for(proto.lost, 10) is None


async def test_pause_and_resume_reading() -> None:
    paused_t, paused, paused_peer = await connect(Recorder)
    probe_t, probe, probe_peer = await connect(Recorder)
    assert paused_t.is_reading()
    paused_t.pause_reading()
    paused_t.pause_reading()  # idempotent
    assert not paused_t.is_reading()

    paused_peer.sendall(b"held back")
    paused_peer.shutdown(socket.SHUT_WR)
    probe_peer.sendall(b"probe")  # sent after: any poll that sees it also sees the first
    await asyncio.wait_for(probe.got_data.wait(), 10)
    for _ in range(5):  # a few more loop turns for a late dispatch to show up
        await asyncio.sleep(0)
    assert paused.calls == ["connection_made"]

    paused_t.resume_reading()
    assert paused_t.is_reading()
    await asyncio.wait_for(paused.eof, 10)
    assert bytes(paused.data) == b"held back"
    assert await asyncio.wait_for(paused.lost, 10) is None
    probe_t.close()
    await probe.lost
    paused_peer.close()
    probe_peer.close()


class SmallBuffers(asyncio.BufferedProtocol):
    """Hands out buffers of a fixed size; checks the buffer_updated contract."""

    def __init__(self, size: int) -> None:
        loop = asyncio.get_running_loop()
        self.size = size
        self.buf = bytearray(size)
        self.data = bytearray()
        self.hints: set[int] = set()
        self.updates = 0
        self.lost: asyncio.Future[BaseException | None] = loop.create_future()
        self.eof: asyncio.Future[None] = loop.create_future()

    def __repr__(self) -> str:
        return f"<SmallBuffers size={self.size} data={len(self.data)} updates={self.updates}>"

    def get_buffer(self, sizehint: int) -> memoryview:
        self.hints.add(sizehint)
        return memoryview(self.buf)

    def buffer_updated(self, nbytes: int) -> None:
        assert 0 < nbytes <= self.size
        self.updates += 1
        self.data += self.buf[:nbytes]

    def eof_received(self) -> bool | None:
        self.eof.set_result(None)
        return None

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.set_result(exc)


@pytest.mark.parametrize(("size", "total"), [(7, 100_000), (64 * 1024, 8 * MiB)])
async def test_buffered_protocol_sizes_and_large_transfer(size: int, total: int) -> None:
    _, proto, peer = await connect(lambda: SmallBuffers(size))
    payload = pattern(total, seed=3)
    await asyncio.to_thread(peer.sendall, payload)
    peer.shutdown(socket.SHUT_WR)
    await asyncio.wait_for(proto.eof, 30)
    assert digest(proto.data) == digest(payload)
    assert proto.updates >= total // size
    assert all(h == -1 or h >= 0 for h in proto.hints)  # -1 means "no hint" (asyncio, uvloop)
    assert await asyncio.wait_for(proto.lost, 10) is None
    peer.close()


async def test_buffered_protocol_on_server_transport() -> None:
    loop = asyncio.get_running_loop()
    protos: list[SmallBuffers] = []

    def factory() -> SmallBuffers:
        protos.append(SmallBuffers(4096))
        return protos[-1]

    server = await loop.create_server(factory, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    payload = pattern(MiB, seed=4)

    def client() -> None:
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(payload)

    await asyncio.to_thread(client)
    while not protos:  # connection_made may come a turn after the client finished
        await asyncio.sleep(0)
    await asyncio.wait_for(protos[0].lost, 10)
    assert digest(protos[0].data) == digest(payload)
    server.close()
    await server.wait_closed()


def _grab_fd(target: int, limit: int = 256) -> socket.socket | None:
    """Allocate sockets until one gets fd number ``target``; close the others."""
    extra: list[socket.socket] = []
    try:
        for _ in range(limit):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            if s.fileno() == target:
                return s
            extra.append(s)
            if s.fileno() > target + limit:
                break
        return None
    finally:
        for s in extra:
            s.close()


async def test_closed_fd_number_reused_by_new_socket() -> None:
    loop = asyncio.get_running_loop()
    old_t, old, old_peer = await connect(Recorder)
    fd = old_t.get_extra_info("socket").fileno()
    old_t.close()
    assert await asyncio.wait_for(old.lost, 10) is None
    await asyncio.sleep(0)  # asyncio closes the socket right after connection_lost returns
    old_peer.sendall(b"to the old connection")  # must never reach the old protocol

    new = _grab_fd(fd)
    assert new is not None, f"fd {fd} was not freed"
    with socket.socket() as ls:
        ls.bind(("127.0.0.1", 0))
        ls.listen(1)
        new.connect(ls.getsockname())
        new_peer, _ = ls.accept()
    new.setblocking(False)
    new_t, new_proto = await loop.create_connection(lambda: Recorder(echo=True), sock=new)
    assert new_t.get_extra_info("socket").fileno() == fd
    new_peer.settimeout(30)
    new_peer.sendall(b"to the new one")
    assert await asyncio.to_thread(recv_exactly, new_peer, 14) == b"to the new one"
    assert old.calls == ["connection_made", "connection_lost"]
    new_t.close()
    await new_proto.lost
    new_peer.close()
    old_peer.close()


async def test_close_other_transport_with_pending_events_in_same_turn() -> None:
    """Two connections are readable in the same poll; whichever is dispatched first closes the
    other and immediately opens a socket (on netpoll it may reuse the closed fd number in the
    same turn). The closed one must see no callback but one connection_lost."""
    loop = asyncio.get_running_loop()
    a_t, a, a_peer = await connect(Recorder)
    b_t, b, b_peer = await connect(Recorder)
    pairs = {a: (a_t, b_t, b), b: (b_t, a_t, a)}
    closed: list[Recorder] = []
    fresh: list[tuple[socket.socket, socket.socket]] = []
    done = asyncio.Event()

    def first(proto: Recorder) -> Callable[[bytes], None]:
        def on_data(_: bytes) -> None:
            if closed:
                return
            _, other_t, other = pairs[proto]
            other_t.close()
            closed.append(other)
            other.calls.append("closed-here")
            fresh.append(raw_pair())  # new fds allocated in the same turn
            done.set()

        return on_data

    a.on_data = first(a)
    b.on_data = first(b)

    def send_both() -> None:  # both arrive before the loop's next poll
        a_peer.sendall(b"a")
        b_peer.sendall(b"b")

    loop.call_soon(send_both)
    await asyncio.wait_for(done.wait(), 10)
    victim = closed[0]
    await asyncio.wait_for(victim.lost, 10)
    ours, peer = fresh[0]
    t, p = await loop.connect_accepted_socket(lambda: Recorder(echo=True), sock=ours)
    peer.sendall(b"fresh")
    assert await asyncio.to_thread(recv_exactly, peer, 5) == b"fresh"
    cut = victim.calls.index("closed-here")
    assert victim.calls[cut + 1 :] == ["connection_lost"]
    survivor = a if victim is b else b
    assert not survivor.lost.done()
    for tr in (t, a_t, b_t):
        tr.close()
    await p.lost
    await survivor.lost
    for s in (peer, a_peer, b_peer):
        s.close()
