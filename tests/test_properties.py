"""Property tests (hypothesis) of the sans-IO HTTP/1.1 core.

Properties:

* **split invariance**: the requests parsed from a byte stream are the same however the
  stream is cut into reads (generated valid pipelines, and arbitrary bytes too, where the
  fuzz harness's oracle in ``fuzz/http11_fuzz.py`` is reused);
* **request round trip**: a generated request (method, target, headers, body with
  Content-Length or chunked framing with extensions and trailers, HTTP/1.0 or 1.1) serialised
  to bytes parses back to the same method, path, query, headers and body;
* **response round trip**: ``response_head`` + body (or ``chunk_frame`` pieces and
  ``LAST_CHUNK``) parse back with h11 as the client to the same status, headers and body.

Example counts are modest for CI (the file runs in a few seconds). For a longer local run:
``NETPOLL_HYPOTHESIS_PROFILE=long pytest tests/test_properties.py`` (20x the examples).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import h11
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: fuzz/

import test_http11

from fuzz import http11_fuzz
from server.config import Config
from server.exchange import RequestHead
from server.http11 import END, LAST_CHUNK, ProtocolError, chunk_frame, response_head

settings.register_profile(
    "ci",
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "long",
    max_examples=3000,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
PROFILE = settings.get_profile(os.environ.get("NETPOLL_HYPOTHESIS_PROFILE", "ci"))
CONFIG = Config(max_body_size=1 << 20)

TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
RESERVED = {b"host", b"content-length", b"transfer-encoding", b"connection", b"expect"}
RESERVED |= {b"upgrade", b"trailer", b"te", b"keep-alive", b"proxy-connection"}

methods = st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "PROPFIND"])
tokens = st.text(TCHAR, min_size=1, max_size=12)
path_chars = st.sampled_from(
    [*"abcXYZ019-._~!$&'()*+,;=:@", "%20", "%2F", "%25", "%C3%A9", "%e2%82%ac"]
)
segments = st.lists(path_chars, min_size=0, max_size=6).map("".join)
paths = st.lists(segments, min_size=1, max_size=4).map(lambda s: "/" + "/".join(s))
queries = st.one_of(st.none(), st.lists(path_chars | st.just("/?"), max_size=8).map("".join))
# field-value: visible ASCII, obs-text, inner spaces/tabs (never leading or trailing)
value_chars = st.sampled_from(
    [*(bytes([c]) for c in range(0x21, 0x7F)), b"\x80", b"\xff", b" ", b"\t"]
)
values = st.lists(value_chars, max_size=20).map(lambda cs: b"".join(cs).strip(b" \t"))
header_lists = st.lists(
    st.tuples(tokens.map(str.encode), values).filter(lambda kv: kv[0].lower() not in RESERVED),
    max_size=8,
)
bodies = st.binary(max_size=300)
ows = st.sampled_from([b"", b" ", b"\t", b"  "])


@dataclass
class Req:
    """A generated request and its expected parse."""

    method: str
    path: str  # raw, as on the wire
    query: str | None
    version: str
    headers: list[tuple[bytes, bytes]]  # expected: lower-case names, OWS-stripped values
    body: bytes
    wire: bytes


@st.composite
def requests(draw: st.DrawFn, allow_chunked: bool = True) -> Req:
    method = draw(methods)
    path = draw(paths)
    query = draw(queries)
    version = draw(st.sampled_from(["1.1", "1.1", "1.0"]))
    extra = draw(header_lists)
    body = draw(bodies)
    framing = draw(st.sampled_from(["cl", "chunked", "none"] if allow_chunked else ["cl", "none"]))
    if version == "1.0" and framing == "chunked":
        framing = "cl"
    if framing == "none" and body:
        framing = "cl"
    target = path + ("?" + query if query is not None else "")
    lines = [f"{method} {target} HTTP/{version}".encode()]
    expected: list[tuple[bytes, bytes]] = []
    if version == "1.1":
        lines.append(b"Host: example.test")
        expected.append((b"host", b"example.test"))
    for name, value in extra:
        lines.append(name + b":" + draw(ows) + value + draw(ows))
        expected.append((name.lower(), value))
    if version == "1.0":
        lines.append(b"Connection: keep-alive")  # so a pipeline can follow
        expected.append((b"connection", b"keep-alive"))
    if framing == "cl":
        lines.append(b"Content-Length: %d" % len(body))
        expected.append((b"content-length", b"%d" % len(body)))
        payload = body
    elif framing == "chunked":
        lines.append(b"Transfer-Encoding: chunked")
        expected.append((b"transfer-encoding", b"chunked"))
        payload = b""
        rest = body
        while rest:
            n = draw(st.integers(1, len(rest)))
            ext = draw(st.sampled_from([b"", b";a=1", b";name", b';q="x y"']))
            payload += b"%x%s\r\n%s\r\n" % (n, ext, rest[:n])
            rest = rest[n:]
        payload += b"0\r\n"
        if draw(st.booleans()):
            payload += b"X-Trailer: t\r\n"
        payload += b"\r\n"
    else:
        payload = b""
    wire = b"\r\n".join(lines) + b"\r\n\r\n" + payload
    return Req(method, path, query, version, expected, body, wire)


def parse(stream: bytes, cuts: list[int]) -> list[object]:
    """Events for ``stream`` cut at ``cuts`` (any order, repeats and out-of-range points
    allowed); adjacent body chunks joined."""
    points = sorted({c for c in cuts if 0 < c < len(stream)})
    return test_http11.parse(stream, CONFIG, points)


def as_messages(events: list[object]) -> list[tuple[RequestHead, bytes]]:
    msgs: list[tuple[RequestHead, bytes]] = []
    head: RequestHead | None = None
    body = b""
    for ev in events:
        assert not isinstance(ev, ProtocolError), ev
        if isinstance(ev, RequestHead):
            head, body = ev, b""
        elif type(ev) is bytes:
            body += ev
        elif ev is END:
            assert head is not None
            msgs.append((head, body))
            head = None
    assert head is None, "a message did not complete"
    return msgs


@PROFILE
@given(st.lists(requests(), min_size=1, max_size=4), st.lists(st.integers(0, 4000), max_size=12))
def test_pipeline_round_trip_and_split_invariance(reqs: list[Req], cuts: list[int]) -> None:
    stream = b"".join(r.wire for r in reqs)
    whole = as_messages(parse(stream, []))
    split = as_messages(parse(stream, cuts))
    bytewise = as_messages(parse(stream, list(range(len(stream)))))
    assert whole == split == bytewise
    assert len(whole) == len(reqs)
    for (head, body), req in zip(whole, reqs, strict=True):
        assert head.method == req.method
        assert head.raw_path == req.path.encode()
        assert head.query_string == (req.query or "").encode()
        assert head.http_version == req.version
        assert head.headers == req.headers
        assert body == req.body


@PROFILE
@given(st.binary(max_size=600), st.integers(0, 255), st.integers(0, 1))
def test_arbitrary_bytes_split_invariance(data: bytes, seed: int, config: int) -> None:
    """The fuzz harness's oracle (event grammar, head invariants, split invariance)."""
    http11_fuzz.test_one_input(bytes([config, seed]) + data)


