"""Static files, the sans-IO part: paths, types, validators, conditionals, ranges, framing.

Theory of operation
-------------------
Nothing here touches a file or a socket. The I/O layer (:mod:`server.filecache` opens and
caches files, :func:`server.response.send_plan` writes) asks this module four questions:

1. *Which file?* :func:`split_path` turns the already percent-decoded remainder of a URL path
   (``RequestHead.path`` is decoded exactly once by the HTTP core, so ``%252e`` reaches us as
   the literal ``%2e`` and stays that) into path segments, or refuses it: NUL, backslash, an
   absolute path, a ``..`` segment, or a dotfile segment (unless allowed). Refused paths are
   answered 404 like missing files, never 500, so probing learns nothing.
2. *How is it described?* :func:`content_type` (extension table, ``charset=utf-8`` for text
   types), :func:`make_etag` (strong: inode, size, mtime in ns) and :func:`http_date`.
3. *What does the client want?* :func:`request_fields` picks the handful of request headers we
   use in one pass; :func:`evaluate_preconditions` applies RFC 9110 §13.2.2 in order
   (If-Match, If-Unmodified-Since, If-None-Match, If-Modified-Since; If-None-Match wins over
   If-Modified-Since), then :func:`if_range_holds` and :func:`parse_range`.
4. *What goes on the wire?* :func:`plan_response` returns a :class:`Plan`: status, headers,
   Content-Length and a list of ``(prefix, offset, count)`` parts plus a trailer. A single
   range or the full file is one part with an empty prefix (``start`` + ``sendfile``);
   ``multipart/byteranges`` interleaves the part headers with file slices, so even multipart
   bodies are sent zero-copy.

Range policy (the "Apache Killer" shape must not amplify): more than :data:`MAX_RANGE_SPECS`
specs, or more than :data:`MAX_RANGES` ranges left after sorting and merging overlapping or
adjacent ones, or requested ranges whose sum exceeds the file size, are answered with the full
file (200) — never more bytes than the file. A syntactically invalid ``Range`` is ignored
(RFC 9110 §14.2); a valid one with no satisfiable range is 416 with ``bytes */size``.
"""

from __future__ import annotations

import calendar
import datetime
import html
import mimetypes
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.utils import formatdate
from urllib.parse import quote

Headers = list[tuple[bytes, bytes]]

MAX_RANGES = 16  # ranges left after merging; more -> 200 with the whole file
MAX_RANGE_SPECS = 100  # specs in one Range header; more -> 200 with the whole file
ENCODINGS = (("br", b".br"), ("gzip", b".gz"))  # precompressed siblings, preferred first

# --------------------------------------------------------------------------- paths


def split_path(rel: str, *, allow_dotfiles: bool = False) -> list[str] | None:
    """Segments of the URL remainder ``rel``, or None when it must be refused.

    ``rel`` is relative to the mount (no leading ``/``) and already percent-decoded once.
    Empty and ``.`` segments are dropped (``a//b`` is ``a/b``).
    """
    if not rel:
        return []
    if "\x00" in rel or "\\" in rel or rel[0] == "/":
        return None
    out = []
    for seg in rel.split("/"):
        if not seg or seg == ".":
            continue
        if seg == "..":
            return None
        if seg[0] == "." and not allow_dotfiles:
            return None
        out.append(seg)
    return out


def contained(real: str, root: str) -> bool:
    """True when the resolved path ``real`` is ``root`` or inside it (both real paths)."""
    return real == root or real.startswith(root if root.endswith(os.sep) else root + os.sep)


# --------------------------------------------------------------------------- description

_TEXTLIKE = frozenset(
    {
        "application/javascript",
        "application/json",
        "application/xml",
        "application/manifest+json",
        "image/svg+xml",
    }
)
_EXTRA_TYPES = {
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".json": "application/json",
    ".wasm": "application/wasm",
    ".webp": "image/webp",
    ".avif": "image/avif",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".svg": "image/svg+xml",
    ".md": "text/markdown",
    ".webmanifest": "application/manifest+json",
    ".map": "application/json",
}
_type_cache: dict[str, bytes] = {}  # lower-case extension -> Content-Type value


def content_type(name: str) -> bytes:
    """Content-Type of file ``name`` by extension (``charset=utf-8`` for text types)."""
    ext = os.path.splitext(name)[1].lower()
    value = _type_cache.get(ext)
    if value is None:
        ctype = _EXTRA_TYPES.get(ext)
        if ctype is None:
            ctype = mimetypes.types_map.get(ext) or mimetypes.common_types.get(ext)
        if ctype is None:
            ctype = "application/octet-stream"
        if ctype.startswith("text/") or ctype in _TEXTLIKE:
            ctype += "; charset=utf-8"
        value = ctype.encode("latin-1")
        if len(_type_cache) < 4096:
            _type_cache[ext] = value
    return value


