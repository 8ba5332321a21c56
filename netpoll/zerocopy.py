"""Zero-copy bodies: the small API the HTTP server uses on any loop.

``sendfile(transport, file, offset, count)`` sends a slice of a regular file. On netpoll socket
transports it is ``os.sendfile`` (Linux and BSD/macOS signatures are both handled by
``os.sendfile``'s positional form), one slice per loop turn; on other transports or loops it is
``loop.sendfile`` where the loop has it, else a read + write fallback (TLS, uvloop).

``splice(transport, pipe_fd, count)`` moves bytes from a pipe (a subprocess's stdout, a FIFO)
to the socket. On Linux with a netpoll socket transport it is ``os.splice``: the bytes never
enter user space. Elsewhere it reads the pipe and writes to the transport.

Both return the number of bytes sent and wait for the transport's buffer to drain first, so
they never reorder bytes written before them.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, BinaryIO

from .transport import HAS_SPLICE, SocketTransport

_CHUNK = 256 * 1024


async def _write_all(transport: asyncio.WriteTransport, chunks: Any) -> int:
    """Write an async iterator of chunks with flow control; return bytes written."""
    total = 0
    async for chunk in chunks:
        if transport.is_closing():
            raise ConnectionError("Connection closed by peer")
        transport.write(chunk)
        total += len(chunk)
        while transport.get_write_buffer_size() > transport.get_write_buffer_limits()[1]:
            await asyncio.sleep(0.001)  # no protocol hook on a foreign transport: poll gently
            if transport.is_closing():
                raise ConnectionError("Connection closed by peer")
    return total


async def _file_chunks(file: BinaryIO, offset: int, count: int | None) -> Any:
    loop = asyncio.get_running_loop()
    file.seek(offset)
    remaining = count
    while remaining is None or remaining > 0:
        n = _CHUNK if remaining is None else min(_CHUNK, remaining)
        data = await loop.run_in_executor(None, file.read, n)
        if not data:
            break
        if remaining is not None:
            remaining -= len(data)
        yield data


async def sendfile(
    transport: asyncio.WriteTransport, file: BinaryIO, offset: int = 0, count: int | None = None
) -> int:
    """Send ``count`` bytes (``None``: to the end) of ``file`` from ``offset``; return bytes sent."""
    loop = asyncio.get_running_loop()
    try:
        return await loop.sendfile(transport, file, offset, count)
    except NotImplementedError:  # loops without sendfile (uvloop)
        pass
    return await _write_all(transport, _file_chunks(file, offset, count))


async def _pipe_chunks(pipe_fd: int, count: int | None) -> Any:
    loop = asyncio.get_running_loop()
    remaining = count
    os.set_blocking(pipe_fd, False)
    while remaining is None or remaining > 0:
        n = _CHUNK if remaining is None else min(_CHUNK, remaining)
        try:
            data = os.read(pipe_fd, n)
        except BlockingIOError:
            fut = loop.create_future()
            loop.add_reader(pipe_fd, fut.set_result, None)
            try:
                await fut
            finally:
                loop.remove_reader(pipe_fd)
            continue
        if not data:
            break
        if remaining is not None:
            remaining -= len(data)
        yield data


async def splice(transport: asyncio.WriteTransport, pipe_fd: int, count: int | None = None) -> int:
    """Move bytes from pipe ``pipe_fd`` to ``transport`` until EOF or ``count``; return the count."""
    if HAS_SPLICE and isinstance(transport, SocketTransport) and not transport.is_closing():
        resume = transport.is_reading()
        transport.pause_reading()
        try:
            return await transport._splice(pipe_fd, count)
        finally:
            if resume:
                transport.resume_reading()
    return await _write_all(transport, _pipe_chunks(pipe_fd, count))
