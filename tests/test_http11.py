"""The sans-IO HTTP/1.1 core, fed bytes directly: no socket, no loop, no clock."""

from __future__ import annotations

import io
import itertools

import pytest

from server.config import Config
from server.exchange import InvalidHeader, RequestHead
from server.http11 import (
    END,
    LAST_CHUNK,
    FileSlice,
    ProtocolError,
    RequestParser,
    chunk_frame,
    date_header,
    error_response,
    response_head,
    status_line,
)

CFG = Config()


def parse(data: bytes, config: Config = CFG, splits: list[int] | None = None) -> list[object]:
    """Feed ``data`` (cut at ``splits``) piece by piece; return the events, bodies joined."""
    p = RequestParser(config)
    cuts = [0, *(splits or []), len(data)]
    for a, b in itertools.pairwise(cuts):
        _feed_all(p, data[a:b])
    out: list[object] = []
    for ev in p.events:
        if type(ev) is bytes and out and type(out[-1]) is bytes:
            out[-1] += ev
        else:
            out.append(ev)
    return out


def _feed_all(p: RequestParser, data: bytes) -> None:
    """Feed all of ``data`` (the I/O layer's loop: feed() stops at message boundaries)."""
    pos = 0
    while pos < len(data):
        pos = p.feed(data, pos)


def error_of(data: bytes, config: Config = CFG) -> ProtocolError:
    events = parse(data, config)
    assert isinstance(events[-1], ProtocolError), events
    return events[-1]


PIPELINE = (
    b"GET /a?x=1 HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n\r\n"
    b"POST /b%20c HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
    b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3;ext=1\r\nabc\r\n4\r\n\r\n\r\n\r\n0\r\nTrailer: t\r\n\r\n"
    b"GET /d HTTP/1.0\r\n\r\n"
)


def check_pipeline(events: list[object]) -> None:
    heads = [e for e in events if isinstance(e, RequestHead)]
    assert [h.method for h in heads] == ["GET", "POST", "POST", "GET"]
    assert [h.path for h in heads] == ["/a", "/b c", "/c", "/d"]
    assert heads[0].query_string == b"x=1"
    assert heads[1].raw_path == b"/b%20c"
    assert heads[0].headers == [(b"host", b"h"), (b"x-a", b"1")]
    assert heads[3].http_version == "1.0" and not heads[3].keep_alive
    assert heads[0].keep_alive
    bodies = [e for e in events if type(e) is bytes]
    assert bodies == [b"hello", b"abc\r\n\r\n"]
    assert events.count(END) == 4
    assert not any(isinstance(e, ProtocolError) for e in events)


def test_pipeline_whole() -> None:
    check_pipeline(parse(PIPELINE))


def test_pipeline_split_at_every_position() -> None:
    for i in range(1, len(PIPELINE)):
        check_pipeline(parse(PIPELINE, splits=[i]))


def test_pipeline_byte_by_byte() -> None:
    check_pipeline(parse(PIPELINE, splits=list(range(1, len(PIPELINE)))))


def test_pieces_never_span_two_messages() -> None:
    p = RequestParser(CFG)
    pos, ends = 0, []
    while pos < len(PIPELINE):
        pos = p.feed(PIPELINE, pos)
        if p.events and p.events[-1] is END:
            ends.append(pos)
        p.events.clear()
    assert len(ends) == 4 and ends[-1] == len(PIPELINE)
    assert PIPELINE[ends[0] : ends[0] + 4] == b"POST"


