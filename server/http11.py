"""Sans-IO HTTP/1.1 core: bytes in, events out; responses out as lists of buffers.

Theory of operation
-------------------
:class:`RequestParser` wraps ``httptools.HttpRequestParser`` (llhttp). The I/O layer calls
``pos = parser.feed(data, pos)`` repeatedly; each call feeds *one piece* of ``data`` and
appends what it produced to ``parser.events``:

* a :class:`~server.exchange.RequestHead` when a head is complete,
* ``bytes`` body chunks,
* the :data:`END` sentinel when a message is complete,
* a :class:`ProtocolError` (status + message), after which the parser is dead.

Pieces are cut so that a message can only ever complete at the *end* of a piece: in the head
and in a chunked body we feed up to and including the next ``CRLF CRLF`` (every head and every
chunked body ends with one), in a Content-Length body exactly the remaining length. So the
caller always knows where a message ended, can stop between pipelined requests (backpressure)
and keep the rest, and we can measure head sizes exactly. llhttp never buffers more than one
header internally; an incomplete head is bounded by our own byte count.

httptools 0.9 accepts some framing we must refuse ourselves (DESIGN.md): size and count limits
(414/431/413), ``Transfer-Encoding`` other than exactly ``chunked`` (501), ``Transfer-Encoding``
on HTTP/1.0, missing, duplicate or invalid ``Host`` on HTTP/1.1, a space inside the target
(``GET /a  HTTP/1.1``), huge chunk extensions (400), versions other than 1.x (505; 1.2 to
1.9 are handled as 1.1, RFC 9110 2.5, so llhttp is given such a head again rewritten). A
method token llhttp does not know is answered 501. Its lenient flags are never enabled. An
absolute-form target's authority replaces the ``Host`` field (RFC 9112 3.2.2).

A keep-alive client repeats its head byte for byte. A whole head that llhttp accepted from a
clean state (no body, not a last message) is kept in a bounded cache with everything
``on_headers_complete`` derived from it; a repeat in the same clean state is answered from the
cache without llhttp (the same bytes get the same verdict), the ``Config`` limits still checked
on every request. ``feed(data, pos, limit)`` takes up to ``limit`` such requests in one call
(a pipelined batch: each is still a whole message, and the call still ends where one ended).
Request lines and header blocks have their own caches for heads that differ.

``Upgrade`` is never honoured (RFC 9110 7.8 lets a server ignore it): the request is answered
as HTTP/1.1 and the connection goes on (nginx and Go do the same); a body it declares is
delivered like any other (llhttp, through httptools, would skip it; see
``_body_after_upgrade``). CONNECT is refused (405).

Responses are built by :mod:`server.http11_response` (re-exported here).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote_to_bytes

import httptools

from .config import Config
from .exchange import RequestHead
from .forwarded import Forwarded, forwarded, trusted
from .http11_response import (
    LAST_CHUNK,
    FileSlice,
    _is_token,
    chunk_frame,
    date_header,
    declared_length,
    error_response,
    response_head,
    server_line,
    status_line,
)

__all__ = [
    "END",
    "LAST_CHUNK",
    "FileSlice",
    "ProtocolError",
    "RequestParser",
    "chunk_frame",
    "date_header",
    "declared_length",
    "error_response",
    "response_head",
    "server_line",
    "status_line",
]

_TERM = b"\r\n\r\n"
_WHOLE_MAX = 1024  # reads up to this size are first looked up whole in the head cache
_CRLF_START = (b"\r", b"\n")


class ProtocolError(Exception):
    """The client broke HTTP/1.1 framing or a limit: answer ``status`` and close."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def __repr__(self) -> str:
        return f"ProtocolError({self.status}, {self.message!r})"


