"""Zero-copy bodies: ``loop.sendfile`` / ``netpoll.sendfile`` with offset and count, and
``netpoll.splice`` from a pipe and from a subprocess's stdout.

``loop.sendfile`` runs on every loop that has it (uvloop raises NotImplementedError: skipped);
``netpoll.sendfile``/``netpoll.splice`` run on every loop too (they fall back to read + write off
netpoll). On netpoll the stats must show the native path was taken. File position semantics
follow the asyncio docs: after ``loop.sendfile`` the file position is ``offset + bytes sent``.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import Recorder, connect, digest, is_netpoll, pattern, recv_exactly, recv_until_eof

pytestmark = pytest.mark.pollers

SIZE = 3 * (1 << 20) + 12345


@pytest.fixture
def data_file() -> Iterator[tuple[Path, bytes]]:
    payload = pattern(SIZE, seed=7)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "body.bin"
        path.write_bytes(payload)
        yield path, payload


def stat(stats: dict[str, Any], *names: str) -> int:
    """A counter under its documented name or the name the loop uses (``sendfile_calls``/``sendfile``)."""
    for name in names:
        if name in stats:
            return int(stats[name])
    raise KeyError(names)


def skip_unless_loop_sendfile(loop: asyncio.AbstractEventLoop) -> None:
    if type(loop).sendfile is asyncio.AbstractEventLoop.sendfile:  # uvloop: NotImplementedError
        pytest.skip(f"{type(loop).__name__} has no loop.sendfile")


def unsent(sock: Any) -> int:
    """Bytes queued in a TCP socket and not sent yet (Linux ``SIOCOUTQNSD``; 0 elsewhere)."""
    if not sys.platform.startswith("linux"):
        return 0
    out = fcntl.ioctl(sock.fileno(), 0x894B, b"\0" * 4)  # SIOCOUTQNSD
    return int(struct.unpack("i", out)[0])


def np_stats() -> dict[str, Any]:
    return asyncio.get_running_loop().stats()  # type: ignore[attr-defined,no-any-return]


@pytest.mark.parametrize(
    ("offset", "count"), [(0, None), (1000, 300_000), (SIZE - 10, None), (5, SIZE - 5), (0, 1)]
)
async def test_loop_sendfile_offset_count(
    data_file: tuple[Path, bytes], offset: int, count: int | None
) -> None:
    loop = asyncio.get_running_loop()
    path, payload = data_file
    transport, proto, peer = await connect(Recorder)
    transport.write(b"head:")  # bytes written before sendfile go first
    expected = b"head:" + payload[offset : None if count is None else offset + count] + b":tail"
    skip_unless_loop_sendfile(loop)
    before = np_stats() if is_netpoll(loop) else None
    reader = asyncio.ensure_future(asyncio.to_thread(recv_exactly, peer, len(expected)))
    with path.open("rb") as f:
        sent = await asyncio.wait_for(loop.sendfile(transport, f, offset, count), 30)
        assert sent == len(expected) - 10
        assert f.tell() == offset + sent  # asyncio docs: position is updated
    transport.write(b":tail")
    got = await asyncio.wait_for(reader, 30)
    assert digest(got) == digest(expected)
    if before is not None:
        after = np_stats()
        assert stat(after, "sendfile_calls", "sendfile") > stat(
            before, "sendfile_calls", "sendfile"
        )
    transport.close()
    assert await asyncio.wait_for(proto.lost, 10) is None
    peer.close()


async def test_loop_sendfile_invalid_arguments(data_file: tuple[Path, bytes]) -> None:
    loop = asyncio.get_running_loop()
    path, _ = data_file
    transport, proto, peer = await connect(Recorder)
    with path.open("rb") as f:
        cases: list[tuple[Any, Any, type[Exception]]] = [
            (-1, None, ValueError),
            (0, 0, ValueError),
            (0, -5, ValueError),
            (0, "10", TypeError),
        ]
        wrong: list[str] = []
        for offset, count, expected in cases:
            try:
                await loop.sendfile(transport, f, offset, count)
            except NotImplementedError:
                pytest.skip(f"{type(loop).__name__} has no loop.sendfile")
            except Exception as exc:
                if type(exc) is not expected:
                    wrong.append(f"({offset!r}, {count!r}) raised {exc!r}")
            else:
                wrong.append(f"({offset!r}, {count!r}) did not raise {expected.__name__}")
    transport.close()
    await proto.lost
    peer.close()
    assert not wrong, wrong


@pytest.mark.parametrize(("offset", "count"), [(0, None), (4097, 1 << 20)])
async def test_netpoll_sendfile_any_loop(
    data_file: tuple[Path, bytes], offset: int, count: int | None
) -> None:
    netpoll = pytest.importorskip("netpoll")
    loop = asyncio.get_running_loop()
    path, payload = data_file
    transport, proto, peer = await connect(Recorder)
    expected = payload[offset : None if count is None else offset + count]
    reader = asyncio.ensure_future(asyncio.to_thread(recv_exactly, peer, len(expected)))
    with path.open("rb") as f:
        sent = await asyncio.wait_for(netpoll.sendfile(transport, f, offset, count), 30)
    assert sent == len(expected)
    got = await asyncio.wait_for(reader, 30)
    assert digest(got) == digest(expected)
    transport.close()
    await asyncio.wait_for(proto.lost, 10)
    assert recv_until_eof(peer) == b""
    peer.close()
    del loop


async def test_sendfile_range_keeps_reading_and_the_file_position(
    data_file: tuple[Path, bytes],
) -> None:
    """netpoll's ``transport.sendfile_range``: the range arrives byte for byte, input that
    arrives meanwhile is delivered (reading is never paused), the fd's offset is untouched."""
    if not is_netpoll(asyncio.get_running_loop()):
        pytest.skip("a netpoll transport extension")
    path, payload = data_file
    transport, proto, peer = await connect(Recorder)
    # small buffers both ways: the body cannot all be in flight before the client reads
    transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 16)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
    offset, count = 12345, 2 * (1 << 20) + 7
    fd = os.open(path, os.O_RDONLY)
    try:
        sending = asyncio.ensure_future(transport.sendfile_range(fd, offset, count))
        peer.sendall(b"meanwhile")  # the client talks while the body is on its way
        while not proto.data.endswith(b"meanwhile"):
            proto.got_data.clear()
            await asyncio.wait_for(proto.got_data.wait(), 10)
        assert not sending.done() and transport.is_reading()
        reader = asyncio.ensure_future(asyncio.to_thread(recv_exactly, peer, count))
        assert await asyncio.wait_for(sending, 30) == count
        assert os.lseek(fd, 0, os.SEEK_CUR) == 0
        assert await transport.sendfile_range(fd, 0, 0) == 0
    finally:
        os.close(fd)
    got = await asyncio.wait_for(reader, 30)
    assert digest(got) == digest(payload[offset : offset + count])
    transport.close()
    await asyncio.wait_for(proto.lost, 10)
    peer.close()


