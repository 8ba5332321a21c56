"""Serialising HTTP/1.1 responses: heads from cached parts, chunk framing, error answers.

Theory of operation
-------------------
Responses: :func:`response_head` builds the status line and header block (``bytes``) from
cached parts (status lines, ``Date`` recomputed at most once a second, ``Server``) after
validating the handler's headers (CR, LF, NUL or a non-token name raise
:class:`~server.exchange.InvalidHeader` before anything exists to be sent). Bodies are passed
through as they are; chunked framing adds small ``bytes`` around them; a :class:`FileSlice`
stands for a file range so the I/O layer can ``sendfile`` it. Serialisation only ever calls
``len(chunk)``.
"""

from __future__ import annotations

import re
import time
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, BinaryIO

from .exchange import InvalidHeader, ResponseHeaders

__all__ = [
    "LAST_CHUNK",
    "FileSlice",
    "chunk_frame",
    "date_header",
    "declared_length",
    "error_response",
    "response_head",
    "server_line",
    "status_line",
]


class FileSlice:
    """Placeholder for ``count`` bytes of ``file`` from ``offset`` in a response buffer list."""

    __slots__ = ("count", "file", "offset")

    def __init__(self, file: BinaryIO, offset: int, count: int) -> None:
        self.file = file
        self.offset = offset
        self.count = count  # invariant: >= 0

    def __len__(self) -> int:
        return self.count

    def __repr__(self) -> str:
        return f"FileSlice({getattr(self.file, 'name', self.file)!r}, {self.offset}, {self.count})"


_status_lines: dict[int, bytes] = {}


def status_line(status: int) -> bytes:
    """``b"HTTP/1.1 200 OK\\r\\n"``, cached per status code."""
    line = _status_lines.get(status)
    if line is None:
        if not 100 <= status <= 999:
            raise InvalidHeader(f"invalid status code {status!r}")
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = ""
        line = f"HTTP/1.1 {status} {phrase}\r\n".encode("latin-1")
        _status_lines[status] = line
    return line


class _DateCache:
    """``date: <IMF-fixdate>\\r\\n`` recomputed at most once per second."""

    __slots__ = ("line", "second")

    def __init__(self) -> None:
        self.second = -1  # the integer second ``line`` was computed for
        self.line = b""

    def get(self, now: float | None = None) -> bytes:
        sec = int(time.time() if now is None else now)
        if sec != self.second:
            self.second = sec
            self.line = b"date: " + formatdate(sec, usegmt=True).encode("ascii") + b"\r\n"
        return self.line

    def __repr__(self) -> str:
        return f"<DateCache second={self.second}>"


_date = _DateCache()


def date_header(now: float | None = None) -> bytes:
    """The cached ``date`` header line (with CRLF)."""
    return _date.get(now)


_has_ctl = re.compile(rb"[\x00\r\n]").search
_is_token = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z").match
_SPECIAL = frozenset({b"content-length", b"transfer-encoding", b"connection", b"date", b"server"})
_server_lines: dict[str, bytes] = {}
_NO_BODY_STATUS = frozenset({204, 304})


def server_line(name: str) -> bytes:
    """Cached ``server: <name>\\r\\n`` line (empty when ``name`` is empty)."""
    line = _server_lines.get(name)
    if line is None:
        value = name.encode("latin-1")
        if _has_ctl(value):
            raise InvalidHeader("server header contains CR, LF or NUL")
        line = b"server: " + value + b"\r\n" if value else b""
        _server_lines[name] = line
    return line


_line_cache: dict[tuple[bytes, bytes], tuple[bytes, int]] = {}
_cl_lines = {n: b"content-length: %d\r\n" % n for n in range(1024)}
_SPECIAL_BITS = {
    b"content-length": 1,
    b"transfer-encoding": 2,
    b"connection": 4,
    b"date": 8,
    b"server": 16,
}


def _header_line(pair: tuple[bytes, bytes]) -> tuple[bytes, int]:
    """Validate one handler header; return its wire line and special-header bits (cached)."""
    name, value = pair
    if _has_ctl(value) or not _is_token(name):
        raise InvalidHeader(f"invalid response header {name!r}: {value!r}")
    bits = _SPECIAL_BITS.get(name.lower(), 0)
    if bits == 4 and value.lower() == b"close":
        bits |= 32
    out = (name + b": " + value + b"\r\n", bits)
    if len(value) <= 256 and type(pair) is tuple:
        if len(_line_cache) >= 4096:
            _line_cache.clear()
        _line_cache[pair] = out
    return out


