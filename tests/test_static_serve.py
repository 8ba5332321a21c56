"""Static files over real sockets on every loop: bodies, caching, ranges, safety, faults.

Each async test runs on netpoll (sendfile path), uvloop (read + write fallback) and stock
asyncio. Clients: httpx, http.client (exact request targets, no normalisation) and curl.
"""

from __future__ import annotations

import asyncio
import gzip
import http.client
import os
import shutil
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_connection import Raw, read_response, unread_pipeline

from server import App, FileResponse, Request, Response
from server.config import Config
from server.staticfiles import StaticFiles
from server.testing import live_server

pytestmark = pytest.mark.timeout(60)

BIG = 3 * 1024 * 1024 + 17  # several sendfile slices, an odd size


def make_tree(root: Path) -> dict[str, bytes]:
    files = {
        "small.txt": b"hello static\n",
        "big.bin": os.urandom(BIG),
        "empty.txt": b"",
        "style.css": b"body{color:red}\n" * 10,
        "sub/index.html": b"<p>sub index</p>\n",
        "nodex/<b>&.txt": b"odd name\n",
        "unicode/\u00e9t\u00e9.txt": b"summer\n",
        ".env": b"SECRET=1\n",
    }
    for name, data in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    (root / "style.css.gz").write_bytes(b"GZ" * 7)
    (root / "style.css.br").write_bytes(b"BR" * 5)
    return files


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    root = tmp_path / "public"
    root.mkdir()
    files = make_tree(root)
    (tmp_path / "secret.txt").write_bytes(b"top secret")
    os.symlink(tmp_path / "secret.txt", root / "escape.txt")
    os.symlink(tmp_path, root / "escape-dir")
    os.symlink(root / "small.txt", root / "inner-link.txt")
    return root, files


def static_app(root: Path, **kw: Any) -> App:
    app = App()
    app.static("/s", root, **kw)
    return app