def test_cached_heads_are_taken_in_batches_up_to_limit() -> None:
    """``feed(data, pos, limit)``: repeated heads answered from the head cache come up to
    ``limit`` per call, each a whole message (head, END), the same events as one by one; a
    head that is not cached (or a body) ends the batch."""
    one = b"GET /batch HTTP/1.1\r\nHost: h\r\nAccept: */*\r\n\r\n"
    other = b"GET /other-%d HTTP/1.1\r\nHost: h\r\n\r\n" % id(one)  # never seen before
    parse(one)  # llhttp accepted it: cached
    data = one * 5 + other + one * 3
    p = RequestParser(CFG)
    pos, calls = 0, []
    while pos < len(data):
        new = p.feed(data, pos, 4)
        calls.append((data[pos:new].count(b"GET"), len(p.events) // 2))
        p.events.clear()
        pos = new
    assert calls == [(4, 4), (1, 1), (1, 1), (3, 3)]
    assert p.messages == 9
    p2 = RequestParser(CFG)
    pos = 0
    while pos < len(data):
        pos = p2.feed(data, pos, 100)
    heads = [e for e in p2.events if isinstance(e, RequestHead)]
    assert [h.raw_path for h in heads] == [b"/batch"] * 5 + [other.split()[1]] + [b"/batch"] * 3
    assert p2.events.count(END) == 9 and p2.events[1::2] == [END] * 9


def test_expect_continue_and_keep_alive_10() -> None:
    [head, _] = parse(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert isinstance(head, RequestHead) and head.keep_alive
    ev = parse(b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n")
    assert isinstance(ev[0], RequestHead) and ev[0].expect_continue


def test_absolute_form_target() -> None:
    [head, _] = parse(b"GET http://h/p/q?z=2 HTTP/1.1\r\nHost: h\r\n\r\n")
    assert isinstance(head, RequestHead)
    assert head.path == "/p/q" and head.query_string == b"z=2"
    # the target's authority is the request's host; the Host field is ignored (RFC 9112 3.2.2)
    for _ in range(2):  # (the second from the head cache)
        [head, _] = parse(b"GET http://o.test:81/p HTTP/1.1\r\nHost: x\r\nA: 1\r\n\r\n")
        assert isinstance(head, RequestHead)
        assert head.headers == [(b"host", b"o.test:81"), (b"a", b"1")]
    [head, _] = parse(b"GET http://[::1]:8080/p HTTP/1.0\r\n\r\n")
    assert isinstance(head, RequestHead) and head.headers == [(b"host", b"[::1]:8080")]
    [head, _] = parse(b"GET /p HTTP/1.1\r\nHost: x\r\n\r\n")  # (nothing left over)
    assert isinstance(head, RequestHead) and head.headers == [(b"host", b"x")]


def test_fragment_is_cut_before_the_query() -> None:
    [head, _] = parse(b"GET /p#f?x HTTP/1.1\r\nHost: h\r\n\r\n")
    assert isinstance(head, RequestHead) and (head.path, head.query_string) == ("/p", b"")
    [head, _] = parse(b"GET /p?x#f?y HTTP/1.1\r\nHost: h\r\n\r\n")
    assert isinstance(head, RequestHead) and (head.path, head.query_string) == ("/p", b"x")


def test_unknown_method_is_not_implemented() -> None:
    """A method token llhttp does not know is 501 (RFC 9110 9.1) when the request line came
    whole; a method that is not a token is a malformed request."""
    for method in (b"FOO", b"get", b"BREW"):
        err = error_of(method + b" / HTTP/1.1\r\nHost: h\r\n\r\n")
        assert err.status == 501 and method.decode() in err.message, method
    assert error_of(b"G@T / HTTP/1.1\r\nHost: h\r\n\r\n").status == 400
    err = error_of(b"X" * 5000 + b" / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert err.status == 501 and len(err.message) < 64  # (not echoed whole)


def test_asterisk_form_target_is_for_options_only() -> None:
    [head, _] = parse(b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n")
    assert isinstance(head, RequestHead)
    assert (head.method, head.path, head.raw_path, head.query_string) == ("OPTIONS", "*", b"*", b"")
    err = error_of(b"DELETE * HTTP/1.1\r\nHost: h\r\n\r\n")
    assert err.status == 400 and "only valid for OPTIONS" in err.message


def test_a_newer_minor_version_is_handled_as_http11() -> None:
    """RFC 9110 2.5: HTTP/1.2 to 1.9 are processed as HTTP/1.1 (as nginx and Go do), also the
    next request on the connection, whatever the split; llhttp itself refuses them."""
    data = (
        b"\r\nPOST /a HTTP/1.9\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
        b"\r\n\r\nGET /b HTTP/1.2\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nxyz\r\n0\r\n\r\n"
        b"GET /c HTTP/1.1\r\nHost: h\r\n\r\n"
    )
    for i in range(len(data)):
        for j in range(i, len(data), 7):
            events = parse(data, splits=[i, j])
            assert not any(isinstance(e, ProtocolError) for e in events), (i, j, events)
            heads = [e for e in events if isinstance(e, RequestHead)]
            assert [(h.path, h.http_version, h.keep_alive) for h in heads] == [
                ("/a", "1.1", True),
                ("/b", "1.1", True),
                ("/c", "1.1", True),
            ], (i, j)
            assert [e for e in events if type(e) is bytes] == [b"abc", b"xyz"], (i, j)
    assert error_of(b"GET / HTTP/1.2\r\n\r\n").message == "missing Host header"


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            400,
        ),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3x\r\n\r\nabc", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
        (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 501),
        (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\nHost: a\n\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n", 400),
        (
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXX0\r\n\r\n",
            400,
        ),
        (b"\x00\x01garbage\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
        (b"GET / HTTP/1.12\r\nHost: a\r\n\r\n", 400),  # (HTTP-version: one digit each)
        (b"GET / HTTP/1.2\rX\r\nHost: a\r\n\r\n", 505),  # not HTTP/1.2 then CRLF
        (b"GET / HTTP/3.0\r\nHost: a\r\n\r\n", 505),
        (b"GET /a  HTTP/1.1\r\nHost: a\r\n\r\n", 400),  # the target would hold a space
        (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),  # invalid Host (RFC 9112 3.2)
        (b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: u@h\r\n\r\n", 400),
        (b"GET http://u@h/ HTTP/1.1\r\nHost: h\r\n\r\n", 400),  # userinfo in the target
        (b"GET / HTTP/1.1\r\nHost: h:8x\r\n\r\n", 400),
        (b"GET / HTTP/1.0\r\nHost: a, b\r\n\r\n", 400),
        (b"CONNECT h:443 HTTP/1.1\r\nHost: h\r\n\r\n", 405),
        (b"GET * HTTP/1.1\r\nHost: h\r\n\r\n", 400),  # asterisk-form: OPTIONS only
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2000000\r\n\r\n", 413),
    ],
)
def test_bad_framing(raw: bytes, status: int) -> None:
    assert error_of(raw).status == status
    for i in range(1, len(raw)):  # the verdict does not depend on how bytes arrive
        events = parse(raw, splits=[i])
        assert isinstance(events[-1], ProtocolError) and events[-1].status == status, i


def test_limits() -> None:
    assert error_of(b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: h\r\n\r\n").status == 414
    big = b"GET / HTTP/1.1\r\nHost: h\r\n" + b"X-Big: " + b"v" * 17000 + b"\r\n\r\n"
    assert error_of(big).status == 431
    many = (
        b"GET / HTTP/1.1\r\nHost: h\r\n"
        + b"".join(b"X-%d: 1\r\n" % i for i in range(101))
        + b"\r\n"
    )
    assert error_of(many).status == 431
    chunked = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    body = chunked + b"".join(b"10000\r\n" + b"x" * 0x10000 + b"\r\n" for _ in range(17))
    assert error_of(body).status == 413
    ext = chunked + b"3;" + b"e" * 10000 + b"\r\nabc\r\n0\r\n\r\n"
    assert error_of(ext).status == 400


def test_chunked_body_size_is_not_counted_as_framing() -> None:
    """Only a size line or trailer counts towards the chunk extension limit, never the body:
    a chunked body of any size (here far above ``max_chunk_ext``) ends cleanly, and the
    request after it is parsed, at every split."""
    body = b"x" * 5000 + b"y" * 0x1100
    data = (
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"1388\r\n" + body[:5000] + b"\r\n1100;e=1\r\n" + body[5000:] + b"\r\n"
        b"0\r\nT: v\r\n\r\nGET /next HTTP/1.1\r\nHost: h\r\n\r\n"
    )
    for i in [*range(1, len(data), 97), *range(len(data) - 60, len(data))]:
        events = parse(data, splits=[i])
        assert not any(isinstance(e, ProtocolError) for e in events), (i, events[-1])
        assert events[1] == body and events[2] is END, i
        assert isinstance(events[3], RequestHead) and events[3].path == "/next", i


def test_incomplete_head_is_bounded_without_terminator() -> None:
    p = RequestParser(CFG)
    data = b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"v" * 1000
    p.feed(data)
    for _ in range(30):
        p.feed(b"v" * 1000)
    assert p.dead and isinstance(p.events[-1], ProtocolError) and p.events[-1].status == 431


def test_small_limits_from_config() -> None:
    cfg = Config(max_header_count=2, max_body_size=3)
    assert error_of(b"GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\n\r\n", cfg).status == 431
    assert (
        error_of(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nabcd", cfg).status == 413
    )


def test_upgrade_is_ignored_and_the_connection_goes_on() -> None:
    """Upgrade is never honoured (RFC 9110 7.8): the request is answered as HTTP/1.1 and the
    next request on the connection is parsed (nginx and Go do the same), unless the request
    was a last one; at every split."""
    up = b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"
    data = up + b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n"
    for i in range(1, len(data) + 1):
        events = parse(data, splits=[i] if i < len(data) else None)
        heads = [e for e in events if isinstance(e, RequestHead)]
        assert [h.path for h in heads] == ["/", "/next"] and all(h.keep_alive for h in heads), i
        assert events.count(END) == 2 and not any(isinstance(e, ProtocolError) for e in events)
    for last in (b"Connection: upgrade, close", b"Connection: upgrade"):
        version = b"1.0" if last == b"Connection: upgrade" else b"1.1"
        p = RequestParser(CFG)
        _feed_all(
            p,
            b"GET / HTTP/%s\r\nHost: h\r\nUpgrade: h2c\r\n%s\r\n\r\n" % (version, last)
            + b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n",
        )
        head = p.events[0]
        assert isinstance(head, RequestHead) and not head.keep_alive and p.dead


@pytest.mark.parametrize(
    ("framing", "body", "chunks"),
    [
        (b"Content-Length: 5\r\n", b"hello", b"hello"),
        (b"Transfer-Encoding: chunked\r\n", b"3\r\nabc\r\n2;x=1\r\nde\r\n0\r\n\r\n", b"abcde"),
    ],
)
def test_upgrade_request_body_is_delivered_then_the_next_request(
    framing: bytes, body: bytes, chunks: bytes
) -> None:
    """We never switch protocols, so the body of an Upgrade request (curl's h2c upgrade of a
    POST) is the request's own, at every split; the request after it is parsed."""
    data = (
        b"POST /up HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n" + framing + b"\r\n" + body
    )
    for i in range(1, len(data) + 1):
        events = parse(data, splits=[i] if i < len(data) else None)
        assert len(events) == 3, (i, events)
        head = events[0]
        assert isinstance(head, RequestHead) and head.keep_alive
        assert events[1] == chunks and events[2] is END
    events = parse(data + b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n")
    assert [e.path for e in events if isinstance(e, RequestHead)] == ["/up", "/next"]
    events = parse(data.replace(b"Upgrade, ", b"close, Upgrade, ") + b"GET /n HTTP/1.1\r\n\r\n")
    assert [e.path for e in events if isinstance(e, RequestHead)] == ["/up"]  # a last one


def test_reset_reuses_parser_state() -> None:
    p = RequestParser(CFG)
    p.feed(b"GET / HTTP/1.1\r\nHo")
    assert p.in_head
    p.reset(client=("1.2.3.4", 5))
    p.feed(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
    assert isinstance(p.events[0], RequestHead) and p.events[0].client == ("1.2.3.4", 5)
    assert "RequestParser" in repr(p)


# --- responses ---


def test_response_head_fixed_length() -> None:
    head, chunked, keep = response_head(
        200,
        [(b"content-type", b"text/plain")],
        content_length=5,
        keep_alive=True,
        server=b"server: t\r\n",
    )
    assert not chunked and keep
    assert head.startswith(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n")
    assert b"\r\ndate: " in head and b"server: t\r\n" in head and head.endswith(b"\r\n\r\n")
    assert b"connection" not in head


def test_response_head_streamed_and_close() -> None:
    head, chunked, _ = response_head(200, [], content_length=None, keep_alive=True)
    assert chunked and b"transfer-encoding: chunked\r\n" in head
    head, chunked, keep = response_head(200, [], content_length=None, keep_alive=True, http10=True)
    assert not chunked and not keep and b"connection: close" in head
    head, _, keep = response_head(200, [], content_length=0, keep_alive=True, http10=True)
    assert keep and b"connection: keep-alive" in head
    head, _, keep = response_head(
        200, [(b"Connection", b"close")], content_length=0, keep_alive=True
    )
    assert not keep and head.count(b"onnection") == 1
    head, _, _ = response_head(204, [], content_length=0, keep_alive=True)
    assert b"content-length" not in head
    for status in (100, 101, 103, 199):  # not a final answer: the client would wait for one
        with pytest.raises(InvalidHeader, match="not a final response"):
            response_head(status, [], content_length=5, keep_alive=True)


@pytest.mark.parametrize(
    "headers",
    [
        [(b"x", b"a\r\nSet-Cookie: evil")],
        [(b"x", b"a\nb")],
        [(b"x", b"a\x00b")],
        [(b"x\r\ny", b"v")],
        [(b"bad name", b"v")],
        [(b"", b"v")],
    ],
)
def test_invalid_response_headers(headers: list[tuple[bytes, bytes]]) -> None:
    with pytest.raises(InvalidHeader):
        response_head(200, headers, content_length=0, keep_alive=True)
    with pytest.raises(InvalidHeader):  # a tuple is cached whole: still checked first
        response_head(200, tuple(headers), content_length=0, keep_alive=True)


CL = b"content-length"
TE = b"transfer-encoding"


@pytest.mark.parametrize(
    ("headers", "length", "why"),
    [
        ([(CL, b"10")], 3, "does not match"),  # a body shorter than announced: the client waits
        ([(CL, b"2")], 6, "does not match"),  # longer: the rest reads as the next response
        ([(CL, b"5")], 0, "does not match"),
        ([(CL, b"abc")], 3, "invalid response Content-Length"),
        ([(CL, b"3"), (CL, b"4")], 3, "invalid response Content-Length"),
        ([(TE, b"gzip")], 3, "does not end in chunked"),
        ([(TE, b"chunked"), (CL, b"3")], 3, "both"),
        ([(TE, b"gzip")], None, "does not end in chunked"),
        ([(CL, b"x")], None, "invalid response Content-Length"),
    ],
)
def test_handler_framing_headers_must_describe_the_body(
    headers: list[tuple[bytes, bytes]], length: int | None, why: str
) -> None:
    """A handler's Content-Length / Transfer-Encoding that does not frame the body that is sent
    would desynchronise the connection (a response split, or the next one swallowed)."""
    for given in (headers, tuple(headers)):
        with pytest.raises(InvalidHeader, match=why):
            response_head(200, given, content_length=length, keep_alive=True)


def test_handler_framing_headers_that_do_describe_the_body() -> None:
    head, chunked, _ = response_head(200, [(CL, b"3")], content_length=3, keep_alive=True)
    assert head.count(b"content-length") == 1 and not chunked
    # no body is sent: a HEAD answer or a 304 may announce the representation's length
    for status, head_only in ((200, True), (304, False)):
        head, chunked, _ = response_head(
            status, [(CL, b"10240")], content_length=0, keep_alive=True, head_only=head_only
        )
        assert b"content-length: 10240\r\n" in head and head.count(b"content-length") == 1
    with pytest.raises(InvalidHeader):  # the same headers for a GET: refused, not from a cache
        response_head(200, [(CL, b"10240")], content_length=0, keep_alive=True)
    # Transfer-Encoding: chunked on a whole body: the caller frames it, no Content-Length
    head, chunked, _ = response_head(200, [(TE, b"Chunked")], content_length=3, keep_alive=True)
    assert chunked and b"content-length" not in head and head.count(b"ransfer-encoding") == 1
    head, chunked, _ = response_head(200, [(TE, b"gzip, chunked")], None, keep_alive=True)
    assert chunked and head.count(b"ransfer-encoding") == 1
    # never chunked to an HTTP/1.0 client: the header is dropped, the length (or close) frames it
    head, chunked, _ = response_head(
        200, [(TE, b"chunked")], content_length=3, keep_alive=True, http10=True
    )
    assert not chunked and b"ransfer-encoding" not in head and b"content-length: 3\r\n" in head
    head, chunked, keep = response_head(200, [(TE, b"chunked")], None, True, http10=True)
    assert not chunked and not keep and b"ransfer-encoding" not in head


def test_cached_heads_same_for_tuple_and_list_headers_and_never_mixed_up() -> None:
    pairs = [(b"content-type", b"text/plain"), (b"x-a", b"1")]
    for _ in range(2):  # built, then from the cache
        from_tuple = response_head(200, tuple(pairs), content_length=3, keep_alive=True)
        from_list = response_head(200, list(pairs), content_length=3, keep_alive=True)
        assert from_tuple == from_list
        assert from_tuple[0].count(b"x-a: 1\r\n") == 1
    # a list whose one "pair" is the tuple of pairs: invalid, never the tuple's cached head
    with pytest.raises((InvalidHeader, TypeError)):
        response_head(200, [tuple(pairs)], content_length=3, keep_alive=True)  # type: ignore[list-item]


def test_status_lines_and_dates() -> None:
    assert status_line(404) == b"HTTP/1.1 404 Not Found\r\n"
    assert status_line(404) is status_line(404)
    assert status_line(599) == b"HTTP/1.1 599 \r\n"
    with pytest.raises(InvalidHeader):
        status_line(42)
    d1 = date_header(1_000_000_000.2)
    assert d1 == b"date: Sun, 09 Sep 2001 01:46:40 GMT\r\n"
    assert date_header(1_000_000_000.9) is d1
    assert date_header(1_000_000_001.0) != d1


def test_chunk_frames_and_file_slices() -> None:
    assert chunk_frame(b"") == []
    assert chunk_frame(b"abc") == [b"3\r\n", b"abc", b"\r\n"]
    fs = FileSlice(io.BytesIO(b"x" * 300), 10, 256)
    assert len(fs) == 256 and chunk_frame(fs)[0] == b"100\r\n" and chunk_frame(fs)[1] is fs
    assert LAST_CHUNK == b"0\r\n\r\n"
    head, body = error_response(400, "bad thing")
    assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n") and b"connection: close" in head
    assert body == b"bad thing\n" and b"content-length: 10\r\n" in head


def test_shrink_lets_the_llhttp_parser_go_only_between_messages() -> None:
    p = RequestParser(CFG)
    _feed_all(p, b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n")
    assert isinstance(p.events[0], RequestHead) and p.events[-1] is END
    p.events.clear()
    _feed_all(p, b"GET /b HTTP/1.1\r\nHo")  # a head in progress: the parser must stay
    assert not p.shrink()
    _feed_all(p, b"st: h\r\n\r\n")
    assert p.events[0].path == "/b" and p.events[-1] is END  # type: ignore[union-attr]
    p.events.clear()
    assert p.shrink()  # idle between messages: it goes...
    _feed_all(p, b"POST /c HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nok")
    head, body, end = p.events  # ...and a new one parses the next request as before
    assert isinstance(head, RequestHead) and head.path == "/c" and body == b"ok" and end is END
    p.events.clear()
    _feed_all(p, b"GET /d HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert not p.shrink()  # after a last message llhttp refuses more data: keep that parser
    p.events.clear()
    _feed_all(p, b"GET /e HTTP/1.1\r\nHost: h\r\n\r\n")
    assert isinstance(p.events[-1], ProtocolError)


def _heads(events: list[object]) -> list[RequestHead]:
    return [e for e in events if isinstance(e, RequestHead)]


def test_repeated_head_answered_from_the_head_cache_identically() -> None:
    from server import http11

    head = b"GET /cached?q=1 HTTP/1.1\r\nHost: h\r\nX-Rep: 7\r\nExpect: 100-continue\r\n\r\n"
    http11._head_cache.pop(head, None)
    first = parse(head)
    assert head in http11._head_cache  # accepted by llhttp, no body, keep-alive: cached
    p = RequestParser(CFG, client=("10.0.0.1", 5), scheme="https")
    p._p = None  # the cached path needs no llhttp parser at all...
    _feed_all(p, head + head)
    assert p._p is None and p.messages == 2  # ...and made none
    again = _heads(p.events)
    assert len(again) == 2 and p.events.count(END) == 2
    for h in again:
        assert (h.method, h.path, h.raw_path, h.query_string, h.http_version) == (
            "GET",
            "/cached",
            b"/cached",
            b"q=1",
            "1.1",
        )
        assert h.headers == _heads(first)[0].headers and h.expect_continue and h.keep_alive
        assert h.client == ("10.0.0.1", 5) and h.scheme == "https"
    assert again[0].headers is not again[1].headers  # each request gets its own list
    whole = RequestParser(CFG, client=("10.0.0.1", 5), scheme="https")
    whole._p = None
    assert whole.feed(head) == len(head)  # one whole head in one read: the whole read looked up
    assert whole._p is None and whole.events == [again[0], END] and whole.messages == 1
    # field by field the same as the llhttp path builds it (the cached path sets the fields
    # itself: a field added to RequestHead and not set there fails here)
    http11._head_cache.pop(head, None)
    p2 = RequestParser(CFG, client=("10.0.0.1", 5), scheme="https")
    _feed_all(p2, head)
    assert _heads(p2.events)[0] == again[0] and repr(_heads(p2.events)[0]) == repr(again[0])
    assert again[0].state == {} and again[0].state is not again[1].state
    # a body after a cached head still goes through llhttp from a clean state
    _feed_all(p, b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nok" + head)
    assert [type(e).__name__ for e in p.events[-5:]] == [
        "RequestHead",
        "bytes",
        "_End",
        "RequestHead",
        "_End",
    ]


def test_head_cache_still_applies_each_configs_limits() -> None:
    from server import http11

    head = b"GET /limits HTTP/1.1\r\nHost: h\r\nX-A: 1\r\nX-B: 2\r\n\r\n"
    parse(head)
    assert head in http11._head_cache
    assert error_of(head, Config(max_header_count=2)).status == 431
    assert error_of(head, Config(max_request_line=10)).status == 414
    assert error_of(head, Config(max_header_size=12)).status == 431
    assert _heads(parse(head, Config(max_header_count=3)))[0].path == "/limits"


@pytest.mark.parametrize(
    "head",
    [
        b"GET /close HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",  # last message
        b"GET /ten HTTP/1.0\r\n\r\n",  # 1.0 without keep-alive
        b"POST /body HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\n",  # has a body
        b"GET /up HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n",
        b"GET /bad HTTP/1.1\r\nHost: h\r\nHost: i\r\n\r\n",  # refused
    ],
)
def test_head_cache_keeps_only_plain_accepted_heads(head: bytes) -> None:
    from server import http11

    parse(head)
    assert head not in http11._head_cache


def test_cached_head_after_a_last_message_is_refused_like_any_other() -> None:
    from server import http11

    head = b"GET /again HTTP/1.1\r\nHost: h\r\n\r\n"
    parse(head)
    assert head in http11._head_cache
    for last in (
        b"GET /c HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        b"GET /t HTTP/1.0\r\n\r\n",
    ):
        events = parse(last + head)  # llhttp refuses data after a last message...
        assert isinstance(events[-1], ProtocolError), events  # ...so must the cached path
        assert len(_heads(events)) == 1