async def test_head_written_before_a_sendfile_that_sends_nothing_still_arrives(
    data_file: tuple[Path, bytes],
) -> None:
    """What was written before a sendfile leaves with the file's first bytes on netpoll (held
    back with MSG_MORE); when the file yields nothing (empty, or a range past its end), those
    bytes must still be sent now (the kernel would hold them ~200 ms): nothing is left unsent
    in the socket once sendfile returns."""
    loop = asyncio.get_running_loop()
    skip_unless_loop_sendfile(loop)
    path, payload = data_file
    empty = path.with_name("empty.bin")
    empty.write_bytes(b"")
    transport, proto, peer = await connect(Recorder)
    ours = transport.get_extra_info("socket")
    peer.settimeout(5)
    try:
        transport.write(b"head-1;")
        with open(empty, "rb") as f:  # a count, so that the loop does try to send
            assert await loop.sendfile(transport, f, 0, 10) == 0
        assert unsent(ours) == 0
        assert await asyncio.to_thread(recv_exactly, peer, 7) == b"head-1;"
        transport.write(b"head-2;")
        reader = asyncio.ensure_future(asyncio.to_thread(recv_exactly, peer, 7 + SIZE - 10))
        with open(path, "rb") as f:
            assert await asyncio.wait_for(loop.sendfile(transport, f, 10), 30) == SIZE - 10
        got = await asyncio.wait_for(reader, 30)
        assert got[:7] == b"head-2;" and digest(got[7:]) == digest(payload[10:])
        if is_netpoll(loop):  # a range past the end of the file: nothing to send
            transport.write(b"head-3;")
            fd = os.open(path, os.O_RDONLY)
            send_range = transport.sendfile_range  # type: ignore[attr-defined]
            try:
                assert await send_range(fd, SIZE + 100, 50) == 0
            finally:
                os.close(fd)
            assert unsent(ours) == 0
            assert await asyncio.to_thread(recv_exactly, peer, 7) == b"head-3;"
    finally:
        transport.close()
        await asyncio.wait_for(proto.lost, 10)
        peer.close()