@PROFILE
@given(requests(), st.binary(max_size=80))
def test_valid_request_then_garbage(req: Req, garbage: bytes) -> None:
    """Whatever follows a complete request, that request is delivered intact first."""
    events = parse(req.wire + garbage, [len(req.wire) // 2])
    assert isinstance(events[0], RequestHead) and events[0].raw_path == req.path.encode()
    body = events[1] if type(events[1]) is bytes else b""
    assert body == req.body
    assert events[2 if req.body else 1] is END


statuses = st.sampled_from([200, 201, 204, 206, 301, 304, 400, 404, 418, 500, 503, 599])
resp_headers = st.lists(
    st.tuples(tokens.map(str.encode), values).filter(
        lambda kv: kv[0].lower() not in RESERVED | {b"date", b"server"}
    ),
    max_size=6,
)


def h11_read(wire: bytes, method: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Parse one response with h11 acting as the client that sent ``method``."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method=method, target="/", headers=[("Host", "x")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(wire)
    conn.receive_data(b"")  # EOF: ends a close-delimited body
    status = -1
    headers: list[tuple[bytes, bytes]] = []
    body = b""
    while True:
        ev = conn.next_event()
        if isinstance(ev, h11.Response):
            status = ev.status_code
            headers = list(ev.headers)
        elif isinstance(ev, h11.Data):
            body += ev.data
        elif isinstance(ev, h11.EndOfMessage | h11.ConnectionClosed):
            return status, headers, body
        elif ev is h11.NEED_DATA or ev is h11.PAUSED:
            raise AssertionError(f"h11 wants more data: {wire!r}")


@PROFILE
@given(statuses, resp_headers, bodies, st.booleans(), st.booleans(), st.booleans())
def test_response_round_trip_with_h11(
    status: int,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    streamed: bool,
    keep_alive: bool,
    head_request: bool,
) -> None:
    no_body = status in (204, 304) or head_request
    if status in (204, 304):
        body = b""
    head, chunked, _ = response_head(
        status,
        headers,
        content_length=None if streamed else len(body),
        keep_alive=keep_alive,
        server=b"server: netpoll\r\n",
    )
    if no_body:
        wire = head
    elif chunked:
        pieces: list[bytes] = []
        for i in range(0, len(body), 37):
            pieces += [bytes(x) for x in chunk_frame(body[i : i + 37])]  # type: ignore[arg-type]
        wire = head + b"".join(pieces) + LAST_CHUNK
    else:
        wire = head + body
    got_status, got_headers, got_body = h11_read(wire, b"HEAD" if head_request else b"GET")
    assert got_status == status
    assert got_body == (b"" if no_body else body)
    sent = [(k.lower(), v) for k, v in headers]
    assert [kv for kv in got_headers if kv[0] in {k for k, _ in sent}] == sent
    names = [k for k, _ in got_headers]
    assert names.count(b"date") == 1 and names.count(b"server") == 1
    if not keep_alive:
        assert (b"connection", b"close") in got_headers
