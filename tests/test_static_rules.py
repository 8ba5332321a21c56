"""The sans-IO static rules (server.static) and the open-file cache (server.filecache), no sockets."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server import static
from server.filecache import FileCache, FileView, open_beneath
from server.static import (
    Fields,
    FileInfo,
    accepted_encodings,
    content_type,
    evaluate_preconditions,
    if_range_holds,
    parse_range,
    plan_response,
    split_path,
)

ETAG = b'"1-2-3"'
MTIME = 1_700_000_000.5
LAST = static.http_date(MTIME)


def info(size: int = 1000) -> FileInfo:
    return FileInfo(size, MTIME, ETAG, LAST, b"text/plain; charset=utf-8")


@pytest.mark.parametrize(
    ("rel", "expected"),
    [
        ("", []),
        ("a/b.txt", ["a", "b.txt"]),
        ("a//b/./c", ["a", "b", "c"]),
        ("dir/", ["dir"]),
        ("%2e%2e/x", ["%2e%2e", "x"]),  # double-encoded: stays literal after the one decode
        ("../x", None),
        ("a/../../x", None),
        ("..", None),
        ("/etc/passwd", None),
        ("a\\..\\b", None),
        ("a\x00.png", None),
        (".env", None),
        ("a/.git/config", None),
    ],
)
def test_split_path(rel: str, expected: list[str] | None) -> None:
    assert split_path(rel) == expected


def test_split_path_dotfiles_allowed() -> None:
    assert split_path(".well-known/x", allow_dotfiles=True) == [".well-known", "x"]
    assert split_path("../x", allow_dotfiles=True) is None


@given(st.text())
def test_split_path_never_escapes(rel: str) -> None:
    segs = split_path(rel)
    if segs is not None:
        assert all(s not in ("", ".", "..") and "\x00" not in s and "\\" not in s for s in segs)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"Sun, 06 Nov 1994 08:49:37 GMT", 784111777.0),  # IMF-fixdate
        (b"Sunday, 06-Nov-94 08:49:37 GMT", 784111777.0),  # obsolete RFC 850
        (b"Sun Nov  6 08:49:37 1994", 784111777.0),  # asctime
        # not an HTTP-date (RFC 9110 13.1.3: the field is then ignored)
        (b"Sun, 06 Nov 1994 08:49:37 GMT, Sun, 06 Nov 1994 08:49:37 GMT", None),  # a list
        (b"Sun, 06 Nov 1994 08:49:37 +0100", None),
        (b"sun, 06 nov 1994 08:49:37 gmt", None),
        (b"Sun, 06 Nov 1994 08:49:37", None),
        (b"Sun, 06 Nov 94 08:49:37 GMT", None),
        (b"Sun, 31 Feb 1994 08:49:37 GMT", None),
        (b"Sun, 06 Nov 1994 25:49:37 GMT", None),
        (b"garbage", None),
        (b"", None),
    ],
)
def test_parse_http_date_takes_the_three_formats_only(value: bytes, expected: float | None) -> None:
    assert static.parse_http_date(value) == expected


def test_content_types() -> None:
    assert content_type("a.html") == b"text/html; charset=utf-8"
    assert content_type("a.CSS") == b"text/css; charset=utf-8"
    assert content_type("a.js") == b"text/javascript; charset=utf-8"
    assert content_type("a.json") == b"application/json; charset=utf-8"
    assert content_type("a.svg") == b"image/svg+xml; charset=utf-8"
    assert content_type("a.png") == b"image/png"
    assert content_type("a.woff2") == b"font/woff2"
    assert content_type("noext") == b"application/octet-stream"


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        (b"bytes=0-99", 1000, [(0, 99)]),
        (b"bytes=500-", 1000, [(500, 999)]),
        (b"bytes=-500", 1000, [(500, 999)]),
        (b"bytes=-5000", 1000, [(0, 999)]),
        (b"bytes=900-5000", 1000, [(900, 999)]),
        (b"bytes=0-0,-1", 1000, [(0, 0), (999, 999)]),
        (b"bytes=0-9, 5-19 ,20-29", 1000, [(0, 29)]),  # overlapping and adjacent merge
        (b"bytes=50-59,0-9", 1000, [(0, 9), (50, 59)]),  # sorted
        (b"bytes=1000-", 1000, 416),
        (b"bytes=2000-3000,5000-", 1000, 416),
        (b"bytes=-0", 1000, 416),
        (b"bytes=0-", 0, 416),
        (b"bytes=1000-,0-1", 1000, [(0, 1)]),  # unsatisfiable ones dropped
        (b"bytes=5-2", 1000, None),  # invalid: ignore Range
        (b"bytes=a-b", 1000, None),
        (b"bytes=-", 1000, None),
        (b"items=0-1", 1000, None),
        (b"bytes", 1000, None),
        (b"bytes=0-1,0-", 1000, None),  # asks for more than the file: serve it once (200)
    ],
)
def test_parse_range(header: bytes, size: int, expected: object) -> None:
    assert parse_range(header, size) == expected


def test_range_caps_do_not_amplify() -> None:
    # the "Apache Killer" shape: many overlapping ranges
    killer = b"bytes=0-," + b",".join(b"5-%d" % i for i in range(6, 1300))
    assert parse_range(killer, 10_000) is None
    many = b"bytes=" + b",".join(b"%d-%d" % (i * 10, i * 10) for i in range(17))
    assert parse_range(many, 1000) is None  # 17 ranges after merging
    sixteen = b"bytes=" + b",".join(b"%d-%d" % (i * 10, i * 10) for i in range(16))
    assert len(parse_range(sixteen, 1000)) == 16  # type: ignore[arg-type]


@given(st.lists(st.tuples(st.integers(0, 3000), st.integers(0, 3000)), min_size=1, max_size=30))
def test_parse_range_never_more_than_file(pairs: list[tuple[int, int]]) -> None:
    header = b"bytes=" + b",".join(b"%d-%d" % (min(p), max(p)) for p in pairs)
    result = parse_range(header, 2000)
    if isinstance(result, list):
        assert sum(e - s + 1 for s, e in result) <= 2000
        assert all(0 <= s <= e < 2000 for s, e in result)
        assert all(a[1] + 1 < b[0] for a, b in itertools.pairwise(result))


def test_preconditions() -> None:
    ims_same = static.http_date(MTIME)
    older = static.http_date(MTIME - 3600)
    assert evaluate_preconditions("GET", Fields(inm=ETAG), ETAG, MTIME) == 304
    assert evaluate_preconditions("GET", Fields(inm=b'W/"1-2-3"'), ETAG, MTIME) == 304  # weak
    assert evaluate_preconditions("GET", Fields(inm=b'"x", "1-2-3"'), ETAG, MTIME) == 304
    assert evaluate_preconditions("GET", Fields(inm=b"*"), ETAG, MTIME) == 304
    assert evaluate_preconditions("GET", Fields(inm=b'"other"'), ETAG, MTIME) is None
    assert evaluate_preconditions("HEAD", Fields(ims=ims_same), ETAG, MTIME) == 304
    assert evaluate_preconditions("GET", Fields(ims=older), ETAG, MTIME) is None
    assert evaluate_preconditions("GET", Fields(ims=b"garbage"), ETAG, MTIME) is None
    # If-None-Match takes precedence over If-Modified-Since
    assert evaluate_preconditions("GET", Fields(inm=b'"x"', ims=ims_same), ETAG, MTIME) is None
    assert evaluate_preconditions("GET", Fields(if_match=b'"x"'), ETAG, MTIME) == 412
    assert evaluate_preconditions("GET", Fields(if_match=ETAG), ETAG, MTIME) is None
    assert evaluate_preconditions("GET", Fields(ius=older), ETAG, MTIME) == 412


def test_if_range() -> None:
    assert if_range_holds(None, ETAG, MTIME)
    assert if_range_holds(ETAG, ETAG, MTIME)
    assert not if_range_holds(b'W/"1-2-3"', ETAG, MTIME)  # weak never matches
    assert not if_range_holds(b'"other"', ETAG, MTIME)
    assert if_range_holds(LAST, ETAG, MTIME)
    assert not if_range_holds(static.http_date(MTIME + 10), ETAG, MTIME)


def test_accept_encoding() -> None:
    assert accepted_encodings(None) == []
    assert accepted_encodings(b"gzip, deflate, br") == ["br", "gzip"]
    assert accepted_encodings(b"gzip;q=1.0, br;q=0.5") == ["gzip", "br"]
    assert accepted_encodings(b"br;q=0, gzip") == ["gzip"]
    assert accepted_encodings(b"*") == ["br", "gzip"]
    assert accepted_encodings(b"*;q=0, identity") == []
    assert accepted_encodings(b"identity;q=0") == []
    assert accepted_encodings(b"GZIP ; Q=0.2") == ["gzip"]


def test_plans() -> None:
    p = plan_response("GET", Fields(), info(), cache_control=b"max-age=60")
    assert p.status == 200 and p.length == 1000 and p.parts == [(b"", 0, 1000)]
    names = [n for n, _ in p.headers]
    assert b"etag" in names and b"last-modified" in names and b"accept-ranges" in names
    assert (b"cache-control", b"max-age=60") in p.headers
    p = plan_response("GET", Fields(inm=ETAG), info(), vary=True)
    assert p.status == 304 and not p.body and (b"vary", b"Accept-Encoding") in p.headers
    assert (b"etag", ETAG) in p.headers
    p = plan_response("GET", Fields(range=b"bytes=10-19"), info())
    assert (
        p.status == 206 and p.length == 10 and (b"content-range", b"bytes 10-19/1000") in p.headers
    )
    p = plan_response("GET", Fields(range=b"bytes=5000-"), info())
    assert p.status == 416 and (b"content-range", b"bytes */1000") in p.headers
    p = plan_response("GET", Fields(range=b"bytes=0-1", if_range=b'"old"'), info())
    assert p.status == 200 and p.length == 1000
    p = plan_response("HEAD", Fields(range=b"bytes=0-1"), info())
    assert p.status == 206 and p.length == 2 and not p.body
    p = plan_response("GET", Fields(range=b"bytes=0-1,10-12"), info())
    ctype = dict(p.headers)[b"content-type"]
    assert ctype.startswith(b"multipart/byteranges; boundary=")
    boundary = ctype.split(b"=", 1)[1]
    data = bytes(range(256)) * 4
    body = b"".join(prefix + data[o : o + c] for prefix, o, c in p.parts) + p.trailer
    assert len(body) == p.length
    assert body.endswith(b"\r\n--" + boundary + b"--\r\n")
    assert b"content-range: bytes 0-1/1000\r\n\r\n" + data[0:2] in body
    assert b"content-range: bytes 10-12/1000\r\n\r\n" + data[10:13] in body


def test_listing_escapes() -> None:
    page = static.directory_listing("/d/<x>/", [("<script>.txt", False), ('a"b', True)])
    assert b"<script>" not in page and b"&lt;script&gt;.txt" in page
    assert b'href="a%22b/"' in page and b"&lt;x&gt;" in page
    odd = static.directory_listing(
        "/", [(b"caf\xe9.txt".decode("utf-8", "surrogateescape"), False)]
    )
    assert b'href="caf%E9.txt"' in odd and "caf\ufffd.txt".encode() in odd


# --- filecache ---


def test_open_beneath(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "f.txt").write_text("f")
    (root / ".hidden").write_text("h")
    (tmp_path / "secret").write_text("s")
    os.symlink(tmp_path / "secret", root / "out")
    os.symlink(root / ".hidden", root / "to-hidden")
    os.symlink(root / "f.txt", root / "sub" / "in")
    os.mkfifo(root / "fifo")
    r = str(root)
    opened = open_beneath(r, "f.txt")
    assert opened is not None
    os.close(opened[0])
    opened = open_beneath(r, "sub/in")
    assert opened is not None and opened[1] == str(root / "f.txt")
    os.close(opened[0])
    assert open_beneath(r, "out") is None
    assert open_beneath(r, "to-hidden") is None
    assert open_beneath(r, "missing") is None
    opened = open_beneath(r, "fifo")  # opens without blocking; the cache refuses it by type
    assert opened is not None
    os.close(opened[0])
    cache = FileCache()
    e = cache.acquire(r, "fifo")
    assert e.missing and e.fd == -1
    cache.release(e)


def test_cache_hits_revalidation_and_eviction(tmp_path: Path, fd_count: object) -> None:
    count = fd_count  # type: ignore[assignment]
    before = count()  # type: ignore[operator]
    for i in range(5):
        (tmp_path / f"{i}.txt").write_text(f"v{i}")
    r = str(tmp_path)
    cache = FileCache(max_entries=3, stat_interval=0)
    e = cache.acquire(r, "0.txt")
    assert e.fd >= 0 and e.info is not None and e.info.size == 2
    etag = e.info.etag
    cache.release(e)
    e2 = cache.acquire(r, "0.txt")
    assert e2 is e and cache.hits == 1
    cache.release(e2)
    (tmp_path / "0.txt").write_text("changed")
    e3 = cache.acquire(r, "0.txt")
    assert e3 is not e and e3.info is not None and e3.info.etag != etag and cache.reopens == 1
    assert e.fd == -1  # the replaced entry closed its fd (no user held it)
    held = cache.acquire(r, "1.txt")
    for i in (2, 3, 4):
        cache.release(cache.acquire(r, f"{i}.txt"))
    assert len(cache) == 3 and cache.evictions >= 2
    assert held.fd >= 0  # evicted while in use: still open
    assert FileView(held.fd).read() == b"v1"
    cache.release(held)
    assert held.fd == -1
    cache.release(e3)
    cache.close()
    assert len(cache) == 0
    assert count() == before  # type: ignore[operator]
    assert "FileCache" in repr(cache) and "OpenFile" in repr(e3)


def test_cache_miss_is_cached_then_resolved_again(tmp_path: Path) -> None:
    r = str(tmp_path)
    now = [100.0]
    cache = FileCache(resolve_interval=1.0)
    cache._clock = lambda: now[0]  # a fake clock instead of sleeping
    e = cache.acquire(r, "late.txt")
    assert e.missing
    cache.release(e)
    (tmp_path / "late.txt").write_text("here")
    e = cache.acquire(r, "late.txt")
    assert e.missing  # the cached miss holds for resolve_interval
    cache.release(e)
    now[0] += 1.5
    e = cache.acquire(r, "late.txt")
    assert not e.missing and e.info is not None and e.info.size == 4
    cache.release(e)
    cache.close()


def test_file_view_uses_its_own_position(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"0123456789")
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        a, b = FileView(fd), FileView(fd)
        a.seek(5)
        assert b.read(3) == b"012" and a.read(3) == b"567" and a.tell() == 8
        buf = bytearray(4)
        assert b.readinto(buf) == 4 and bytes(buf) == b"3456"
        assert os.lseek(fd, 0, os.SEEK_CUR) == 0  # the shared offset never moved
    finally:
        os.close(fd)