class _End:
    """Type of the :data:`END` sentinel (end of one request message)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "END"


END = _End()

Event = RequestHead | bytes | _End | ProtocolError


# --- parser -------------------------------------------------------------------------------

_HEAD, _BODY_CL, _BODY_CHUNKED, _DEAD = 0, 1, 2, 3
_STATE_NAMES = {_HEAD: "head", _BODY_CL: "body", _BODY_CHUNKED: "chunked", _DEAD: "dead"}
_FRAMING_ONLY = -2  # RequestParser._cl while a synthetic framing-only head is fed (upgrade)
_VERSIONS = {"1.1", "1.0"}
_VERSION_NAMES = {b"HTTP/1.1": "1.1", b"HTTP/1.0": "1.0"}
_NEWER_MINOR = re.compile(rb" HTTP/1\.[2-9]\Z")  # handled as HTTP/1.1 (see _as_http11)
_NEWER_MINOR_SO_FAR = re.compile(rb" HTTP/1\.[2-9]\r?\Z")  # ... if a CRLF follows
_BAD_VERSION = "Invalid HTTP version"  # llhttp's error for a well-formed, unknown version
# Parsed request lines and header blocks, keyed by their bytes: a keep-alive client repeats its
# header block (and often its request line) on every request. Only valid ones are stored;
# every limit that depends on the Config is checked outside. Bounded: cleared when full.
_Fields = tuple[tuple[tuple[bytes, bytes], ...], int, bool, int, bool, Forwarded | None]
_CACHE_ENTRIES = 256
_CACHE_KEY_MAX = 2048
_target_cache: dict[bytes, tuple[str, str, bytes, bytes, str]] = {}
_fields_cache: dict[bytes, _Fields] = {}
# Whole heads of body-less keep-alive requests that llhttp parsed and accepted from a clean
# state, each with everything on_headers_complete derived from it. llhttp's verdict on the same
# bytes from the same state is the same, so feed() answers a repeat without llhttp; the limits
# that depend on the Config are checked on every request all the same (_Head.fits).
_new_head = object.__new__  # (see the head-cache path of RequestParser.feed)
_head_cache: dict[bytes, _Head] = {}


def _keeps_alive(head: RequestHead) -> bool:
    """Whether ``head`` lets the connection go on (RFC 9112 9.3: HTTP/1.1 unless a "close"
    connection option, HTTP/1.0 only with "keep-alive")."""
    options = [
        o.strip().lower() for k, v in head.headers if k == b"connection" for o in v.split(b",")
    ]
    if head.http_version == "1.0":
        return b"keep-alive" in options
    return b"close" not in options


def _remember(cache: dict[bytes, Any], key: bytes, value: Any) -> None:
    """Store a parse result of a valid ``key`` in a bounded cache (emptied when full)."""
    if len(key) <= _CACHE_KEY_MAX:
        if len(cache) >= _CACHE_ENTRIES:
            cache.clear()
        cache[key] = value


_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")}
# A Host field value: uri-host [ ":" port ] (RFC 9110 7.2, RFC 3986 3.2.2); empty is valid
_valid_host = re.compile(
    rb"(?:\[[0-9A-Fa-f:.]+\]|\[v[0-9A-Fa-f]+\.[-A-Za-z0-9._~!$&'()*+,;=:]+\]"
    rb"|[-A-Za-z0-9._~!$&'()*+,;=%]*)(?::[0-9]*)?\Z"
).match


class _Head:
    """A head in :data:`_head_cache`: the parse results and the sizes the limits apply to."""

    __slots__ = ("expect", "fields", "fits_config", "forwarded", "hsize", "line", "target")

    def __init__(
        self,
        target: tuple[str, str, bytes, bytes, str],
        fields: tuple[tuple[bytes, bytes], ...],
        expect: bool,
        line: int,
        hsize: int,
        forwarded: Forwarded | None = None,
    ) -> None:
        self.target = target  # (method, path, raw_path, query, version)
        self.fields = fields
        self.expect = expect
        self.forwarded = forwarded  # X-Forwarded-For/-Proto values, if any (server.forwarded)
        self.line = line  # request line length
        self.hsize = hsize  # header block length (CRLF before the first field to the end)
        self.fits_config: Config | None = None  # the last Config whose limits it was within

    def fits(self, parser: RequestParser, size: int) -> bool:
        """Within ``parser``'s limits (else the full path runs and answers the error);
        ``size`` is the whole head's length. Remembers the Config that passed: the caller
        compares ``fits_config`` first and calls this only for another one."""
        if (
            self.line <= parser._max_line
            and size <= parser._max_line + parser._max_hsize + 4
            and self.hsize <= parser._max_hsize + 4
            and len(self.fields) <= parser._max_hcount
        ):
            self.fits_config = parser.config
            return True
        return False

    def __repr__(self) -> str:
        return f"<_Head {self.target[0]} {self.target[2]!r} fields={len(self.fields)}>"


class RequestParser:
    """Incremental request parser; see the module docstring for the feeding contract."""

    __slots__ = (
        "_authority begun _block _body_len _cand _cl _error _framing _head_bytes _held_back _max_body "
        "_max_hcount _max_hsize _max_line _p _partial _reusable _state _tail client "
        "config events messages scheme server"
    ).split()

    def __init__(
        self,
        config: Config,
        *,
        client: tuple[str, int] | None = None,
        server: tuple[str, int] | None = None,
        scheme: str = "http",
    ) -> None:
        self.config = config
        self.client = client
        self.server = server
        self.scheme = scheme
        self.events: list[Event] = []  # filled by feed(), emptied by the caller
        self.messages = 0  # complete messages so far
        self._p: httptools.HttpRequestParser | None = None  # made by feed() when bytes come
        self._cand: tuple[bytes, _Head] | None = None  # a head to cache once llhttp accepted it
        # host[:port] of an absolute-form target, from _target to on_headers_complete
        self._authority: bytes | None = None
        self._held_back = False  # llhttp has not seen the head held so far (_as_http11)
        self._max_line = config.max_request_line
        self._max_hsize = config.max_header_size
        self._max_hcount = config.max_header_count
        self._max_body = config.max_body_size
        self._state = _HEAD
        self._tail = b""  # last <=3 bytes fed in head/chunked state (a split CRLFCRLF)
        self._error: ProtocolError | None = None
        self.begun = False  # a message has started (bytes of a head seen): see in_head
        self._reusable = True  # llhttp refuses data after a non-keep-alive message
        self._reset_message()

    def _reset_message(self) -> None:
        self._partial = b""  # head bytes so far, while the head spans several feeds
        self._block = b""  # the complete head, for on_headers_complete
        self._head_bytes = 0  # raw bytes fed into the current head
        self._cl = -1  # Content-Length, -1 when absent
        self._body_len = 0  # body bytes delivered so far
        self._framing = 0  # chunked framing bytes since the last CRLF fed

    def reset(
        self, *, client: tuple[str, int] | None = None, server: tuple[str, int] | None = None
    ) -> None:
        """Make ready for a new connection (keeps the llhttp parser when it is clean, else
        drops it: :meth:`feed` makes a fresh one when bytes arrive)."""
        if self._state != _HEAD or self.begun or self._error is not None or not self._reusable:
            self._p = None
            self._reusable = True
        self._authority = None
        self._held_back = False
        self.client = client
        self.server = server
        self.events = []
        self.messages = 0
        self._cand = None
        self._state = _HEAD
        self._tail = b""
        self._error = None
        self.begun = False
        self._reset_message()

    def shrink(self) -> bool:
        """Let the llhttp parser (~720 B) go while idle between messages; :meth:`feed` makes a
        new one with the next bytes. Only a clean parser goes (nothing of a message seen, no
        error, still accepting data), so parsing is unchanged. Returns whether it went."""
        if self._state != _HEAD or self.begun or self._error is not None or not self._reusable:
            return False
        self._p = None
        return True

    # --- state seen by the I/O layer ---
    @property
    def in_head(self) -> bool:
        """True while a request head has started but is not complete (header deadline runs)."""
        return self.begun and self._state == _HEAD

    @property
    def in_body(self) -> bool:
        """True while a request body is being parsed."""
        return self._state == _BODY_CL or self._state == _BODY_CHUNKED

    @property
    def dead(self) -> bool:
        return self._state == _DEAD

    @property
    def body_remaining(self) -> int | None:
        """Body bytes still expected (None: chunked, unknown), 0 outside a body."""
        if self._state == _BODY_CL:
            return self._cl - self._body_len
        if self._state == _BODY_CHUNKED:
            return None
        return 0

    def __repr__(self) -> str:
        return (
            f"<RequestParser state={_STATE_NAMES[self._state]} messages={self.messages} "
            f"pending_events={len(self.events)}>"
        )

    # --- feeding ---
    def feed(self, data: bytes, pos: int = 0, limit: int = 1) -> int:
        """Feed one piece of ``data[pos:]``; return the position after it (see module doc).

        Up to ``limit`` whole requests found in the head cache are taken in one call (a
        pipelined batch); anything else is one piece per call.
        """
        state = self._state
        n = len(data)
        if state == _DEAD or pos >= n:
            return n
        if state == _HEAD and not self._partial and not self._tail and self._reusable:
            # Whole heads seen before (a keep-alive client repeats itself): no llhttp call.
            # Not after a last message (llhttp, in its closed state, would refuse it).
            events = self.events
            start = pos
            # One whole head in one read (a keep-alive client): a single dict lookup, no find
            # (whose argument parsing costs more than the lookup). A cached head's only
            # CRLF CRLF is its end, so a hit is exactly one head.
            hit = _head_cache.get(data) if pos == 0 and n <= _WHOLE_MAX else None
            end = n
            while True:
                if hit is None:
                    end = data.find(_TERM, pos) + 4
                    if end < 4:
                        break
                    hit = _head_cache.get(data if (pos == 0 and end == n) else data[pos:end])
                    if hit is None:
                        break
                if not (hit.fits_config is self.config or hit.fits(self, end - pos)):
                    break
                # Built field by field, not through RequestHead(...): on 3.11 the class call
                # (allocation, argument tuple, __init__ frame) cost ~1.2k instructions per
                # request more than the stores. Every field is set here (a test compares the
                # result with the llhttp path's head).
                h = _new_head(RequestHead)
                h.method, h.path, h.raw_path, h.query_string, h.http_version = hit.target
                h.headers = list(hit.fields)
                h.keep_alive = True
                h.client = self.client
                h.server = self.server
                h.scheme = self.scheme
                if hit.forwarded is not None:
                    h.client, h.scheme = self._forwarded(hit.forwarded)
                h.expect_continue = hit.expect
                h._state = None
                events.append(h)
                events.append(END)
                self.messages += 1
                if end == n or limit <= 1:
                    return end
                pos = end
                limit -= 1
                hit = None
            if pos != start:
                return pos
        if state == _BODY_CL:
            end = min(n, pos + self._cl - self._body_len)
        else:
            # Head: cut after CRLF CRLF. Chunked body: cut after every CRLF, so one piece holds
            # at most one size line (extension length is measurable) and the message still
            # ends at the end of a piece.
            term = _TERM if state == _HEAD else b"\r\n"
            k = len(term)
            end = -1
            tail = self._tail
            if tail:  # a terminator split across two feeds
                i = (tail + data[pos : pos + k - 1]).find(term)
                if i >= 0:
                    end = pos + i + k - len(tail)
            if end < 0:
                end = data.find(term, pos)
                end = n if end < 0 else end + k
                found = end != n or data[end - k : end] == term
            else:
                found = True
            if found:
                self._tail = b""
            else:
                self._tail = (tail + data[max(pos, end - k + 1) : end])[1 - k :]
            if state == _HEAD:
                self.begun = True
                self._head_bytes += end - pos
                chunk = data if (pos == 0 and end == n) else data[pos:end]
                if found:
                    head = self._block = self._partial + chunk if self._partial else chunk
                    self._partial = b""
                else:
                    head = self._partial = self._partial + chunk
                # The request line's and the head's limits are checked on what we hold
                # *before* llhttp sees it, so the answer (414, 431) does not depend on how the
                # head was split into reads (llhttp could otherwise report a later header's
                # error, found only once the head is whole, first).
                start = 0
                if head[:1] in _CRLF_START:  # llhttp skips CR/LF runs before a request
                    start = len(head) - len(head.lstrip(b"\r\n"))
                i = head.find(b"\r\n", start)
                if i < 0:  # no line end yet; a trailing CR may be the first half of one
                    i = len(head) - (head[-1:] == b"\r")
                if i - start > self._max_line:
                    self._fail(ProtocolError(414, "request line too long"))
                    return n
                if self._head_bytes > self._max_line + self._max_hsize + 4:
                    self._fail(ProtocolError(431, "request header block too large"))
                    return n
        body_before = self._body_len
        piece = data if (pos == 0 and end == n) else memoryview(data)[pos:end]
        p = self._p
        if p is None:  # dropped while idle (shrink), after a dirty reset, or held back
            p = self._p = httptools.HttpRequestParser(self)
            if self._held_back:  # llhttp gets the whole head once its request line is whole
                again = self._as_http11()
                if again == b"":
                    self._p = None
                    return end
                self._held_back = False
                # (not HTTP/1.2 to 1.9 after all: llhttp refuses the head as it came)
                piece = again or self._held()
        try:
            try:
                p.feed_data(piece)
            except httptools.HttpParserError as exc:
                # HTTP/1.2 to 1.9: llhttp refuses a minor version it does not know (as soon as
                # its digit arrives), but RFC 9110 2.5 says to handle it as the highest one we
                # implement: a fresh llhttp is given the head held so far, as HTTP/1.1
                again = None
                if state == _HEAD and self._error is None and str(exc) == _BAD_VERSION:
                    again = self._as_http11()
                if again is None:
                    raise
                if again:
                    p = self._p = httptools.HttpRequestParser(self)
                    p.feed_data(again)
                else:  # the request line is not whole yet: the next bytes decide
                    self._p = None
                    self._held_back = True
        except httptools.HttpParserUpgrade:
            # Upgrade: we speak only HTTP/1.1 and ignore it (RFC 9110 7.8), as nginx and Go
            # do: the request (and its body) is answered, and the connection goes on.
            self._cand = None
            events = self.events
            head = events[-2] if len(events) >= 2 else None
            if type(head) is RequestHead and events[-1] is END:
                head.keep_alive = _keeps_alive(head)  # (llhttp says no for an upgrade)
                self._reusable = False
                if self._body_after_upgrade(head):
                    return end  # the body follows, parsed like any other
                if head.keep_alive:
                    self._p = None  # llhttp stopped at the upgrade: a fresh one for the next
                    self._state = _HEAD
                    self.begun = False
                    self._tail = b""
                    return end
            self._state = _DEAD
            self._tail = b""
            return n
        except httptools.HttpParserError as exc:
            self._fail(self._error or self._map_error(exc))
            self._cand = None
            return n
        if self._cand is not None:
            if self._state == _HEAD and self.events and self.events[-1] is END:
                _remember(_head_cache, *self._cand)  # accepted whole, no body, kept alive
            self._cand = None
        if state == _BODY_CHUNKED and self._state == _BODY_CHUNKED:
            # Framing bytes since the last CRLF: a size line with its extensions, or a trailer.
            # (Not once the message ended in this piece, its last CRLF: the end reset _body_len.)
            self._framing += (end - pos) - (self._body_len - body_before)
            if self._framing > self.config.max_chunk_ext + 32:
                self._fail(ProtocolError(400, "chunk extension or trailer line too long"))
                return n
            if not self._tail:
                self._framing = 0
        return end

    def _body_after_upgrade(self, head: RequestHead) -> bool:
        """llhttp (through httptools) skips the body of an Upgrade request and ends the message
        (``head``, then END, the last events) at its head. We never switch protocols (RFC 9110
        7.8 lets a server ignore Upgrade), so a declared body is still this request's (curl's
        h2c upgrade of a POST sends one): take back the END and parse the body with a fresh
        llhttp parser that is given the framing alone (and then parses the requests that
        follow, or refuses them after a last one). Returns whether there is a body.
        """
        chunked = head.get_header(b"transfer-encoding") is not None
        cl = int(head.get_header(b"content-length") or -1)
        if not chunked and cl <= 0:
            return False
        self.events.pop()
        self.messages -= 1
        self._reusable = False
        self.begun = True
        framing = b"transfer-encoding: chunked" if chunked else b"content-length: %d" % cl
        p = self._p = httptools.HttpRequestParser(self)
        self._cl = _FRAMING_ONLY  # on_headers_complete: a synthetic head, nothing to emit
        # a last message ("connection: close"): llhttp refuses what would follow it
        close = b"" if head.keep_alive else b"connection: close\r\n"
        p.feed_data(b"POST / HTTP/1.1\r\nhost: x\r\n%s%s\r\n\r\n" % (close, framing))
        if chunked:
            self._state = _BODY_CHUNKED
            self._framing = 0
        else:
            self._state = _BODY_CL
            self._cl = cl
        self._tail = b""
        return True

    def _as_http11(self) -> bytes | None:
        """The head held so far, its request line's ``HTTP/1.x`` (x = 2..9) made ``HTTP/1.1``;
        ``b""`` while the line may still turn out so (it has not ended yet); None when it is
        not such a line. Whether the line ended there is decided on whole lines only, so the
        answer does not depend on how the head was split into reads."""
        held = self._held()
        start = len(held) - len(held.lstrip(b"\r\n"))
        end = held.find(b"\r\n", start)
        if end < 0:
            return b"" if _NEWER_MINOR_SO_FAR.search(held, start) else None
        if _NEWER_MINOR.search(held, start, end) is None:
            return None
        at = end - 1  # the minor digit
        again = held[:at] + b"1" + held[at + 1 :]
        if self._partial:
            self._partial = again
        else:
            self._block = again
        return again

    def _held(self) -> bytes:
        """The head held so far: ``_partial`` while it is incomplete (``_block`` may then be
        an earlier piece that held only blank lines), else ``_block``."""
        return self._partial or self._block

    def _fail(self, err: ProtocolError) -> None:
        self._state = _DEAD
        self._tail = b""
        self.events.append(err)

    def _map_error(self, exc: Exception) -> ProtocolError:
        msg = str(exc) or type(exc).__name__
        if isinstance(exc, httptools.HttpParserInvalidMethodError):
            # llhttp knows a fixed list of methods; any other token is a method this server
            # does not implement (RFC 9110 9.1: 501), anything else a malformed line
            # (when the request line arrived in one piece with it: llhttp may stop earlier)
            token, sp, _ = self._held().lstrip(b"\r\n").partition(b" ")
            if sp and _is_token(token):
                shown = token.decode() if len(token) <= 32 else token[:32].decode() + "..."
                return ProtocolError(501, f"method {shown} not implemented")
            return ProtocolError(400, "invalid request method")
        if msg == _BAD_VERSION:  # a well-formed HTTP/x.y other than 1.x, 2.0
            return ProtocolError(505, "HTTP version not supported")
        if "Transfer-Encoding" in msg and "Content-Length" not in msg:
            return ProtocolError(501, "unsupported Transfer-Encoding")
        return ProtocolError(400, f"malformed request: {msg}")

    # --- httptools callbacks (raise ProtocolError via self._error) ---
    def _raise(self, status: int, message: str) -> None:
        self._error = ProtocolError(status, message)
        raise self._error

    # No on_message_begin: feed() sets begun before it feeds a head (one callback fewer).

    def on_headers_complete(self) -> None:
        # llhttp validated the syntax of the whole head; we extract it from our own copy in a
        # few C-level calls instead of one Python callback per header.
        if self._cl == _FRAMING_ONLY:  # the synthetic head of _body_after_upgrade
            return
        block = self._block
        self._block = b""
        # empty lines before a request are ignored; llhttp skips any run of CR and LF there
        # (not only CRLF pairs), so must we, or a stray CR would become part of the method
        start = len(block) - len(block.lstrip(b"\r\n"))
        first = block.find(b"\r\n", start)
        line = block[start:first]  # its length was checked by feed() before llhttp saw it
        target = _target_cache.get(line) or self._target(line)
        method, path, raw_path, query, version = target
        if len(block) - first > self._max_hsize + 4:
            self._raise(431, "request header block too large")
        tail = block[first:]
        fields, hosts, te, cl, expect, fwd = _fields_cache.get(tail) or self._fields(tail)
        if len(fields) > self._max_hcount:
            self._raise(431, "too many header fields")
        if version == "1.0":
            if te:
                self._raise(400, "Transfer-Encoding on an HTTP/1.0 request")
            if hosts > 1:
                self._raise(400, "duplicate Host header")
            expect = False
        elif hosts != 1:
            self._raise(400, "missing Host header" if hosts == 0 else "duplicate Host header")
        if method == "CONNECT":
            self._raise(405, "CONNECT is not supported")
        if self._authority is not None:
            # absolute-form: the target's host is the request's, the Host field is ignored
            # (RFC 9112 3.2.2), so it is replaced (or added) for everything that reads it
            host, self._authority = self._authority, None
            if hosts:
                fields = tuple([(k, host if k == b"host" else v) for k, v in fields])
            else:  # (HTTP/1.0)
                fields = (*fields, (b"host", host))
        if cl > self._max_body:
            self._raise(413, "request body too large")
        self._cl = cl
        headers = list(fields)
        keep_alive = self._p.should_keep_alive()  # type: ignore[union-attr]
        if not keep_alive:
            self._reusable = False
        elif cl <= 0 and not te:
            self._cand = (block, _Head(target, fields, expect, first - start, len(tail), fwd))
        client, scheme = (self.client, self.scheme) if fwd is None else self._forwarded(fwd)
        self.events.append(
            RequestHead(
                method,
                path,
                raw_path,
                query,
                version,
                headers,
                keep_alive,
                client,
                self.server,
                scheme,
                expect,
            )
        )
        if te:
            self._state = _BODY_CHUNKED
            self._framing = 0
        elif cl > 0:
            self._state = _BODY_CL
        self._tail = b""

    def _target(self, line: bytes) -> tuple[str, str, bytes, bytes, str]:
        """(method, path, raw_path, query, version) of a request line; cached when valid."""
        sp1 = line.find(b" ")
        sp2 = line.rfind(b" ")
        version = _VERSION_NAMES.get(line[sp2 + 1 :])
        if version is None:
            v = self._p.get_http_version()  # type: ignore[union-attr]
            if v.startswith("0."):
                self._raise(400, "HTTP/0.9 is not supported")
            self._raise(505, f"HTTP version {v} not supported")
        raw_method = line[:sp1]
        method = _METHODS.get(raw_method) or raw_method.decode("ascii")
        url = line[sp1 + 1 : sp2]
        if b" " in url:  # (llhttp lets "GET /a  HTTP/1.1" through: the target would be "/a ")
            self._raise(400, "whitespace in the request target")
        if url[:1] == b"/":
            f = url.find(b"#")  # a fragment (never sent by clients) goes first: it may hold a ?
            if f >= 0:
                url = url[:f]
            q = url.find(b"?")
            if q >= 0:
                raw_path, query = url[:q], url[q + 1 :]
            else:
                raw_path, query = url, b""
        elif url == b"*" or method == "CONNECT":  # CONNECT: refused (405) by the caller
            if method != "OPTIONS" and method != "CONNECT":
                # asterisk-form is for a server-wide OPTIONS only (RFC 9112 3.2.4)
                self._raise(400, f"request target '*' is only valid for OPTIONS, not {method}")
            raw_path, query = url, b""
        else:
            try:
                parsed = httptools.parse_url(url)
            except httptools.HttpParserInvalidURLError:
                self._raise(400, "invalid request target")
            raw_path = parsed.path or b"/"
            query = parsed.query or b""
            if parsed.userinfo:  # (as a Host with one: RFC 9110 4.2.4)
                self._raise(400, "userinfo in the request target")
            if parsed.host:  # (absolute-form: never cached, so this runs for each such head)
                host = b"[%s]" % parsed.host if b":" in parsed.host else parsed.host
                self._authority = host + b":%d" % parsed.port if parsed.port else host
        if b"%" in raw_path:
            path = unquote_to_bytes(raw_path).decode("utf-8", "replace")
        else:
            path = raw_path.decode("utf-8", "replace")
        out = (method, path, raw_path, query, version)
        if self._authority is None:
            _remember(_target_cache, line, out)
        return out

    def _fields(self, tail: bytes) -> _Fields:
        """(fields, Host count, chunked, Content-Length or -1, Expect: 100-continue) of a
        header block ``tail`` (CRLF, the field lines, CRLF CRLF); cached when valid.

        One line per field (llhttp already rejected obs-fold, bare CR/LF, bad characters and
        empty names). split/partition beat a regex 2.5x here."""
        lines = tail[2:-4].split(b"\r\n") if len(tail) > 4 else []
        if len(lines) > self._max_hcount:
            self._raise(431, "too many header fields")
        fields = tuple(
            [(k.lower(), v.strip(b" \t")) for k, _, v in [ln.partition(b":") for ln in lines]]
        )
        lower = tail.lower()
        te = False
        if b"\r\ntransfer-encoding:" in lower:
            values = [v for k, v in fields if k == b"transfer-encoding"]
            if len(values) > 1:
                self._raise(400, "duplicate Transfer-Encoding")
            if values[0].lower() != b"chunked":
                self._raise(501, "Transfer-Encoding other than chunked is not implemented")
            te = True
        cl = -1
        if b"\r\ncontent-length:" in lower:
            for k, v in fields:
                if k == b"content-length":
                    cl = int(v)  # llhttp validated the digits and rejected duplicates
        expect = False
        if b"\r\nexpect:" in lower:
            for k, v in fields:
                if k == b"expect" and v.lower() == b"100-continue":
                    expect = True
        hosts = lower.count(b"\r\nhost:")
        if hosts:
            for k, v in fields:
                if k == b"host" and not _valid_host(v):
                    self._raise(400, "invalid Host header")
        fwd = None
        if b"\r\nx-forwarded-" in lower:  # (counted only from a trusted proxy: _forwarded)
            xff = b",".join([v for k, v in fields if k == b"x-forwarded-for"])
            protos = [v for k, v in fields if k == b"x-forwarded-proto"]
            if xff or protos:
                fwd = (xff or None, protos[-1] if protos else None)
        out = (fields, hosts, te, cl, expect, fwd)
        _remember(_fields_cache, tail, out)
        return out

    def _forwarded(self, values: Forwarded) -> tuple[Any, str]:
        """The request's client and scheme given its X-Forwarded-* ``values``: the proxy's
        word when the peer is a trusted proxy (see :mod:`server.forwarded`), else the peer's."""
        cfg = self.config
        client = self.client
        if cfg.proxy_headers and client is not None:
            trust = trusted(cfg.forwarded_allow_ips)
            if client[0] in trust:
                return forwarded(values, client, self.scheme, trust)
        return client, self.scheme

    def on_body(self, body: bytes) -> None:
        self._body_len += len(body)
        if self._body_len > self._max_body:
            self._raise(413, "request body too large")
        self.events.append(body)

    def on_message_complete(self) -> None:
        self.events.append(END)
        self.messages += 1
        self._state = _HEAD
        self.begun = False
        self._tail = b""
        self._reset_message()