def response_head(
    status: int,
    headers: ResponseHeaders,
    content_length: int | None,
    keep_alive: bool,
    http10: bool = False,
    server: bytes = b"",
    head_only: bool = False,
    date: bytes | None = None,
) -> tuple[bytes, bool, bool]:
    """Build a response head. Return ``(head, chunked, keep_alive)``.

    ``content_length=None`` means a streamed body: chunked on HTTP/1.1, close-delimited on 1.0
    (then ``keep_alive`` becomes False). Handler-supplied ``Connection``/``Date``/``Server``
    take precedence over the computed ones. The framing headers may be supplied too, but they
    must describe the body that is sent, or the connection would lose track of where the next
    response starts: a ``Content-Length`` must equal ``content_length`` (unless no body is sent:
    ``head_only``, 204, 304, 1xx); a ``Transfer-Encoding`` must end in ``chunked`` (then
    ``chunked`` is True: the caller frames the body, also a whole one) and comes with no
    ``Content-Length``; to an HTTP/1.0 client it is not sent at all. Raises
    :class:`InvalidHeader` for any of these, for CR, LF or NUL in any name or value, or a
    non-token name.

    Whole heads are cached per (status, length, keep-alive, version, server, headers) while the
    ``Date`` line stays the same (at most one second); unhashable headers and HEAD answers are
    not cached.
    """
    global _head_date
    key: tuple[Any, ...] | None = None
    if date is None:
        sec = int(time.time())  # _date.get(), inlined: once per response
        date = _date.line if sec == _date.second else _date.get(sec)
        if date is not _head_date:
            _heads.clear()
            _head_date = date
        if head_only:  # built each time: its framing is not checked like a GET's (rare)
            return _build_head(
                status, headers, content_length, keep_alive, http10, server, True, date
            )
        try:
            if type(headers) is tuple:  # (shared header tuples: hashed as one element)
                key = (status, content_length, keep_alive, http10, server, headers)
            else:  # (None: never equal to the key of a tuple, whatever the pairs are)
                key = (status, content_length, keep_alive, http10, server, None, *headers)
            hit = _heads.get(key)
        except TypeError:  # a list pair or a bytearray: not hashable
            key = hit = None
        if hit is not None:
            return hit
    out = _build_head(status, headers, content_length, keep_alive, http10, server, head_only, date)
    if key is not None and len(_heads) < _HEADS_MAX:
        _heads[key] = out
    return out


_heads: dict[tuple[Any, ...], tuple[bytes, bool, bool]] = {}  # see response_head
_HEADS_MAX = 512
_head_date = b""  # the Date line _heads was built with


def _build_head(
    status: int,
    headers: ResponseHeaders,
    content_length: int | None,
    keep_alive: bool,
    http10: bool,
    server: bytes,
    head_only: bool,
    date: bytes,
) -> tuple[bytes, bool, bool]:
    if status < 200:  # an interim status as the answer: the client would wait for another
        raise InvalidHeader(f"status {status} is not a final response")
    parts = [_status_lines.get(status) or status_line(status)]
    append = parts.append
    have = 0  # bit set: 1 content-length, 2 transfer-encoding, 4 connection, 8 date, 16 server
    framing: list[tuple[bytes, bytes]] = []  # the handler's Content-Length / Transfer-Encoding
    cache = _line_cache
    for pair in headers:
        try:
            hit = cache.get(pair)
        except TypeError:  # a list pair: not hashable
            hit = None
        if hit is None:
            hit = _header_line(pair)
        line, bits = hit
        if bits:
            if bits & 3:
                framing.append(pair)
                if bits & 2 and http10:
                    continue  # no chunked framing for an HTTP/1.0 client
            have |= bits
            if bits & 32:
                keep_alive = False
        append(line)
    chunked = False
    if framing:
        _check_framing(framing)
    if status in _NO_BODY_STATUS or status < 200:
        pass
    elif content_length is not None:
        if have & 2:
            chunked = True  # the handler asked for chunked framing: the caller frames the body
        elif not have & 1:
            append(_cl_lines.get(content_length) or b"content-length: %d\r\n" % content_length)
        elif not head_only and (declared := declared_length(framing)) != content_length:
            raise InvalidHeader(
                f"response Content-Length {declared} does not match the body "
                f"({content_length} bytes)"
            )
    elif have & 2:
        chunked = True  # the handler framed it itself; we still chunk-encode writes
    elif have & 1:
        pass
    elif http10:
        keep_alive = False
    else:
        chunked = True
        append(b"transfer-encoding: chunked\r\n")
    if not have & 8:
        append(date)
    if not have & 16 and server:
        append(server)
    if not have & 4:
        if not keep_alive:
            append(b"connection: close\r\n")
        elif http10:
            append(b"connection: keep-alive\r\n")
    append(b"\r\n")
    return b"".join(parts), chunked, keep_alive


def declared_length(headers: ResponseHeaders) -> int | None:
    """The value of a ``Content-Length`` among handler ``headers`` (None: there is none, or it
    is not a number: :func:`response_head` refuses that)."""
    for name, value in headers:
        if len(name) == 14 and name.lower() == b"content-length":
            value = value.strip()
            return int(value) if value.isdigit() else None
    return None


def _check_framing(framing: list[tuple[bytes, bytes]]) -> None:
    """Refuse framing headers that would desynchronise the connection (see response_head)."""
    lengths = {v.strip() for n, v in framing if n.lower() == b"content-length"}
    codings = [v for n, v in framing if n.lower() == b"transfer-encoding"]
    if len(lengths) > 1 or not all(v.isdigit() for v in lengths):
        raise InvalidHeader(f"invalid response Content-Length {sorted(lengths)!r}")
    if codings:
        if lengths:
            raise InvalidHeader("response has both Content-Length and Transfer-Encoding")
        last = b",".join(codings).rsplit(b",", 1)[-1].strip().lower()
        if last != b"chunked":
            raise InvalidHeader(f"response Transfer-Encoding {codings!r} does not end in chunked")


LAST_CHUNK = b"0\r\n\r\n"
_CRLF = b"\r\n"


def chunk_frame(data: bytes | memoryview | FileSlice) -> list[bytes | memoryview | FileSlice]:
    """Buffers framing one chunk (empty list for empty data: an empty chunk would end the body)."""
    n = len(data)
    if not n:
        return []
    return [b"%x\r\n" % n, data, _CRLF]


def error_response(
    status: int, message: str, server: bytes = b"", *, keep_alive: bool = False
) -> list[bytes]:
    """A complete error response with a short text body (``Connection: close`` by default)."""
    body = (message + "\n").encode("utf-8", "replace")
    head, _, _ = response_head(
        status,
        [(b"content-type", b"text/plain; charset=utf-8")],
        content_length=len(body),
        keep_alive=keep_alive,
        server=server,
    )
    return [head, body]
