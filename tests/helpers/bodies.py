"""Request bodies that break their framing, the size limit or the body timeout, and a raw
one-shot client: the cases the framework layers (native App, ASGI) must answer 400/413/408 like
the connection layer does, whatever the application does with the error it sees while reading
the body."""

from __future__ import annotations

import asyncio

LIMIT = 100  # max_body_size the servers under test are given
BODY_TIMEOUT = 0.5  # and body_timeout

_CHUNKED = b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
BROKEN_BODIES: dict[str, tuple[bytes, int, bytes]] = {
    # name: (request, status, a piece of the message); names in HALF_CLOSED: the client sends
    # its end of stream (FIN) right after the request
    "bad chunk size": (_CHUNKED + b"zz\r\nabc\r\n0\r\n\r\n", 400, b"chunk size"),
    "0x chunk size": (_CHUNKED + b"0x3\r\nabc\r\n0\r\n\r\n", 400, b"chunk size"),
    "chunk data without CRLF": (_CHUNKED + b"3\r\nabcXY0\r\n\r\n", 400, b"malformed"),
    "chunk size overflow": (_CHUNKED + b"FFFFFFFFFFFFFFFFF1\r\nabc\r\n", 400, b"overflow"),
    "bare LF after a chunk size": (_CHUNKED + b"3\nabc\n0\n\n", 400, b"CR"),
    "Content-Length in the trailer": (
        _CHUNKED + b"3\r\nabc\r\n0\r\nContent-Length: 5\r\n\r\n",
        400,
        b"Content-Length",
    ),
    "body stalls": (
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 50\r\n\r\n0123456789",
        408,
        b"timeout",
    ),
    "client half-closes mid-body": (
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 50\r\n\r\n0123456789",
        400,
        b"before the body was complete",
    ),
    "chunked body over the limit": (
        _CHUNKED + b"40\r\n" + b"x" * 64 + b"\r\n" + b"40\r\n" + b"y" * 64 + b"\r\n0\r\n\r\n",
        413,
        b"too large",
    ),
}


HALF_CLOSED = {"client half-closes mid-body"}


async def send_raw(
    url: str, data: bytes, timeout: float = 10.0, *, half_close: bool = False
) -> tuple[int, bytes, bytes]:
    """Send ``data`` on a fresh connection to ``url`` (then FIN if ``half_close``) and read
    until the server closes it; return (status, lower-case head, body)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(data)
        if half_close:
            writer.write_eof()
        raw = await asyncio.wait_for(reader.read(-1), timeout)  # to EOF: the server must close
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), head.lower(), body