def make_etag(st: os.stat_result) -> bytes:
    """Strong ETag from inode, size and mtime (ns): changes whenever the file does."""
    return b'"%x-%x-%x"' % (st.st_ino, st.st_size, st.st_mtime_ns)


def http_date(ts: float) -> bytes:
    return formatdate(ts, usegmt=True).encode("ascii")


_date_cache: dict[bytes, float | None] = {}


_DAY = rb"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_MON = rb"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
_TIME = rb"(\d\d):(\d\d):(\d\d)"
_MONTHS = {m.encode(): i for i, m in enumerate(calendar.month_abbr) if m}
# RFC 9110 5.6.7, case-sensitive as its grammar: IMF-fixdate, the obsolete RFC 850 and asctime
_IMF_FIXDATE = re.compile(_DAY + rb", (\d\d) " + _MON + rb" (\d{4}) " + _TIME + rb" GMT\Z")
_RFC850 = re.compile(
    rb"(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday), (\d\d)-"
    + _MON
    + rb"-(\d\d) "
    + _TIME
    + rb" GMT\Z"
)
_ASCTIME = re.compile(_DAY + rb" " + _MON + rb" ([ \d]\d) " + _TIME + rb" (\d{4})\Z")


def parse_http_date(value: bytes) -> float | None:
    """Seconds since the epoch for an HTTP-date in one of its three formats, exactly as RFC
    9110 5.6.7 writes them; None for anything else (a zone other than GMT, a list of dates,
    another case: the preconditions must then ignore the field, 13.1.3)."""
    if value in _date_cache:
        return _date_cache[value]
    parsed: float | None = None
    if m := _IMF_FIXDATE.match(value):
        day, mon, year, hh, mm, ss = m.groups()
    elif m := _ASCTIME.match(value):
        mon, day, hh, mm, ss, year = m.groups()
    elif m := _RFC850.match(value):
        day, mon, yy, hh, mm, ss = m.groups()
        # a two-digit year more than 50 years ahead is the last such year in the past
        now = time.gmtime().tm_year
        full = now - now % 100 + int(yy)
        year = b"%d" % (full - 100 if full > now + 50 else full)
    if m is not None:
        try:
            stamp = datetime.datetime(  # (validates the day of the month, the hour, ...)
                int(year), _MONTHS[mon], int(day), int(hh), int(mm), min(int(ss), 59)
            )
            parsed = float(calendar.timegm(stamp.timetuple()))
        except (ValueError, OverflowError):
            parsed = None
    if len(_date_cache) > 1024:
        _date_cache.clear()
    _date_cache[value] = parsed
    return parsed


# --------------------------------------------------------------------------- request side


@dataclass(slots=True)
class Fields:
    """The request headers static serving looks at (raw bytes, first occurrence; ``inm`` and
    ``if_match`` join repeated headers with commas, as lists may be split over lines)."""

    range: bytes | None = None
    if_range: bytes | None = None
    inm: bytes | None = None
    ims: bytes | None = None
    if_match: bytes | None = None
    ius: bytes | None = None
    accept_encoding: bytes | None = None

    @property
    def conditional(self) -> bool:
        """A precondition or Range header is present (the answer depends on it, where
        Accept-Encoding only picks among encodings)."""
        return not (
            self.range is None
            and self.if_range is None
            and self.inm is None
            and self.ims is None
            and self.if_match is None
            and self.ius is None
        )


# request header -> Fields attribute; lists that may be split over lines join, others keep
# the first (non-empty) value
_FIELD_OF = {
    b"range": "range",
    b"if-range": "if_range",
    b"if-none-match": "inm",
    b"if-modified-since": "ims",
    b"if-match": "if_match",
    b"if-unmodified-since": "ius",
    b"accept-encoding": "accept_encoding",
}
_JOINED = {"inm": b", ", "if_match": b", ", "accept_encoding": b","}
NO_FIELDS = Fields()  # shared answer for requests with none of them: never mutated


def request_fields(headers: Headers) -> Fields:
    """One pass over the request headers (names are lower-case bytes)."""
    f = None
    field_of = _FIELD_OF.get
    for name, value in headers:
        attr = field_of(name)
        if attr is None:
            continue
        if f is None:
            f = Fields()
        old = getattr(f, attr)
        sep = _JOINED.get(attr)
        if sep is not None:
            setattr(f, attr, value if old is None else old + sep + value)
        elif not old:
            setattr(f, attr, value)
    return NO_FIELDS if f is None else f


def _etag_list(value: bytes) -> list[bytes]:
    """Entity tags of an If-Match / If-None-Match list (``*`` kept as is)."""
    tags = []
    for part in value.split(b","):
        part = part.strip()
        if part:
            tags.append(part)
    return tags


