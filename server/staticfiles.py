"""Directory mounts: :class:`StaticFiles` serves the files under a directory through an Exchange.

Theory of operation: the HTTP rules (conditional requests, ranges, content types, encodings,
safe paths) are plain functions in :mod:`server.static`; the open-file cache (fds, stats,
small files' bytes, revalidation, containment) is :mod:`server.filecache`; this module joins
them per request and writes what they decide: one ``exchange.respond`` for a file whose bytes
are cached or small enough for one ``pread``, :func:`server.response.send_plan` (``sendfile``
through the loop) for the rest. A request without preconditions or ``Range`` reuses the plan
kept on its cache entry, so a hot file costs a dict lookup and a write;
:meth:`StaticFiles.answer_from_memory` gives the connection that same answer for a file held in
memory without a request being made at all (see :class:`server.exchange.MemoryAnswering`).
Every bad path is a 404, never a 500.
"""

from __future__ import annotations

import os
import re

from server import static
from server.exchange import Exchange, MemoryAnswer, RequestHead
from server.exchange import Headers as RawHeaders
from server.filecache import FileCache
from server.response import CT_HTML, CT_TEXT, Response, send_plan

__all__ = ["MEMORY_MAX", "StaticFiles"]

_NOT_FOUND = [CT_TEXT]
_NOT_VISIBLE = re.compile(rb"[^\x21-\x7e]")
_KEY_LEN_MAX = 256  # longer URL remainders are split every time (the memo stays small)
_KEYS_MAX = 4096  # StaticFiles._keys entries before it starts over
_UNSEEN = object()
_COMPRESSIBLE = (b"text/", b"application/javascript", b"application/json", b"application/xml")
_CT_HTML = [CT_HTML]
_ALLOW = [CT_TEXT, (b"allow", b"GET, HEAD")]


# Files up to this size keep their bytes in the open-file cache by default: a 10 KiB file
# then costs no pread per request (server CPU per request 51-61 -> 40-54 us side by side,
# wrk -c16, python -m server --static): a page-cache copy either way, minus one syscall.
MEMORY_MAX = 16 * 1024
# Files up to this size (and not kept in memory) are read with one pread and leave with their
# head in one write, rather than a flushed head plus a sendfile call.
SMALL_MAX = 32 * 1024


