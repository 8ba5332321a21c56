"""Fuzz ``Range`` parsing and the static response plan (:mod:`server.static`).

Theory of operation
-------------------
Input layout: byte 0 picks the file size class (0, 1, small, 10 KiB, 1 GiB, 2**62), bytes 1..2
refine it, byte 3 picks the method and which conditional headers are present; the rest,
split at the first ``\\n``, is the ``Range`` value and an ``If-Range`` value (so the fuzzer can
reach both). The oracle is the policy in the :mod:`server.static` docstring:

* :func:`~server.static.parse_range` returns ``None``, ``416`` or a non-empty list of
  ``(start, end)`` with ``0 <= start <= end < size``, sorted, neither overlapping nor adjacent,
  at most ``MAX_RANGES`` of them, never more bytes in total than the file (no amplification);
* :func:`~server.static.plan_response` never raises, its ``length`` equals the bytes its
  parts and trailer describe, every part lies inside the file, a 206 carries a
  ``content-range`` that matches its single part (or is multipart), a 416 names the size, and
  HEAD plans have no body;
* the precondition helpers (``parse_http_date``, ``if_range_holds``,
  ``evaluate_preconditions``, ``accepted_encodings``) never raise on any bytes.

Run: ``python fuzz/range_fuzz.py -max_total_time=600 fuzz/corpus/range`` (see README.md).
"""

from __future__ import annotations

import sys

if __package__ in (None, ""):
    import common  # run as a script: fuzz/ is on sys.path
else:
    from fuzz import common

from server import static

SIZES = (0, 1, 7, 10 * 1024, 1 << 30, 1 << 62)
ETAG = b'"1-2-3"'
MTIME = 784111777.0  # Sun, 06 Nov 1994 08:49:37 GMT
LAST_MODIFIED = b"Sun, 06 Nov 1994 08:49:37 GMT"


def file_size(data: bytes) -> int:
    base = SIZES[data[0] % len(SIZES)]
    return max(0, base + int.from_bytes(data[1:3], "big") % 1024 - 512) if base > 1 else base


def check_ranges(ranges: object, size: int) -> None:
    if ranges is None or ranges == 416:
        return
    assert isinstance(ranges, list) and ranges, ranges
    assert len(ranges) <= static.MAX_RANGES, len(ranges)
    prev_end = -2
    total = 0
    for start, end in ranges:
        assert 0 <= start <= end < size, (start, end, size)
        assert start > prev_end + 1, f"overlapping or adjacent ranges survived: {ranges!r}"
        prev_end = end
        total += end - start + 1
    assert total <= size, f"ranges ask for {total} bytes of a {size}-byte file"


def check_plan(plan: static.Plan, size: int, method: str) -> None:
    described = sum(len(prefix) + count for prefix, _, count in plan.parts) + len(plan.trailer)
    headers = dict(plan.headers)
    if plan.status in (200, 206):
        assert plan.length == described, (plan, described)
        for _, offset, count in plan.parts:
            assert 0 <= offset and count > 0 and offset + count <= size, (offset, count, size)
        if method == "HEAD":
            assert not plan.body
    if plan.status == 206:
        ctype = headers[b"content-type"]
        if ctype.startswith(b"multipart/byteranges"):
            assert len(plan.parts) > 1 and plan.trailer
        else:
            (_, offset, count) = plan.parts[0]
            expect = b"bytes %d-%d/%d" % (offset, offset + count - 1, size)
            assert headers[b"content-range"] == expect, (headers, expect)
    elif plan.status == 416:
        assert headers[b"content-range"] == b"bytes */%d" % size and not plan.body
    else:
        assert plan.status in (200, 304, 412), plan


def test_one_input(data: bytes) -> None:
    if len(data) < 4:
        return
    size = file_size(data)
    flags = data[3]
    rest = data[4:]
    range_value, _, if_range = rest.partition(b"\n")
    check_ranges(static.parse_range(range_value, size), size)
    method = "HEAD" if flags & 1 else "GET"
    headers = [(b"range", range_value)]
    if flags & 2:
        headers.append((b"if-range", if_range))
    if flags & 4:
        headers.append((b"if-none-match", if_range))
    if flags & 8:
        headers.append((b"if-modified-since", if_range))
    if flags & 16:
        headers.append((b"if-match", if_range))
    if flags & 32:
        headers.append((b"if-unmodified-since", if_range))
    if flags & 64:
        headers.append((b"accept-encoding", if_range))
    fields = static.request_fields(headers)
    static.parse_http_date(if_range)
    static.if_range_holds(if_range, ETAG, MTIME)
    static.accepted_encodings(if_range)
    info = static.FileInfo(size, MTIME, ETAG, LAST_MODIFIED, b"text/plain; charset=utf-8")
    plan = static.plan_response(method, fields, info)
    check_plan(plan, size, method)


if __name__ == "__main__":
    common.run(test_one_input)
    sys.exit(0)
