"""Fuzz static path resolution: request target -> HTTP core -> StaticFiles -> open-file cache.

Theory of operation
-------------------
At import a small tree is built in a temporary directory (removed at exit)::

    root/index.html  a.txt  café.txt  .hidden  sub/{index.html,b.txt,.env}  sub/up -> ..
    root/link_in -> a.txt           (a symlink inside the root: allowed)
    root/link_out -> ../outside     (a symlink leaving the root: must never be followed)
    outside/secret.txt

Every file's content is unique and the forbidden ones (dotfiles, anything outside the root)
contain ``SECRET``. Input layout: byte 0 chooses the method (GET/HEAD/POST), ``autoindex`` and
``dotfiles``; the rest is the request target. The target goes through the real HTTP core
(:class:`~server.http11.RequestParser`: percent-decoding, absolute-form, ``*``), then through
:class:`~server.staticfiles.StaticFiles` on an in-memory exchange
(:class:`~server.testing.MemoryExchange`), exactly the path a socket request takes.

Invariants: no exception escapes; the status is one of the static answers; a body never
contains ``SECRET`` unless dotfiles are allowed and the file is a dotfile *inside* the root;
a 200 body is exactly one of the tree's files (or an HTML listing with autoindex); a
redirect's ``Location`` is a local path (``/`` followed by anything but ``/`` or ``\\``, so
never an open redirect); every cache entry is released after the response; and
:func:`~server.static.split_path` never returns ``..``, empty, NUL- or slash-bearing
segments.

Run: ``python fuzz/static_fuzz.py -max_total_time=600 fuzz/corpus/static`` (see README.md).
"""

from __future__ import annotations

import asyncio
import atexit
import os
import shutil
import sys
import tempfile

if __package__ in (None, ""):
    import common  # run as a script: fuzz/ is on sys.path
else:
    from fuzz import common

from server import static
from server.config import Config
from server.exchange import RequestHead
from server.http11 import RequestParser
from server.staticfiles import StaticFiles
from server.testing import MemoryExchange

CONFIG = Config()
STATUSES = frozenset({200, 206, 304, 308, 400, 404, 405, 412, 416})
PUBLIC = {
    "index.html": b"<p>INDEX-ROOT</p>",
    "a.txt": b"PUBLIC-A",
    "caf\u00e9.txt": b"PUBLIC-CAFE",
    "sub/index.html": b"<p>INDEX-SUB</p>",
    "sub/b.txt": b"PUBLIC-B",
}
DOTFILES = {".hidden": b"SECRET-DOT-ROOT", "sub/.env": b"SECRET-DOT-SUB"}
OUTSIDE = b"SECRET-OUTSIDE"


def _remove_stale(parent: str) -> None:
    """Remove trees left by dead processes (a killed run skips atexit, and libFuzzer ends
    the process with C ``exit()``, which skips it too)."""
    for name in os.listdir(parent):
        if not name.startswith("static-fuzz-"):
            continue
        pid = name.split("-")[2]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


def _build_tree() -> str:
    parent = os.environ.get("FUZZ_TMPDIR") or tempfile.gettempdir()  # tests set FUZZ_TMPDIR
    if os.path.isdir("/proc/self"):
        _remove_stale(parent)
    base = tempfile.mkdtemp(prefix=f"static-fuzz-{os.getpid()}-", dir=parent)
    atexit.register(shutil.rmtree, base, True)
    root = os.path.join(base, "root")
    os.makedirs(os.path.join(root, "sub"))
    os.makedirs(os.path.join(base, "outside"))
    for rel, data in {**PUBLIC, **DOTFILES}.items():
        with open(os.path.join(root, rel), "wb") as f:
            f.write(data)
    with open(os.path.join(base, "outside", "secret.txt"), "wb") as f:
        f.write(OUTSIDE)
    os.symlink("a.txt", os.path.join(root, "link_in"))
    os.symlink("../outside", os.path.join(root, "link_out"))
    os.symlink("..", os.path.join(root, "sub", "up"))
    return root


ROOT = _build_tree()
_loop = asyncio.new_event_loop()  # runs each in-memory exchange to completion
atexit.register(_loop.close)
_servers = {
    (autoindex, dotfiles): StaticFiles(ROOT, autoindex=autoindex, dotfiles=dotfiles, revalidate=60)
    for autoindex in (False, True)
    for dotfiles in (False, True)
}
_METHODS = (b"GET", b"HEAD", b"POST", b"GET")


def parse_target(method: bytes, target: bytes) -> RequestHead | None:
    """The head the HTTP core makes of ``METHOD target HTTP/1.1`` (None if it refuses)."""
    p = RequestParser(CONFIG)
    data = method + b" " + target + b" HTTP/1.1\r\nHost: h\r\n\r\n"
    pos = 0
    while pos < len(data) and not p.dead:
        pos = p.feed(data, pos)
    for ev in p.events:
        if isinstance(ev, RequestHead):
            return ev
    return None


def check_split(rel: str) -> None:
    for dotfiles in (False, True):
        segs = static.split_path(rel, allow_dotfiles=dotfiles)
        if segs is None:
            continue
        for seg in segs:
            assert seg and seg not in (".", "..") and "/" not in seg, (rel, segs)
            assert "\x00" not in seg and "\\" not in seg, (rel, segs)
            assert dotfiles or not seg.startswith("."), (rel, segs)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    flags = data[0]
    method = _METHODS[flags & 3]
    autoindex, dotfiles = bool(flags & 4), bool(flags & 8)
    target = data[1:]
    head = parse_target(method, target)
    if head is None:
        return
    check_split(head.path.lstrip("/"))
    files = _servers[(autoindex, dotfiles)]
    ex = MemoryExchange(head)
    _loop.run_until_complete(files(ex))
    status = ex.status
    assert status in STATUSES, (target, status)
    assert ex.ended, (target, ex)
    body = b"".join(ex.body_chunks)
    headers = dict(ex.headers)
    if OUTSIDE in body or (b"SECRET" in body and not dotfiles):
        raise AssertionError(f"forbidden content served for {target!r}: {body[:60]!r}")
    if status == 200 and method == b"GET":
        allowed = set(PUBLIC.values()) | (set(DOTFILES.values()) if dotfiles else set())
        listing = autoindex and headers.get(b"content-type", b"").startswith(b"text/html")
        assert body in allowed or listing, (target, body[:80])
    if status == 308:
        loc = headers[b"location"]
        assert loc[:1] == b"/" and loc[1:2] not in (b"/", b"\\"), f"open redirect: {loc!r}"
    for entry in list(files.cache._entries.values()):
        assert entry.refs == 0, f"cache entry still held after {target!r}: {entry!r}"


if __name__ == "__main__":
    common.run(test_one_input)
    sys.exit(0)