def _opaque(tag: bytes) -> bytes:
    return tag[2:] if tag.startswith(b"W/") else tag


def etag_matches_weak(value: bytes, etag: bytes) -> bool:
    """If-None-Match: ``*`` or any tag equal to ours ignoring the weak prefix."""
    ours = _opaque(etag)
    return any(t == b"*" or _opaque(t) == ours for t in _etag_list(value))


def etag_matches_strong(value: bytes, etag: bytes) -> bool:
    """If-Match: ``*`` or a strong tag equal to ours."""
    if etag.startswith(b"W/"):
        return any(t == b"*" for t in _etag_list(value))
    return any(t == b"*" or t == etag for t in _etag_list(value))


def evaluate_preconditions(method: str, f: Fields, etag: bytes, mtime: float) -> int | None:
    """RFC 9110 §13.2.2: 412 or 304 when a precondition decides the answer, else None."""
    last = int(mtime)  # HTTP dates have one-second resolution
    if f.if_match is not None:
        if not etag_matches_strong(f.if_match, etag):
            return 412
    elif f.ius is not None:
        date = parse_http_date(f.ius)
        if date is not None and last > date:
            return 412
    if f.inm is not None:
        if etag_matches_weak(f.inm, etag):
            return 304 if method in ("GET", "HEAD") else 412
    elif f.ims is not None and method in ("GET", "HEAD"):
        date = parse_http_date(f.ims)
        if date is not None and last <= date:
            return 304
    return None


def if_range_holds(value: bytes | None, etag: bytes, mtime: float) -> bool:
    """If-Range: an ETag must match strongly; a date must equal Last-Modified exactly."""
    if value is None:
        return True
    value = value.strip()
    if value.startswith(b'"') or value.startswith(b"W/"):
        return not value.startswith(b"W/") and value == etag
    date = parse_http_date(value)
    return date is not None and int(mtime) == date


def parse_range(value: bytes, size: int) -> list[tuple[int, int]] | int | None:
    """Parse a ``Range`` header for a representation of ``size`` bytes.

    Returns a list of ``(start, end_inclusive)`` (sorted, merged), ``None`` when the header is
    to be ignored (not ``bytes=``, bad syntax, or too many/large ranges: serve 200), or
    ``416`` when it is valid but nothing is satisfiable.
    """
    unit, eq, specs = value.partition(b"=")
    if not eq or unit.strip().lower() != b"bytes":
        return None
    raw = specs.split(b",")
    if len(raw) > MAX_RANGE_SPECS:
        return None
    ranges: list[tuple[int, int]] = []
    total = 0
    seen_valid = False
    for spec in raw:
        spec = spec.strip()
        if not spec:
            continue  # empty list elements are allowed
        first, dash, last = spec.partition(b"-")
        first, last = first.strip(), last.strip()
        if not dash or (first and not first.isdigit()) or (last and not last.isdigit()):
            return None
        if not first:
            if not last:
                return None
            n = int(last)  # suffix range: the last n bytes
            seen_valid = True
            if n == 0 or size == 0:
                continue
            start, end = max(0, size - n), size - 1
        else:
            start = int(first)
            if last:
                end = int(last)
                if end < start:
                    return None
            else:
                end = size - 1
            seen_valid = True
            if start >= size:
                continue
            end = min(end, size - 1)
        ranges.append((start, end))
        total += end - start + 1
    if not seen_valid:
        return None
    if not ranges:
        return 416
    if total > size and len(ranges) > 1:
        return None  # overlapping ranges asking for more than the file: send it once
    ranges.sort()
    merged = [ranges[0]]
    for start, end in ranges[1:]:
        ps, pe = merged[-1]
        if start <= pe + 1:
            if end > pe:
                merged[-1] = (ps, end)
        else:
            merged.append((start, end))
    if len(merged) > MAX_RANGES:
        return None
    return merged


def accepted_encodings(value: bytes | None) -> list[str]:
    """Codings of :data:`ENCODINGS` the client accepts (q > 0), best first."""
    if not value:
        return []
    q: dict[str, float] = {}
    for item in value.decode("latin-1").split(","):
        coding, _, params = item.partition(";")
        coding = coding.strip().lower()
        if not coding:
            continue
        weight = 1.0
        for p in params.split(";"):
            k, _, v = p.partition("=")
            if k.strip().lower() == "q":
                try:
                    weight = float(v.strip())
                except ValueError:
                    weight = 0.0
        q[coding] = weight
    star = q.get("*", 0.0)
    out = [(q.get(name, star), -i, name) for i, (name, _) in enumerate(ENCODINGS)]
    return [name for w, _, name in sorted(out, reverse=True) if w > 0]


# --------------------------------------------------------------------------- response side


