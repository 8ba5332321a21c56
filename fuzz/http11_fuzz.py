"""Fuzz the sans-IO HTTP/1.1 request parser (:class:`server.http11.RequestParser`).

Theory of operation
-------------------
Input layout: byte 0 picks a configuration (default limits, or tiny limits so the 414/431/413
and chunk-extension paths are reachable by short inputs), byte 1 seeds how the stream is cut
into reads, the rest is the byte stream a client sent. The stream is parsed twice, whole and
cut into pieces; each run must keep the feeding contract and the two runs must agree.

Invariants checked (any violation raises AssertionError, which libFuzzer reports as a crash):

* ``feed`` always makes progress and never goes past the end of the data; nothing but
  ``ProtocolError`` *events* comes out (no exception escapes);
* events form ``(RequestHead bytes* END)* [RequestHead bytes*] [ProtocolError]``; after a
  ProtocolError the parser is dead and emits nothing more; error statuses are 4xx/5xx;
* heads: version ``1.0``/``1.1``; method a non-empty token; header names lower-case, no CR, LF
  or NUL anywhere in a name or value; at most ``max_header_count`` fields; the body delivered
  for a Content-Length request is never longer than announced and never exceeds
  ``max_body_size``;
* split invariance: the heads, joined bodies and END markers are identical however the
  stream is cut, and so is the presence of a final error (its status may differ only between
  limit answers, see ``docs/hardening.md``).

Run: ``python fuzz/http11_fuzz.py -max_total_time=600 fuzz/corpus/http11`` (see README.md).
"""

from __future__ import annotations

import random
import re
import sys

if __package__ in (None, ""):
    import common  # run as a script: fuzz/ is on sys.path
else:
    from fuzz import common  # imported by tests/test_fuzz.py

from server.config import Config
from server.exchange import RequestHead
from server.http11 import END, ProtocolError, RequestParser

CONFIGS = (
    Config(),
    Config(
        max_request_line=64,
        max_header_size=128,
        max_header_count=4,
        max_body_size=32,
        max_chunk_ext=16,
    ),
)
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_BAD = re.compile(rb"[\r\n\x00]")
#: statuses that may legitimately differ with the cut: our limits (414, 431) are checked on the
#: head held so far, llhttp reports a syntax error (400; 501 for a bad Transfer-Encoding or an
#: unknown method, 505 for an unknown version) at
#: the byte where it finds it, so which trips first depends on how much of the head each had
#: seen (docs/hardening.md). Rejection itself must never depend on the cut.
LIMIT_STATUSES = frozenset({400, 414, 431, 501, 505})

Norm = tuple[object, ...]


def feed_all(parser: RequestParser, pieces: list[bytes], limit: int = 1) -> list[object]:
    """Feed each piece completely (the I/O layer's loop); return every event."""
    for piece in pieces:
        pos = 0
        n = len(piece)
        while pos < n:
            new = parser.feed(piece, pos, limit)
            assert pos < new <= n, f"feed made no progress or overran: {pos} -> {new} of {n}"
            pos = new
    events = list(parser.events)
    parser.events.clear()
    return events


def check_events(events: list[object], config: Config) -> list[Norm]:
    """Check the event grammar and the head invariants; return a normalised sequence."""
    out: list[Norm] = []
    in_message = False
    body_len = 0
    cl = -1
    for i, ev in enumerate(events):
        if isinstance(ev, ProtocolError):
            assert i == len(events) - 1, f"events after an error: {events[i:]!r}"
            assert 400 <= ev.status <= 599, ev
            out.append(("error", ev.status))
        elif isinstance(ev, RequestHead):
            assert not in_message, "a head inside a message"
            check_head(ev, config)
            in_message = True
            body_len = 0
            raw_cl = ev.get_header(b"content-length")
            cl = int(raw_cl) if raw_cl is not None else -1
            out.append(
                (
                    "head",
                    ev.method,
                    ev.path,
                    ev.raw_path,
                    ev.query_string,
                    ev.http_version,
                    tuple(ev.headers),
                    ev.keep_alive,
                    ev.expect_continue,
                )
            )
        elif type(ev) is bytes:
            assert in_message and ev, "a body chunk outside a message (or an empty one)"
            body_len += len(ev)
            assert body_len <= config.max_body_size, "body beyond max_body_size delivered"
            assert cl < 0 or body_len <= cl, "body longer than Content-Length"
            if out and out[-1][0] == "body":
                out[-1] = ("body", out[-1][1] + ev)  # type: ignore[operator]
            else:
                out.append(("body", ev))
        elif ev is END:
            assert in_message, "END outside a message"
            assert cl < 0 or body_len == cl, f"END after {body_len} of {cl} body bytes"
            in_message = False
            out.append(("end",))
        else:
            raise AssertionError(f"unknown event {ev!r}")
    return out