class StaticFiles:
    """Serve the files under ``directory`` (see :mod:`server.static` for the HTTP rules and
    :mod:`server.filecache` for the open-file cache and path safety).

    A changed file is noticed within ``revalidate`` seconds (0: by the next request).
    Files up to ``memory_max`` bytes (default 16 KiB) keep their bytes in the open-file cache
    (at most ``max_entries`` of them: 16 MiB with the defaults; a ``cache`` passed in applies
    its own limits) and leave with their head in one write, no syscall but the send; files up
    to ``small_max`` bytes are read with one ``pread`` per request and leave the same way;
    larger ones go through ``exchange.sendfile``.

    Use it as an app handler (``await files(exchange)`` serves ``head.path`` below ``prefix``),
    from a route (``return files.response(rel)``) or call :meth:`serve` directly. Every bad
    path is a 404, never a 500; :meth:`close` releases the cached fds (a shutdown hook).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        prefix: str = "/",
        autoindex: bool = False,
        cache_control: str | None = None,
        dotfiles: bool = False,
        precompressed: bool = True,
        memory_max: int = MEMORY_MAX,
        small_max: int = SMALL_MAX,
        revalidate: float = 1.0,
        max_entries: int = 1000,
        cache: FileCache | None = None,
    ) -> None:
        root = os.path.realpath(os.fspath(directory))
        if not os.path.isdir(root):
            raise ValueError(f"static directory does not exist: {directory}")
        self.root = root  # real path: containment is checked against it
        self.prefix = "/" + prefix.strip("/")  # URL prefix for __call__ ("/" for the root)
        # what answer_from_memory answers below (server.exchange.MemoryAnswering)
        self.memory_paths = (("" if self.prefix == "/" else self.prefix) + "/",)
        self.autoindex = autoindex
        self.cache_control = cache_control.encode("latin-1") if cache_control else None
        self.dotfiles = dotfiles
        self.precompressed = precompressed
        self.small_max = small_max  # files up to this size are read + written, not sendfile'd
        # where serve() keeps, on a cache entry, the plan memory_answer may answer with (one per
        # Cache-Control and precompressed setting: a cache may be shared by several mounts)
        self._memory_key = ("memory", self.cache_control, precompressed)
        # URL remainder -> cache key (None: refused), decided with the dotfiles setting above
        self._keys: dict[str, str | None] = {}
        self.cache = cache or FileCache(
            max_entries, stat_interval=revalidate, memory_max=memory_max, allow_dotfiles=dotfiles
        )

    def __repr__(self) -> str:
        return f"<StaticFiles {self.prefix!r} -> {self.root!r} {self.cache!r}>"

    def close(self) -> None:
        self.cache.close()

    async def __call__(self, exchange: Exchange) -> None:
        path = exchange.head.path
        base = "" if self.prefix == "/" else self.prefix
        if path != base and not path.startswith(base + "/"):
            exchange.respond(404, _NOT_FOUND, b"Not Found")
            return
        await self.serve(exchange, path[len(base) + 1 :])

    def answer_from_memory(self, head: RequestHead) -> MemoryAnswer | None:
        """The answer from memory for ``head`` (see :class:`server.exchange.MemoryAnswering`),
        for ``head.path`` below ``prefix`` as :meth:`__call__` would serve it."""
        path = head.path
        below = self.memory_paths[0]
        if not path.startswith(below):
            return None
        return self.memory_answer(head, path[len(below) :])

    def memory_answer(self, head: RequestHead, rel: str) -> MemoryAnswer | None:
        """What :meth:`serve` would answer for ``rel``, when that is a whole file held in
        memory and known without a syscall: a GET or HEAD without preconditions or Range of a
        file served before (its plan is kept on its cache entry), checked within ``revalidate``
        seconds and with no precompressed sibling when it was planned; else None. (For a HEAD
        the connection sends the head alone, Content-Length the body's, as serve() does.)"""
        if (head.method != "GET" and head.method != "HEAD") or rel.endswith("/"):  # ("x/": 404)
            return None
        key = self._keys.get(rel)
        if not key:  # unseen, refused, or the mount's root
            return None
        entry = self.cache.in_memory(self.root, key)
        if entry is None or entry.plans is None:
            return None
        plan = entry.plans.get(self._memory_key)
        if plan is None:
            return None
        fields = static.request_fields(head.headers)
        if fields is not static.NO_FIELDS and fields.conditional:
            return None
        return 200, plan.headers, entry.data

    def response(self, rel: str) -> Response:
        """A response object serving ``rel`` (for handlers and middleware)."""
        return _StaticResponse(self, rel)

    async def serve(self, exchange: Exchange, rel: str, extra: RawHeaders | None = None) -> None:
        """Answer ``exchange`` with the file at ``rel`` (the decoded URL path below the mount)."""
        head = exchange.head
        if head.method != "GET" and head.method != "HEAD":
            exchange.respond(405, _ALLOW, b"Method Not Allowed")
            return
        key = self._keys.get(rel, _UNSEEN)
        if key is _UNSEEN:  # split and check each URL remainder once (a bounded memo)
            # (a run of slashes is one, as nginx's merge_slashes: ``//a`` is ``/a``; the
            # segments never leave the root whatever they are)
            segs = static.split_path(rel.lstrip("/"), allow_dotfiles=self.dotfiles)
            key = None if segs is None else "/".join(segs)
            if len(rel) <= _KEY_LEN_MAX:  # long ones are not kept: at most ~2 MiB in all
                if len(self._keys) >= _KEYS_MAX:
                    self._keys.clear()
                self._keys[rel] = key
        if key is None:
            exchange.respond(404, _NOT_FOUND, b"Not Found")
            return
        cache = self.cache
        entry = cache.acquire(self.root, key)
        held = [entry]
        try:
            if entry.is_dir:
                if not head.path.endswith("/"):
                    self._redirect_slash(exchange)
                    return
                entry = cache.acquire(self.root, key + "/index.html" if key else "index.html")
                held.append(entry)
                if entry.missing or entry.is_dir:
                    if self.autoindex:
                        self._listing(exchange, held[0].path)
                    else:
                        exchange.respond(404, _NOT_FOUND, b"Not Found")
                    return
            info = entry.info
            if info is None or (rel.endswith("/") and entry is held[0]):  # "file.txt/"
                exchange.respond(404, _NOT_FOUND, b"Not Found")
                return
            fields = static.request_fields(head.headers)
            vary = False
            if self.precompressed and info.content_type.startswith(_COMPRESSIBLE):
                chosen = None
                wanted = static.accepted_encodings(fields.accept_encoding)
                for coding, suffix in static.ENCODINGS:
                    sib = cache.acquire(self.root, entry.key[1] + suffix.decode())
                    held.append(sib)
                    if sib.info is not None:
                        vary = True
                        if coding in wanted and (
                            chosen is None or wanted.index(coding) < wanted.index(chosen[0])
                        ):
                            chosen = (coding, sib)
                if vary and entry.plans:  # a sibling appeared: no more answers from memory
                    entry.plans.pop(self._memory_key, None)
                if chosen is not None:
                    coding, entry = chosen
                    sinfo = entry.info
                    assert sinfo is not None
                    info = static.FileInfo(
                        sinfo.size,
                        sinfo.mtime,
                        sinfo.etag,
                        sinfo.last_modified,
                        info.content_type,
                        coding,
                    )
            # A request without preconditions or Range gets the same plan every time for the
            # same file and encoding: kept on the entry (a changed file is a new entry). Not
            # for a precompressed sibling (its FileInfo is made per request) or extra headers.
            plans = entry.plans
            pkey = (head.method, vary, self.cache_control)
            reuse = (
                (fields is static.NO_FIELDS or not fields.conditional)
                and extra is None
                and info is entry.info
            )
            plan = plans.get(pkey) if reuse and plans is not None else None
            if plan is None:
                plan = static.plan_response(
                    head.method,
                    fields,
                    info,
                    cache_control=self.cache_control,
                    extra=extra,
                    vary=vary,
                )
                if reuse:
                    if plans is None:
                        plans = entry.plans = {}
                    plan.headers = tuple(plan.headers)  # shared now
                    plans[pkey] = plan
            data = entry.data
            if data is not None and plan.status == 200 and plan.body:
                exchange.respond(200, plan.headers, data)  # a whole file held in memory
                if reuse and not vary and head.method == "GET":
                    plans[self._memory_key] = plan  # type: ignore[index]  # memory_answer's
                return
            if data is None and plan.body and 0 < info.size <= self.small_max:
                # small file: one pread, then head and body leave in one write; cheaper than
                # flushing the head and a sendfile call (measured: loadtest/staticbench.py)
                data = os.pread(entry.fd, info.size, 0)
                if len(data) != info.size:
                    data = None  # changed under us: sendfile, which aborts if it is short
            await send_plan(exchange, plan, entry.view() if data is None else None, data)
        finally:
            for e in held:
                cache.release(e)

    def _redirect_slash(self, exchange: Exchange) -> None:
        head = exchange.head
        location = head.raw_path + b"/"
        if head.query_string:
            location += b"?" + head.query_string
        # One leading slash (``//host/`` would redirect to another site), and every byte that
        # is not visible ASCII percent-encoded: the parser never lets such bytes in from the
        # wire, but in-process callers can, and a header must stay valid.
        if location.startswith(b"//"):
            location = b"/" + location.lstrip(b"/")
        location = _NOT_VISIBLE.sub(lambda m: b"%%%02X" % m.group()[0], location)
        exchange.respond(308, [CT_TEXT, (b"location", location)], b"")

    def _listing(self, exchange: Exchange, directory: str) -> None:
        names: list[tuple[str, bool]] = []
        try:
            with os.scandir(directory) as it:
                for d in it:
                    if d.name.startswith(".") and not self.dotfiles:
                        continue
                    try:
                        names.append((d.name, d.is_dir()))
                    except OSError:
                        continue
        except OSError:
            exchange.respond(404, _NOT_FOUND, b"Not Found")
            return
        exchange.respond(200, _CT_HTML, static.directory_listing(exchange.head.path, names))


class _StaticResponse(Response):
    """What ``StaticFiles.response`` returns: sends itself through ``StaticFiles.serve``; the
    headers a middleware adds are sent too."""

    streaming = True
    __slots__ = ("files", "rel")

    def __init__(self, files: StaticFiles, rel: str) -> None:
        super().__init__(b"", 200)
        self.files = files
        self.rel = rel

    async def send(self, exchange: Exchange) -> None:
        await self.files.serve(exchange, self.rel, self.headers.raw or None)

    def __repr__(self) -> str:
        return f"<StaticResponse {self.rel!r} from {self.files.root!r}>"