@dataclass(slots=True)
class FileInfo:
    """What a response plan needs to know about the file to send."""

    size: int
    mtime: float
    etag: bytes
    last_modified: bytes
    content_type: bytes
    encoding: str | None = None  # "br"/"gzip" when a precompressed sibling is sent


@dataclass(slots=True)
class Plan:
    """A static response: status and headers, then ``parts`` (prefix bytes, then ``count``
    bytes of the file from ``offset``) and ``trailer``. ``length`` is the Content-Length."""

    status: int
    headers: Sequence[tuple[bytes, bytes]]  # a tuple once the plan is cached and shared
    length: int = 0
    parts: list[tuple[bytes, int, int]] = field(default_factory=list)
    trailer: bytes = b""
    body: bool = True  # False: no body at all (304, 412, HEAD)

    def __repr__(self) -> str:
        return f"<Plan {self.status} length={self.length} parts={len(self.parts)}>"


_ACCEPT_RANGES = (b"accept-ranges", b"bytes")
_VARY = (b"vary", b"Accept-Encoding")
_boundary_counter = 0


def _boundary() -> bytes:
    global _boundary_counter
    _boundary_counter += 1
    return b"%s%08x" % (os.urandom(6).hex().encode(), _boundary_counter)


def plan_response(
    method: str,
    f: Fields,
    info: FileInfo,
    *,
    cache_control: bytes | None = None,
    extra: Headers | None = None,
    status: int = 200,
    vary: bool = False,
) -> Plan:
    """Decide the whole static response for ``info`` (see the module docstring)."""
    validators: Headers = [(b"etag", info.etag), (b"last-modified", info.last_modified)]
    if cache_control is not None:
        validators.append((b"cache-control", cache_control))
    if vary:  # the answer depends on Accept-Encoding (precompressed siblings exist)
        validators.append(_VARY)
    if extra:
        validators.extend(extra)
    size = info.size
    if status == 200 and f is not NO_FIELDS:
        pre = evaluate_preconditions(method, f, info.etag, info.mtime)
        if pre is not None:
            if pre == 304:
                return Plan(304, validators, body=False)
            return Plan(412, [(b"content-type", b"text/plain; charset=utf-8")], body=False)
    headers: Headers = [(b"content-type", info.content_type), *validators]
    if info.encoding is not None:
        headers.append((b"content-encoding", info.encoding.encode()))
    headers.append(_ACCEPT_RANGES)
    ranges = None
    if (
        status == 200
        and f.range is not None
        and method in ("GET", "HEAD")
        and if_range_holds(f.if_range, info.etag, info.mtime)
    ):
        ranges = parse_range(f.range, size)
    head_only = method == "HEAD"
    if ranges is None:
        return Plan(status, headers, size, [(b"", 0, size)] if size else [], body=not head_only)
    if ranges == 416:
        return Plan(
            416,
            [(b"content-range", b"bytes */%d" % size), *validators, _ACCEPT_RANGES],
            body=False,
        )
    assert isinstance(ranges, list)
    if len(ranges) == 1:
        start, end = ranges[0]
        headers.append((b"content-range", b"bytes %d-%d/%d" % (start, end, size)))
        return Plan(
            206, headers, end - start + 1, [(b"", start, end - start + 1)], body=not head_only
        )
    boundary = _boundary()
    ctype = info.content_type
    parts = []
    length = 0
    for start, end in ranges:
        prefix = b"\r\n--%s\r\ncontent-type: %s\r\ncontent-range: bytes %d-%d/%d\r\n\r\n" % (
            boundary,
            ctype,
            start,
            end,
            size,
        )
        count = end - start + 1
        parts.append((prefix, start, count))
        length += len(prefix) + count
    trailer = b"\r\n--%s--\r\n" % boundary
    length += len(trailer)
    headers[0] = (b"content-type", b"multipart/byteranges; boundary=" + boundary)
    return Plan(206, headers, length, parts, trailer, body=not head_only)


def directory_listing(url_path: str, names: list[tuple[str, bool]]) -> bytes:
    """An HTML index of ``names`` (``(name, is_dir)``), every name escaped for HTML and URL."""
    title = html.escape(url_path)
    items = []
    if url_path not in ("", "/"):
        items.append('<li><a href="../">../</a></li>')
    for name, is_dir in sorted(names):
        suffix = "/" if is_dir else ""
        # names that are not UTF-8 (surrogate-escaped by os.scandir): the href keeps the exact
        # bytes, the text shows replacement characters
        href = html.escape(quote(name, errors="surrogateescape") + suffix, quote=True)
        shown = name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        items.append(f'<li><a href="{href}">{html.escape(shown + suffix)}</a></li>')
    page = (
        f'<!doctype html><html><head><meta charset="utf-8"><title>Index of {title}</title>'
        f"</head><body><h1>Index of {title}</h1><ul>{''.join(items)}</ul></body></html>\n"
    )
    return page.encode("utf-8", "replace")