def check_head(head: RequestHead, config: Config) -> None:
    assert head.http_version in ("1.0", "1.1"), head.http_version
    assert head.method and _TOKEN.match(head.method), head.method
    assert len(head.headers) <= config.max_header_count
    for name, value in head.headers:
        assert name and name == name.lower(), name
        assert not _BAD.search(name) and not _BAD.search(value), (name, value)
        assert b":" not in name, name
    assert isinstance(head.path, str) and isinstance(head.raw_path, bytes)
    if head.http_version == "1.1":
        assert sum(1 for k, _ in head.headers if k == b"host") == 1


def cuts(data: bytes, seed: int) -> list[bytes]:
    """``data`` cut into pieces: single bytes, small and large reads, chosen by ``seed``."""
    rng = random.Random(seed)
    style = seed % 4
    out = []
    i = 0
    while i < len(data):
        if style == 0:
            step = 1
        elif style == 1:
            step = rng.randint(1, 4)
        else:
            step = rng.randint(1, 64 if style == 2 else 1024)
        out.append(data[i : i + step])
        i += step
    return out


def test_one_input(data: bytes) -> None:
    if len(data) < 2:
        return
    config = CONFIGS[data[0] % len(CONFIGS)]
    stream = data[2:]
    whole = check_events(feed_all(RequestParser(config), [stream]), config)
    # whole cached requests taken in batches (the connection's pipelined path): same events
    batched = check_events(feed_all(RequestParser(config), [stream, stream], 16), config)
    again = check_events(feed_all(RequestParser(config), [stream, stream]), config)
    assert batched == again, f"batching changes the result:\n{again!r}\n{batched!r}"
    split = check_events(feed_all(RequestParser(config), cuts(stream, data[1])), config)
    a_err = whole[-1] if whole and whole[-1][0] == "error" else None
    b_err = split[-1] if split and split[-1][0] == "error" else None
    assert (a_err is None) == (b_err is None), f"error only one way:\n{whole!r}\n{split!r}"
    if a_err is not None and b_err is not None:
        if a_err != b_err:
            # which limit trips first may depend on the cut
            assert {a_err[1], b_err[1]} <= LIMIT_STATUSES, (a_err, b_err)
        # the body of the message that failed may have been delivered up to a different
        # point (a 413 found in a larger read delivers less); one must extend the other
        whole, split = whole[:-1], split[:-1]
        a_body = whole.pop()[1] if whole and whole[-1][0] == "body" else b""
        b_body = split.pop()[1] if split and split[-1][0] == "body" else b""
        assert a_body.startswith(b_body) or b_body.startswith(a_body), (a_body, b_body)  # type: ignore[union-attr]
    assert whole == split, f"split changes the result:\n{whole!r}\n{split!r}"
    # a parser reused after reset() behaves like a fresh one
    p = RequestParser(config)
    feed_all(p, [stream[: len(stream) // 2]])
    p.reset()
    again = check_events(feed_all(p, [stream]), config)
    assert again == check_events(feed_all(RequestParser(config), [stream]), config)


if __name__ == "__main__":
    common.run(test_one_input)
    sys.exit(0)