def _feed_pipe(fd: int, data: bytes) -> threading.Thread:
    def run() -> None:
        with os.fdopen(fd, "wb") as w:
            w.write(data)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


async def test_splice_from_pipe_until_eof() -> None:
    netpoll = pytest.importorskip("netpoll")
    loop = asyncio.get_running_loop()
    transport, proto, peer = await connect(Recorder)
    payload = pattern(2 * (1 << 20) + 17, seed=8)
    r, w = os.pipe()
    writer = _feed_pipe(w, payload)
    before = np_stats() if is_netpoll(loop) else None
    transport.write(b"<")
    reader = asyncio.ensure_future(asyncio.to_thread(recv_exactly, peer, len(payload) + 2))
    sent = await asyncio.wait_for(netpoll.splice(transport, r), 30)
    transport.write(b">")
    assert sent == len(payload)
    got = await asyncio.wait_for(reader, 30)
    assert digest(got) == digest(b"<" + payload + b">")
    writer.join(10)
    os.close(r)
    if before is not None and sys.platform == "linux":
        assert stat(np_stats(), "splice_calls", "splice") > stat(before, "splice_calls", "splice")
    transport.close()
    await proto.lost
    peer.close()


async def test_splice_with_count_leaves_the_rest_in_the_pipe() -> None:
    netpoll = pytest.importorskip("netpoll")
    transport, proto, peer = await connect(Recorder)
    r, w = os.pipe()
    os.write(w, b"0123456789" * 100)
    sent = await asyncio.wait_for(netpoll.splice(transport, r, 250), 10)
    assert sent == 250
    got = await asyncio.to_thread(recv_exactly, peer, 250)
    assert got == (b"0123456789" * 25)
    os.close(w)
    assert os.read(r, 2000) == (b"0123456789" * 100)[250:]
    os.close(r)
    transport.close()
    await proto.lost
    peer.close()


async def test_splice_from_subprocess_stdout() -> None:
    netpoll = pytest.importorskip("netpoll")
    transport, proto, peer = await connect(Recorder)
    n = 1 << 20
    code = (
        "import sys, hashlib\n"
        "out = bytearray(); i = 0\n"
        f"while len(out) < {n}:\n"
        "    out += hashlib.sha256(b'%d:%d' % (9, i)).digest(); i += 1\n"
        f"sys.stdout.buffer.write(out[:{n}])\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        reader = asyncio.ensure_future(asyncio.to_thread(recv_exactly, peer, n))
        sent = await asyncio.wait_for(netpoll.splice(transport, proc.stdout.fileno()), 30)
        assert sent == n
        got = await asyncio.wait_for(reader, 30)
        assert digest(got) == digest(pattern(n, seed=9))
    finally:
        assert await asyncio.to_thread(proc.wait, 10) == 0
        if proc.stdout is not None:
            proc.stdout.close()
    transport.close()
    await proto.lost
    peer.close()