def fetch(
    url: str, target: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One request with http.client, the target sent exactly as given."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=20)
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, r.headers, r.read()
    finally:
        conn.close()


async def afetch(url: str, target: str, **kw: Any) -> tuple[int, http.client.HTTPMessage, bytes]:
    return await asyncio.to_thread(fetch, url, target, **kw)


@pytest.mark.parametrize("small_max", [0, 32 * 1024, 1 << 30])  # sendfile, pread, pread all
async def test_bodies_byte_for_byte(tree: tuple[Path, dict[str, bytes]], small_max: int) -> None:
    root, files = tree
    app = static_app(root, small_max=small_max)
    async with live_server(app) as url, httpx.AsyncClient(base_url=url) as c:
        for name in ("small.txt", "big.bin", "empty.txt"):
            r = await c.get("/s/" + name, headers={"accept-encoding": "identity"})
            assert r.status_code == 200 and r.content == files[name], name
            assert int(r.headers["content-length"]) == len(files[name])
            assert r.headers["accept-ranges"] == "bytes"
            assert r.headers["etag"].startswith('"') and "last-modified" in r.headers
        r = await c.get("/s/small.txt")
        assert r.headers["content-type"] == "text/plain; charset=utf-8"
        assert (await c.get("/s/big.bin")).headers["content-type"] == "application/octet-stream"
        r = await c.get("/s/unicode/%C3%A9t%C3%A9.txt")
        assert r.status_code == 200 and r.content == b"summer\n"
        r = await c.get("/s/inner-link.txt")  # a symlink that stays inside the root
        assert r.status_code == 200 and r.content == files["small.txt"]
        r = await c.head("/s/big.bin")
        assert r.status_code == 200 and r.content == b"" and r.headers["content-length"] == str(BIG)
        # several files on one keep-alive connection, then the big one again
        for _ in range(3):
            assert (await c.get("/s/small.txt")).content == files["small.txt"]
        assert (await c.get("/s/big.bin")).content == files["big.bin"]


@pytest.mark.asyncio(loop_factories=["netpoll", "asyncio"])
async def test_forced_read_write_fallback(tree: tuple[Path, dict[str, bytes]]) -> None:
    """loop.sendfile unavailable (as on TLS): the connection layer reads and writes instead."""
    root, files = tree
    loop = asyncio.get_running_loop()

    async def no_sendfile(*args: Any, **kw: Any) -> int:
        raise NotImplementedError

    loop.sendfile = no_sendfile  # type: ignore[method-assign]
    try:
        async with live_server(static_app(root)) as url, httpx.AsyncClient(base_url=url) as c:
            assert (await c.get("/s/big.bin")).content == files["big.bin"]
            r = await c.get("/s/big.bin", headers={"range": "bytes=100-199,-50"})
            assert r.status_code == 206 and files["big.bin"][100:200] in r.content
    finally:
        del loop.sendfile


async def test_conditional_requests(tree: tuple[Path, dict[str, bytes]]) -> None:
    root, _ = tree
    app = static_app(root, cache_control="public, max-age=60")
    async with live_server(app) as url, httpx.AsyncClient(base_url=url) as c:
        r = await c.get("/s/small.txt")
        etag, last = r.headers["etag"], r.headers["last-modified"]
        assert r.headers["cache-control"] == "public, max-age=60"
        r = await c.get("/s/small.txt", headers={"if-none-match": etag})
        assert r.status_code == 304 and r.content == b"" and r.headers["etag"] == etag
        assert r.headers["cache-control"] == "public, max-age=60"
        assert "content-length" not in r.headers
        r = await c.get("/s/small.txt", headers={"if-none-match": f'"nope", W/{etag}'})
        assert r.status_code == 304
        r = await c.get("/s/small.txt", headers={"if-none-match": "*"})
        assert r.status_code == 304
        r = await c.get("/s/small.txt", headers={"if-modified-since": last})
        assert r.status_code == 304
        r = await c.get(
            "/s/small.txt", headers={"if-modified-since": last, "if-none-match": '"other"'}
        )
        assert r.status_code == 200  # If-None-Match wins
        r = await c.get(
            "/s/small.txt", headers={"if-modified-since": "Thu, 01 Jan 1970 00:00:01 GMT"}
        )
        assert r.status_code == 200
        r = await c.head("/s/small.txt", headers={"if-none-match": etag})
        assert r.status_code == 304
        r = await c.get("/s/small.txt", headers={"if-match": '"other"'})
        assert r.status_code == 412


async def test_ranges(tree: tuple[Path, dict[str, bytes]]) -> None:
    root, files = tree
    big = files["big.bin"]
    async with live_server(static_app(root)) as url, httpx.AsyncClient(base_url=url) as c:
        r = await c.get("/s/big.bin", headers={"range": "bytes=1000-1999"})
        assert r.status_code == 206 and r.content == big[1000:2000]
        assert r.headers["content-range"] == f"bytes 1000-1999/{BIG}"
        r = await c.get("/s/big.bin", headers={"range": "bytes=-500"})
        assert r.status_code == 206 and r.content == big[-500:]
        r = await c.get("/s/big.bin", headers={"range": f"bytes={BIG - 10}-"})
        assert r.status_code == 206 and r.content == big[-10:]
        r = await c.get("/s/big.bin", headers={"range": f"bytes={BIG}-"})
        assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{BIG}"
        r = await c.get("/s/big.bin", headers={"range": "bytes=0-99,50-149"})  # merged: one
        assert r.status_code == 206 and r.content == big[:150]
        etag = r.headers["etag"]
        r = await c.get("/s/big.bin", headers={"range": "bytes=0-9", "if-range": etag})
        assert r.status_code == 206 and r.content == big[:10]
        r = await c.get("/s/big.bin", headers={"range": "bytes=0-9", "if-range": '"stale"'})
        assert r.status_code == 200 and len(r.content) == BIG
        killer = "bytes=0-," + ",".join(f"5-{i}" for i in range(6, 1200))
        r = await c.get("/s/big.bin", headers={"range": killer})
        assert r.status_code == 200 and len(r.content) == BIG  # never amplified
        r = await c.head("/s/big.bin", headers={"range": "bytes=0-9"})
        assert r.status_code == 206 and r.headers["content-length"] == "10"
        r = await c.get("/s/big.bin", headers={"range": "bytes=0-9,2000000-2000009"})
        assert r.status_code == 206
        ctype = r.headers["content-type"]
        assert ctype.startswith("multipart/byteranges; boundary=")
        boundary = ctype.split("=", 1)[1].encode()
        parts = r.content.split(b"--" + boundary)
        assert len(parts) == 4 and parts[3] == b"--\r\n"
        assert parts[1].endswith(b"\r\n\r\n" + big[:10] + b"\r\n")
        assert parts[2].endswith(b"\r\n\r\n" + big[2000000:2000010] + b"\r\n")
        assert f"content-range: bytes 2000000-2000009/{BIG}".encode() in parts[2]
        css = files["style.css"]  # a small file: the pread path frames multipart in memory
        ident = {"accept-encoding": "identity"}
        r = await c.get("/s/style.css", headers={"range": "bytes=0-3,-4", **ident})
        assert r.status_code == 206 and int(r.headers["content-length"]) == len(r.content)
        assert b"\r\n\r\n" + css[:4] + b"\r\n" in r.content
        assert b"\r\n\r\n" + css[-4:] + b"\r\n" in r.content
        r = await c.get("/s/style.css", headers={"range": "bytes=5-9", **ident})
        assert r.status_code == 206 and r.content == css[5:10]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
async def test_curl_ranges_and_multipart(
    tree: tuple[Path, dict[str, bytes]], tmp_path: Path
) -> None:
    root, files = tree
    big = files["big.bin"]
    out = tmp_path / "out"

    def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(["curl", "-s", "-S", *args], capture_output=True, timeout=30)

    async with live_server(static_app(root)) as url:
        p = await asyncio.to_thread(curl, "-r", "100-299", "-o", str(out), url + "/s/big.bin")
        assert p.returncode == 0 and out.read_bytes() == big[100:300]
        p = await asyncio.to_thread(curl, "-D", "-", "-r", "0-4,10-14", url + "/s/big.bin")
        assert p.returncode == 0 and b"206 Partial Content" in p.stdout
        assert b"multipart/byteranges" in p.stdout
        assert big[0:5] in p.stdout and big[10:15] in p.stdout
        # resume a download (curl -C) and compare the whole file
        out.write_bytes(big[: BIG // 2])
        p = await asyncio.to_thread(curl, "-C", "-", "-o", str(out), url + "/s/big.bin")
        assert p.returncode == 0 and out.read_bytes() == big
        p = await asyncio.to_thread(
            curl, "-w", "%{http_code}", "-o", "/dev/null", "-r", f"{BIG}-", url + "/s/big.bin"
        )
        assert p.stdout == b"416"


async def test_precompressed_siblings(tree: tuple[Path, dict[str, bytes]]) -> None:
    root, files = tree
    async with live_server(static_app(root)) as url:
        status, h, body = await afetch(url, "/s/style.css", headers={"accept-encoding": "gzip, br"})
        assert status == 200 and body == b"BR" * 5 and h["content-encoding"] == "br"
        assert h["content-type"] == "text/css; charset=utf-8" and h["vary"] == "Accept-Encoding"
        br_etag = h["etag"]
        status, h, body = await afetch(url, "/s/style.css", headers={"accept-encoding": "gzip"})
        assert body == b"GZ" * 7 and h["content-encoding"] == "gzip" and h["etag"] != br_etag
        status, h, body = await afetch(
            url, "/s/style.css", headers={"accept-encoding": "br;q=0.1, gzip;q=0.9"}
        )
        assert h["content-encoding"] == "gzip"
        status, h, body = await afetch(url, "/s/style.css", headers={"accept-encoding": "br;q=0"})
        assert body == files["style.css"] and h["content-encoding"] is None
        assert h["vary"] == "Accept-Encoding"
        status, h, body = await afetch(url, "/s/style.css")
        assert body == files["style.css"] and h["content-encoding"] is None
        status, h, body = await afetch(
            url, "/s/style.css", headers={"accept-encoding": "identity;q=0, gzip"}
        )
        assert h["content-encoding"] == "gzip"
        status, h, body = await afetch(url, "/s/small.txt", headers={"accept-encoding": "gzip"})
        assert body == files["small.txt"] and h["vary"] is None  # no sibling: no Vary


@pytest.mark.parametrize(
    "target",
    [
        "/s/../secret.txt",
        "/s/%2e%2e/secret.txt",
        "/s/%2E%2E/%2e%2e/secret.txt",
        "/s/sub/..%2f..%2fsecret.txt",
        "/s/%252e%252e/secret.txt",  # double-encoded: one decode leaves %2e%2e, a literal name
        "/s/..%5csecret.txt",
        "/s/%5c..%5csecret.txt",
        "/s//etc/passwd",
        "/s/%2fetc%2fpasswd",
        "/s/small.txt%00.png",
        "/s/escape.txt",
        "/s/escape-dir/secret.txt",
        "/s/.env",
        "/s/%2eenv",
        "/s/sub/../.env",
        "/s/missing.txt",
        "/s/small.txt/",
        "/s/%ff%fe.txt",
        "/s/" + "a/" * 2000,
    ],
)
@pytest.mark.asyncio(loop_factories=["netpoll"])
async def test_traversal_refused(tree: tuple[Path, dict[str, bytes]], target: str) -> None:
    root, _ = tree
    async with live_server(static_app(root)) as url:
        status, _, body = await afetch(url, target)
    assert status in (400, 404, 414), (target, status)
    assert b"secret" not in body.lower() and b"SECRET" not in body


async def test_directory_redirect_stays_on_this_host(tree: tuple[Path, dict[str, bytes]]) -> None:
    """``GET //sub`` on a root mount must not redirect to ``//sub/`` (another host)."""
    root, _ = tree
    app = App()
    app.static("/", root)
    async with live_server(app) as url:
        status, h, _ = await afetch(url, "//sub?x=1")
    assert status == 404 or (status == 308 and h["location"] == "/sub/?x=1"), (status, h)


async def test_runs_of_slashes_are_merged(tree: tuple[Path, dict[str, bytes]]) -> None:
    """As nginx's merge_slashes: ``//a`` and ``/s//a`` are ``/a`` and ``/s/a``."""
    root, files = tree
    app = App()
    app.static("/s", root)
    app.static("/", root)
    async with live_server(app) as url:
        for target, body in [
            ("//small.txt", files["small.txt"]),
            ("///sub//", b"<p>sub index</p>\n"),
            ("/s//small.txt", files["small.txt"]),
        ]:
            assert (await afetch(url, target))[::2] == (200, body), target
        assert (await afetch(url, "/s//sub//../small.txt"))[0] == 404  # ``..`` is still refused


async def test_directories(tree: tuple[Path, dict[str, bytes]]) -> None:
    root, _ = tree
    async with live_server(static_app(root)) as url:
        status, h, _ = await afetch(url, "/s/sub?x=1")
        assert status == 308 and h["location"] == "/s/sub/?x=1"
        status, _, body = await afetch(url, "/s/sub/")
        assert status == 200 and body == b"<p>sub index</p>\n"
        status, _, _ = await afetch(url, "/s/nodex/")
        assert status == 404  # listings are off by default
        status, h, _ = await afetch(url, "/s/small.txt", method="POST")
        assert status == 405
    with open(os.path.join(os.fsencode(root / "nodex"), b"caf\xe9.txt"), "wb") as fh:
        fh.write(b"latin-1 name")  # not UTF-8: listed, never a 500
    async with live_server(static_app(root, autoindex=True)) as url:
        status, _, body = await afetch(url, "/s/nodex/")
        assert b'href="caf%E9.txt"' in body
        assert status == 200 and b"&lt;b&gt;&amp;.txt" in body and b"<b>&" not in body
        assert b'href="%3Cb%3E%26.txt"' in body
        status, _, body = await afetch(url, "/s/")
        assert b".env" not in body and b"small.txt" in body


async def test_cli_mounts_and_plain_file_server(tree: tuple[Path, dict[str, bytes]]) -> None:
    root, files = tree
    cfg = Config(port=0, static=(("/", str(root)),), extra={"cache_control": "no-cache"})
    async with live_server(None, cfg) as url, httpx.AsyncClient(base_url=url) as c:
        r = await c.get("/small.txt")
        assert r.content == files["small.txt"] and r.headers["cache-control"] == "no-cache"
        assert (await c.get("/sub")).status_code == 308
        assert (await c.get("/sub/")).content == b"<p>sub index</p>\n"
        assert (await c.get("/nope")).status_code == 404


async def test_cache_revalidation_and_fds(
    tree: tuple[Path, dict[str, bytes]], fd_count: Callable[[], int]
) -> None:
    root, _ = tree
    app = static_app(root, revalidate=0)  # stat on every request: the next one sees a change
    async with live_server(app) as url, httpx.AsyncClient(base_url=url) as c:
        assert (await c.get("/s/small.txt")).status_code == 200  # warm-up (lazy loop fds)
    before = fd_count()
    async with live_server(app) as url, httpx.AsyncClient(base_url=url) as c:
        r1 = await c.get("/s/small.txt")
        for _ in range(20):
            assert (await c.get("/s/small.txt")).headers["etag"] == r1.headers["etag"]
        (root / "small.txt").write_bytes(b"new content, longer than before\n")
        r2 = await c.get("/s/small.txt")
        assert r2.content == b"new content, longer than before\n"
        assert r2.headers["etag"] != r1.headers["etag"]
        r3 = await c.get("/s/small.txt", headers={"if-none-match": r1.headers["etag"]})
        assert r3.status_code == 200  # the old validator no longer matches
        os.replace(root / "style.css", root / "small.txt")  # a new inode at the same path
        r4 = await c.get("/s/small.txt", headers={"accept-encoding": "identity"})
        assert r4.content.startswith(b"body{color:red}")
        for i in range(30):
            await c.get(f"/s/miss{i}.txt")
    assert fd_count() <= before  # cached fds closed at shutdown


async def test_small_files_served_from_memory(tmp_path: Path) -> None:
    """Files up to 16 KiB keep their bytes in the cache by default: whole, ranged and
    multi-range answers are cut from them byte for byte, larger files are not held, and an
    in-place rewrite of the same length is served once the entry is re-checked."""
    small, large = os.urandom(10_240), os.urandom(16 * 1024 + 1)
    (tmp_path / "small.bin").write_bytes(small)
    (tmp_path / "large.bin").write_bytes(large)
    app = App()
    files = app.static("/s", tmp_path, revalidate=0)
    async with live_server(app) as url, httpx.AsyncClient(base_url=url) as c:
        assert (await c.get("/s/small.bin")).content == small
        assert (await c.get("/s/large.bin")).content == large
        held = {e.key[1]: e.data for e in files.cache._entries.values()}
        assert held["small.bin"] == small and held["large.bin"] is None
        r = await c.get("/s/small.bin", headers={"range": "bytes=100-199"})
        assert r.status_code == 206 and r.content == small[100:200]
        r = await c.get("/s/small.bin", headers={"range": "bytes=0-9,-10"})
        assert r.status_code == 206 and small[:10] in r.content and small[-10:] in r.content
        newer = os.urandom(10_240)
        (tmp_path / "small.bin").write_bytes(newer)  # same length, same inode
        r = await c.get("/s/small.bin")
        assert r.content == newer and r.headers["content-length"] == "10240"


async def test_rewrite_in_place_keeping_mtime_is_seen(tmp_path: Path) -> None:
    """A same-length rewrite that restores the old mtime (cp -p, rsync -t) still changes the
    file's ctime: the next request (revalidate=0) serves the new bytes, also from memory."""
    old, new = b"A" * 1000, b"B" * 1000
    f = tmp_path / "same.bin"
    f.write_bytes(old)
    st = f.stat()
    app = App()
    app.static("/s", tmp_path, revalidate=0)
    async with live_server(app) as url, httpx.AsyncClient(base_url=url) as c:
        assert (await c.get("/s/same.bin")).content == old
        f.write_bytes(new)
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert f.stat().st_mtime_ns == st.st_mtime_ns and f.stat().st_size == st.st_size
        assert (await c.get("/s/same.bin")).content == new


async def test_plans_kept_for_plain_requests_only(tmp_path: Path) -> None:
    """The decided response of a request without preconditions or Range is kept on the cache
    entry (also when the client sends Accept-Encoding, as browsers do); conditional and range
    requests are still decided per request; long URL remainders are not memoised."""
    data = os.urandom(5000)
    (tmp_path / "f.bin").write_bytes(data)
    app = App()
    files = app.static("/s", tmp_path)
    async with live_server(app) as url, httpx.AsyncClient(base_url=url) as c:
        r = await c.get("/s/f.bin", headers={"accept-encoding": "gzip, br"})
        assert r.status_code == 200 and r.content == data
        [entry] = [e for e in files.cache._entries.values() if e.key[1] == "f.bin"]
        assert entry.plans is not None and len(entry.plans) == 2  # (and the memory answer's)
        assert entry.plans[files._memory_key] is entry.plans[("GET", False, None)]
        assert (await c.get("/s/f.bin")).content == data
        r2 = await c.get("/s/f.bin", headers={"if-none-match": r.headers["etag"]})
        assert r2.status_code == 304 and r2.content == b""
        r3 = await c.get("/s/f.bin", headers={"range": "bytes=10-19"})
        assert r3.status_code == 206 and r3.content == data[10:20]
        assert len(entry.plans) == 2  # neither of those was kept
        long_name = "x" * 300
        assert (await c.get("/s/" + long_name)).status_code == 404
        assert long_name not in files._keys and "f.bin" in files._keys


@pytest.mark.asyncio(loop_factories=["netpoll"])
async def test_default_revalidation_within_a_second(tree: tuple[Path, dict[str, bytes]]) -> None:
    """By default the cache re-stats an entry at most once a second: a change shows up soon."""
    root, _ = tree
    async with live_server(static_app(root)) as url, httpx.AsyncClient(base_url=url) as c:
        old = await c.get("/s/big.bin", headers={"accept-encoding": "identity"})
        # deployments replace files atomically (a new inode): until the re-stat, the cached fd
        # still serves the old file whole and consistent
        (root / "big.bin.tmp").write_bytes(b"replaced")
        os.replace(root / "big.bin.tmp", root / "big.bin")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5.0  # generous bound; the interval is 1 s
        while True:
            r = await c.get("/s/big.bin", headers={"accept-encoding": "identity"})
            if r.status_code == 200 and r.content == b"replaced":
                break
            assert r.content == old.content and r.headers["etag"] == old.headers["etag"]
            assert loop.time() < deadline
            await asyncio.sleep(0.05)  # polling a condition, not ordering events
        assert r.headers["etag"] != old.headers["etag"]


async def test_file_response_conditional_and_range(tmp_path: Path) -> None:
    data = os.urandom(100_000)
    (tmp_path / "f.bin").write_bytes(data)
    app = App()

    @app.get("/f")
    async def f(request: Request) -> Response:
        return FileResponse(tmp_path / "f.bin", filename="f.bin")

    async with live_server(app) as url, httpx.AsyncClient(base_url=url) as c:
        r = await c.get("/f")
        assert r.content == data and "attachment" in r.headers["content-disposition"]
        r2 = await c.get("/f", headers={"if-none-match": r.headers["etag"]})
        assert r2.status_code == 304
        r3 = await c.get("/f", headers={"range": "bytes=10-19"})
        assert r3.status_code == 206 and r3.content == data[10:20]


async def test_truncated_while_sending_closes_connection(tmp_path: Path) -> None:
    """The length was promised: a file that shrinks mid-send ends the connection early."""
    size = 32 * 1024 * 1024
    path = tmp_path / "shrinks.bin"
    with open(path, "wb") as fh:
        fh.truncate(size)
    # long keep-alive: only the abort, not an idle timeout, may end the connection in time
    async with live_server(static_app(tmp_path), keepalive_timeout=120.0) as url:
        host, port = url.removeprefix("http://").rsplit(":", 1)

        def client() -> tuple[int, int, bool]:
            s = socket.create_connection((host, int(port)), timeout=20)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            s.sendall(b"GET /s/shrinks.bin HTTP/1.1\r\nHost: x\r\n\r\n")
            got = b""
            while b"\r\n\r\n" not in got:
                got += s.recv(65536)
            head, _, body = got.partition(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            received = len(body)
            os.truncate(path, 1024 * 1024)  # shrink while the server is still sending
            closed = False
            while True:
                try:
                    chunk = s.recv(1 << 20)
                except ConnectionResetError:
                    closed = True
                    break
                if not chunk:
                    closed = True
                    break
                received += len(chunk)
            s.close()
            return length, received, closed

        length, received, closed = await asyncio.to_thread(client)
    assert length == size
    assert closed and received < size


async def test_slow_reader_does_not_delay_others(tmp_path: Path) -> None:
    """A client not reading a 64 MiB download; small requests on other connections complete."""
    with open(tmp_path / "huge.bin", "wb") as fh:
        fh.truncate(64 * 1024 * 1024)
    (tmp_path / "tiny.txt").write_bytes(b"tiny")
    async with live_server(static_app(tmp_path)) as url:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        slow = socket.create_connection((host, int(port)))
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        slow.sendall(b"GET /s/huge.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        first = await asyncio.to_thread(slow.recv, 1024)
        assert first.startswith(b"HTTP/1.1 200")
        try:
            async with httpx.AsyncClient(base_url=url) as c:

                async def small() -> bytes:
                    return (await c.get("/s/tiny.txt")).content

                results = await asyncio.wait_for(asyncio.gather(*(small() for _ in range(50))), 20)
            assert results == [b"tiny"] * 50
        finally:
            slow.close()


@pytest.mark.asyncio(loop_factories=["netpoll"])
async def test_concurrent_large_and_small_downloads(tree: tuple[Path, dict[str, bytes]]) -> None:
    root, files = tree
    async with live_server(static_app(root)) as url:
        limits = httpx.Limits(max_connections=12)
        async with httpx.AsyncClient(base_url=url, limits=limits) as c:

            async def get(name: str) -> bytes:
                return (await c.get("/s/" + name, headers={"accept-encoding": "identity"})).content

            names = ["big.bin", "small.txt", "style.css"] * 6
            bodies = await asyncio.wait_for(asyncio.gather(*(get(n) for n in names)), 30)
            assert all(b == files[n] for b, n in zip(bodies, names, strict=True))


def test_cli_plain_file_server_subprocess(tree: tuple[Path, dict[str, bytes]]) -> None:
    """``python -m server --static /=DIR`` with no app: only the files, on an inherited socket."""
    import signal
    import sys

    root, files = tree
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    repo = Path(__file__).resolve().parent.parent
    fd = str(listener.fileno())
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "server", "--fd", fd),
            "--static",
            f"/={root}",
            "--cache-control",
            "max-age=5",
        ],
        cwd=repo,
        env={**os.environ, "PYTHONPATH": str(repo)},
        pass_fds=[listener.fileno()],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        status, h, body = fetch(url, "/big.bin")
        assert status == 200 and body == files["big.bin"] and h["cache-control"] == "max-age=5"
        assert fetch(url, "/plaintext")[0] == 404  # no demo app behind the files
        assert fetch(url, "/static/hello.txt")[0] == 404  # and no demo static mount
        assert fetch(url, "/sub/")[2] == b"<p>sub index</p>\n"
        assert fetch(url, "/../secret.txt")[0] == 404
    finally:
        listener.close()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err


@pytest.mark.parametrize("middleware", [False, True])
async def test_mount_answers_alike_with_and_without_middleware(
    tree: tuple[Path, dict[str, bytes]], middleware: bool
) -> None:
    """Without middleware a mount answers the exchange directly (no Request/Response); with
    one, the request goes through it. Same bodies, ranges and errors either way."""
    root, files = tree
    app = static_app(root)
    if middleware:

        @app.middleware
        async def tag(request: Request, call_next: Callable[[Request], Any]) -> Response:
            response = await call_next(request)
            response.headers["x-seen"] = request.path
            return response

    async with live_server(app) as url, httpx.AsyncClient(base_url=url) as c:
        r = await c.get("/s/big.bin")
        assert r.status_code == 200 and r.content == files["big.bin"]
        assert r.headers.get("x-seen") == ("/s/big.bin" if middleware else None)
        r = await c.get("/s/big.bin", headers={"range": "bytes=10-19"})
        assert r.status_code == 206 and r.content == files["big.bin"][10:20]
        assert (await c.get("/s/../secret.txt")).status_code in (400, 404)
        assert (await c.get("/s/missing.txt")).status_code == 404
        assert (await c.post("/s/small.txt")).status_code == 405


# --- answers from memory (StaticFiles.memory_answer: --static and App mounts) ---


def _plain(head: bytes, body: bytes) -> tuple[bytes, list[bytes], bytes]:
    """A response without its Date line, for comparing two servers' answers."""
    lines = head.rstrip(b"\r\n").split(b"\r\n")
    fields = sorted(line.lower() for line in lines[1:] if not line.lower().startswith(b"date:"))
    return lines[0], fields, body


async def test_answers_from_memory_match_the_usual_ones(
    tree: tuple[Path, dict[str, bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``--static`` mount and an App's mount answer a hot file's plain GET from memory (no
    exchange, no handler): byte for byte what an App's mount wrapped in a middleware (so
    never from memory) answers through the usual path, pipelined in order between requests
    they do not answer that way (preconditions, Range, encodings, directories, refused
    paths, big files)."""
    root, files = tree
    from_memory: list[str] = []  # answers memory_answer gave

    def recording(self: StaticFiles, head: Any, rel: str) -> Any:
        answer = memory_answer(self, head, rel)
        if answer is not None:
            from_memory.append(rel)
        return answer

    memory_answer = StaticFiles.memory_answer
    monkeypatch.setattr(StaticFiles, "memory_answer", recording)
    usual_app = App()
    usual_app.static("/s", root)

    @usual_app.middleware
    async def passing(request: Request, call_next: Any) -> Response:
        return await call_next(request)  # type: ignore[no-any-return]

    app = App()
    app.static("/s", root)
    assert app.answer_from_memory is not None and usual_app.answer_from_memory is None
    cfg = Config(port=0, static=(("/s", str(root)),))
    async with (
        live_server(usual_app) as usual_url,
        live_server(app) as app_url,
        live_server(None, cfg) as mount_url,
    ):
        etag = (await afetch(usual_url, "/s/small.txt"))[1]["etag"]
        h = b"Host: t\r\n"
        inm = b"GET /s/small.txt HTTP/1.1\r\nIf-None-Match: %s\r\n" % etag.encode() + h + b"\r\n"
        plain = b"GET /s/small.txt HTTP/1.1\r\n" + h + b"\r\n"
        requests = [
            (plain, False),  # cold: the usual path fills the cache and the plan
            (plain, True),
            (b"GET /s/small.txt HTTP/1.1\r\nAccept-Encoding: gzip\r\n" + h + b"\r\n", True),
            (b"GET /s/small.txt?v=1 HTTP/1.1\r\n" + h + b"\r\n", True),
            (inm, False),
            (b"GET /s/small.txt HTTP/1.1\r\nRange: bytes=0-3\r\n" + h + b"\r\n", False),
            (b"HEAD /s/small.txt HTTP/1.1\r\n" + h + b"\r\n", True),
            (b"GET /s/small.txt/ HTTP/1.1\r\n" + h + b"\r\n", False),
            (b"GET /s/style.css HTTP/1.1\r\nAccept-Encoding: gzip\r\n" + h + b"\r\n", False),
            (b"GET /s/style.css HTTP/1.1\r\n" + h + b"\r\n", False),
            (b"GET /s/style.css HTTP/1.1\r\n" + h + b"\r\n", False),  # (it has siblings)
            (b"GET /s/sub HTTP/1.1\r\n" + h + b"\r\n", False),
            (b"GET /s/sub/ HTTP/1.1\r\n" + h + b"\r\n", False),
            (b"GET /s/.env HTTP/1.1\r\n" + h + b"\r\n", False),
            (b"GET /s/big.bin HTTP/1.1\r\n" + h + b"\r\n", False),
            (b"POST /s/small.txt HTTP/1.1\r\nContent-Length: 2\r\n" + h + b"\r\nab", False),
            (plain, True),
        ]
        answers = {}
        for url in (usual_url, app_url, mount_url):
            port = int(url.rsplit(":", 1)[1])
            got = []
            c = await Raw.open(port)
            for req, ready in requests:  # one at a time: which were answered from memory
                before = len(from_memory)
                await c.send(req)
                r = await c.response(head_request=req.startswith(b"HEAD"))
                got.append(_plain(r.head, r.body))
                assert (len(from_memory) > before) == (ready and url != usual_url), (url, req)
            # pipelined: ready answers, then one that is not, then what queues behind it
            head_req = b"HEAD /s/small.txt HTTP/1.1\r\n" + h + b"\r\n"
            batch = [plain, plain, head_req, plain, plain, inm, head_req, plain]
            await c.send(b"".join(batch))
            for req in batch:
                r = await c.response(head_request=req is head_req)
                got.append(_plain(r.head, r.body))
            await c.close()
            # closing answers: HTTP/1.0, Connection: close
            for req in (
                b"GET /s/small.txt HTTP/1.0\r\n\r\n",
                b"GET /s/small.txt HTTP/1.1\r\nConnection: close\r\n" + h + b"\r\n",
            ):
                c = await Raw.open(port)
                before = len(from_memory)
                await c.send(req)
                r = await c.response()
                got.append(_plain(r.head, r.body))
                assert await c.closed()
                assert (len(from_memory) > before) == (url != usual_url), (url, req)
            answers[url] = got
    assert answers[mount_url] == answers[app_url] == answers[usual_url]
    assert answers[mount_url][1][2] == files["small.txt"]
    assert answers[mount_url][-1][0] == answers[mount_url][-2][0] == b"HTTP/1.1 200 OK"
    assert b"connection: close" in answers[mount_url][-1][1]


async def test_answer_from_memory_sees_a_change_within_revalidate(tmp_path: Path) -> None:
    """A file answered from memory is re-checked like any cache entry: a rewrite (same size,
    new bytes) is served once the entry's check is older than ``revalidate``."""
    (tmp_path / "f.txt").write_bytes(b"one")
    handler = StaticFiles(tmp_path, revalidate=0.2)
    served: list[str] = []
    usual = handler.serve

    async def counting(exchange: Any, rel: str, extra: Any = None) -> None:
        served.append(rel)
        await usual(exchange, rel, extra)

    handler.serve = counting  # type: ignore[method-assign]
    async with live_server(handler, interface="native") as url:
        async with httpx.AsyncClient(base_url=url) as c:
            assert (await c.get("/f.txt")).content == b"one"
            assert (await c.get("/f.txt")).content == b"one"
            assert len(served) == 1  # the second from memory
            (tmp_path / "f.txt").write_bytes(b"two")
            await asyncio.sleep(0.3)
            assert (await c.get("/f.txt")).content == b"two"
            assert (await c.get("/f.txt")).content == b"two"
            assert len(served) == 2
            # a file not held in memory is asked for once per request, not counted twice
            (tmp_path / "big.bin").write_bytes(b"b" * 100_000)
            hits = handler.cache.hits
            for _ in range(3):
                assert len((await c.get("/big.bin")).content) == 100_000
            assert handler.cache.hits - hits == 2  # (the first request opened it)
    handler.close()


async def test_answers_from_memory_stop_for_a_client_that_does_not_read(tmp_path: Path) -> None:
    """Answers from memory keep the bound of the usual path: a client pipelining requests for a
    256 KiB file held in memory, reading none, gets about max_pipelined answers made, not one
    per request; when it reads, all arrive in order."""
    n, size = 150, 256 * 1024
    data = os.urandom(size)
    (tmp_path / "f.bin").write_bytes(data)
    handler = StaticFiles(tmp_path, memory_max=size)
    async with live_server(handler, interface="native", max_requests_per_connection=1000) as url:
        port = int(url.rsplit(":", 1)[1])
        async with httpx.AsyncClient(base_url=url) as c:
            assert (await c.get("/f.bin")).content == data  # hot: answered from memory now
        before = handler.cache.hits
        requests = b"GET /f.bin HTTP/1.1\r\nHost: t\r\n\r\n" * n
        async with unread_pipeline(port, requests, lambda: handler.cache.hits - before) as (
            made,
            reader,
        ):
            assert made <= Config().max_pipelined + 32, made
            for _ in range(n):
                r = await asyncio.wait_for(read_response(reader), 10)
                assert r.status == 200 and r.body == data
    handler.close()


async def test_app_routes_beside_a_mount_keep_precedence(tmp_path: Path) -> None:
    """The App answers from memory only what its router sends to the mount: a route under the
    mount's prefix still gets its requests when a file of that name is hot, and middleware
    added while serving turns answers from memory off."""
    (tmp_path / "a.txt").write_bytes(b"file a")
    (tmp_path / "b.txt").write_bytes(b"file b")
    app = App()

    @app.get("/s/b.txt")
    async def b(request: Request) -> str:
        return "route b"

    app.static("/s", tmp_path)
    async with live_server(app) as url, httpx.AsyncClient(base_url=url) as c:
        for _ in range(3):  # (the second and third after the file is hot)
            assert (await c.get("/s/b.txt")).text == "route b"
            assert (await c.get("/s/a.txt")).text == "file a"

        @app.middleware
        async def tag(request: Request, call_next: Any) -> Response:
            response = await call_next(request)
            response.headers["x-tag"] = "1"
            return response  # type: ignore[no-any-return]

        r = await c.get("/s/a.txt")
        assert r.text == "file a" and r.headers["x-tag"] == "1"


async def test_answers_from_memory_stop_when_a_precompressed_sibling_appears(
    tmp_path: Path,
) -> None:
    """A hot file answered from memory is rewritten and gains a ``.gz`` sibling: once the
    mount has seen the sibling (within the cache's re-resolve second), every answer is the
    negotiated one with ``Vary``, never again an identity answer kept from before."""
    css = b"body{color:red}\n" * 20
    (tmp_path / "style.css").write_bytes(css)
    handler = StaticFiles(tmp_path, revalidate=0.1)
    async with live_server(handler, interface="native") as url:
        async with httpx.AsyncClient(base_url=url, headers={"accept-encoding": "gzip"}) as c:
            for _ in range(2):  # the second from memory
                r = await c.get("/style.css")
                assert "content-encoding" not in r.headers and "vary" not in r.headers
            await asyncio.sleep(0.15)
            css = b"body{color:blue}\n" * 20  # rewritten with its new sibling: a new entry
            (tmp_path / "style.css").write_bytes(css)
            (tmp_path / "style.css.gz").write_bytes(gzip.compress(css))
            seen: list[str | None] = []
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 3.0
            while loop.time() < deadline and seen.count("gzip") < 20:
                r = await c.get("/style.css")
                seen.append(r.headers.get("content-encoding"))
                if r.headers.get("content-encoding") == "gzip":
                    assert r.headers["vary"] == "Accept-Encoding"
                assert r.content == css  # (httpx decodes it)
                await asyncio.sleep(0.02)
            first = seen.index("gzip")  # (within about a second)
            assert seen[first:] == ["gzip"] * (len(seen) - first), seen
    handler.close()
