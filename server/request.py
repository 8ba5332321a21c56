"""The framework's view of one request: :class:`Request`, plus the small mappings it hands out.

Theory of operation: a :class:`Request` wraps the connection layer's
:class:`~server.exchange.Exchange` and parses *nothing* up front. ``headers``, ``query``,
``cookies`` and ``state`` are built on first access and cached in slots, so a handler that only
returns ``"Hello"`` pays for one small object allocation. The body is pulled from the exchange
on demand (``body()``, ``json()``, ``form()``, ``stream()``); the bytes read are counted against
the route's body limit (the connection layer enforces the server-wide one and raises
:class:`~server.exchange.BodyTooLarge`, which the app answers with 413).

:class:`Headers` is the one case-insensitive multi-valued header mapping of the package, used for
request headers (read-only use) and for response headers (mutable). It stores the wire form
``list[tuple[bytes, bytes]]`` and decodes latin-1 on lookup, so no dict is built per request.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from server.exchange import Exchange
from server.exchange import Headers as RawHeaders

if TYPE_CHECKING:
    from server.routing import Endpoint

HeaderInit = Mapping[str, str] | Iterable[tuple[str | bytes, str | bytes]] | None


def _b(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("latin-1")


class Headers:
    """Case-insensitive, multi-valued header mapping over a list of ``(bytes, bytes)`` pairs.

    ``h["Content-Type"]`` is the first value (``KeyError`` if absent), ``h.getlist(name)`` all of
    them in wire order. Mutation (``h[name] = v`` replaces, ``h.append`` adds, ``del h[name]``)
    is used for response headers. Names are stored lower-case.
    """

    __slots__ = ("raw",)

    def __init__(self, raw: RawHeaders | HeaderInit = None, *, lowercase: bool = False) -> None:
        # raw: list of (lower-case name, value) bytes pairs, wire order, duplicates kept.
        # lowercase=True: the caller guarantees lower-case names and gives the list away
        # (parsed request headers); any other list is copied, so that mutating these headers
        # never changes the caller's list (often a constant shared by every response).
        if raw is None:
            self.raw: RawHeaders = []
        elif lowercase:
            self.raw = raw  # type: ignore[assignment]
        elif isinstance(raw, list) and (not raw or isinstance(raw[0][0], bytes)):
            self.raw = [(k.lower(), v) for k, v in raw]  # type: ignore[misc]
        else:
            items = raw.items() if isinstance(raw, Mapping) else raw
            self.raw = [(_b(k).lower(), _b(v)) for k, v in items]

    def get(self, name: str, default: str | None = None) -> str | None:
        key = name.lower().encode("latin-1")
        for k, v in self.raw:
            if k == key:
                return v.decode("latin-1")
        return default

    def getlist(self, name: str) -> list[str]:
        key = name.lower().encode("latin-1")
        return [v.decode("latin-1") for k, v in self.raw if k == key]

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __setitem__(self, name: str, value: str) -> None:
        key = name.lower().encode("latin-1")
        self.raw[:] = [(k, v) for k, v in self.raw if k != key]
        self.raw.append((key, value.encode("latin-1")))

    def __delitem__(self, name: str) -> None:
        key = name.lower().encode("latin-1")
        self.raw[:] = [(k, v) for k, v in self.raw if k != key]

    def setdefault(self, name: str, value: str) -> str:
        current = self.get(name)
        if current is None:
            self.append(name, value)
            return value
        return current

    def append(self, name: str, value: str) -> None:
        self.raw.append((name.lower().encode("latin-1"), value.encode("latin-1")))

    def keys(self) -> list[str]:
        seen: dict[str, None] = {}
        for k, _ in self.raw:
            seen.setdefault(k.decode("latin-1"), None)
        return list(seen)

    def items(self) -> list[tuple[str, str]]:
        return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in self.raw]

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.raw)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Headers) and sorted(self.raw) == sorted(other.raw)

    def __repr__(self) -> str:
        return f"Headers({self.items()!r})"


class QueryParams:
    """Read-only multi-dict of the query string: ``q["a"]`` (first value), ``q.getlist("a")``."""

    __slots__ = ("_items",)

    def __init__(self, query: bytes | str | Iterable[tuple[str, str]] = b"") -> None:
        # _items: decoded (name, value) pairs in query-string order.
        if isinstance(query, bytes):
            query = query.decode("utf-8", "replace")
        if isinstance(query, str):
            self._items: list[tuple[str, str]] = parse_qsl(query, keep_blank_values=True)
        else:
            self._items = list(query)

    def get(self, name: str, default: str | None = None) -> str | None:
        for k, v in self._items:
            if k == name:
                return v
        return default

    def getlist(self, name: str) -> list[str]:
        return [v for k, v in self._items if k == name]

    def __getitem__(self, name: str) -> str:
        for k, v in self._items:
            if k == name:
                return v
        raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        return any(k == name for k, _ in self._items)

    def keys(self) -> list[str]:
        return list(dict.fromkeys(k for k, _ in self._items))

    def items(self) -> list[tuple[str, str]]:
        return list(self._items)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def __repr__(self) -> str:
        return f"QueryParams({self._items!r})"


def parse_cookies(header: str) -> dict[str, str]:
    """Parse a ``Cookie`` header leniently (RFC 6265 §5.4 shape); first occurrence wins."""
    out: dict[str, str] = {}
    for part in header.split(";"):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or not name:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        out.setdefault(name, value)
    return out


class Request:
    """One HTTP request as seen by a handler. Cheap to create: everything is parsed lazily."""

    __slots__ = (
        "_body",
        "_consumed",
        "_cookies",
        "_headers",
        "_query",
        "_state",
        "endpoint",
        "exchange",
        "head",
        "path_params",
    )

    def __init__(
        self, exchange: Exchange, path_params: dict[str, Any], endpoint: Endpoint | None = None
    ) -> None:
        self.exchange = exchange
        self.head = exchange.head
        self.path_params = path_params  # converted values of the route's {name:conv} segments
        self.endpoint = endpoint  # the matched route endpoint (None for 404/405)
        self._headers: Headers | None = None
        self._query: QueryParams | None = None
        self._cookies: dict[str, str] | None = None
        self._state: SimpleNamespace | None = None
        self._body: bytes | None = None  # the whole body once read by body()
        self._consumed = False  # True once stream() started pulling chunks

    # --- request line and headers ---
    @property
    def method(self) -> str:
        return self.head.method

    @property
    def path(self) -> str:
        return self.head.path

    @property
    def http_version(self) -> str:
        return self.head.http_version

    @property
    def url(self) -> str:
        """The request's URL, its path as the client sent it (percent-encoded: ``path`` is
        decoded, and a decoded ``%3F`` or space would break the URL)."""
        host = self.headers.get("host") or "localhost"
        qs = self.head.query_string
        return f"{self.head.scheme}://{host}{self.head.raw_path.decode('latin-1')}" + (
            f"?{qs.decode('latin-1')}" if qs else ""
        )

    @property
    def headers(self) -> Headers:
        h = self._headers
        if h is None:
            h = self._headers = Headers(self.head.headers, lowercase=True)
        return h

    @property
    def query(self) -> QueryParams:
        q = self._query
        if q is None:
            q = self._query = QueryParams(self.head.query_string)
        return q

    @property
    def cookies(self) -> dict[str, str]:
        c = self._cookies
        if c is None:
            c = {}
            for k, v in self.head.headers:
                if k == b"cookie":
                    for name, value in parse_cookies(v.decode("latin-1")).items():
                        c.setdefault(name, value)
            self._cookies = c
        return c

    @property
    def client(self) -> tuple[str, int] | None:
        return self.head.client

    @property
    def state(self) -> SimpleNamespace:
        s = self._state
        if s is None:
            s = self._state = SimpleNamespace()
        return s

    # --- body ---
    def _limit(self) -> int | None:
        ep = self.endpoint
        return ep.max_body_size if ep is not None else None

    async def stream(self) -> AsyncIterator[bytes]:
        """Yield body chunks as they arrive (at most once per request; after body() it replays)."""
        from server.app import HTTPException

        if self._body is not None:
            if self._body:
                yield self._body
            return
        if self._consumed:
            raise RuntimeError("request body already consumed")
        self._consumed = True
        limit = self._limit()
        if limit is not None:
            declared = self.head.get_header(b"content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise HTTPException(413, "Request body too large")
        seen = 0
        while True:
            chunk = await self.exchange.receive()
            if not chunk:
                return
            seen += len(chunk)
            if limit is not None and seen > limit:
                raise HTTPException(413, "Request body too large")
            yield chunk

    async def body(self) -> bytes:
        """The whole request body (read once, then cached)."""
        if self._body is None:
            chunks = [c async for c in self.stream()]
            self._body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        return self._body

    async def text(self) -> str:
        return (await self.body()).decode("utf-8", "replace")

    async def json(self) -> Any:
        """The body parsed as JSON; a malformed body raises ``HTTPException(400)``."""
        from server.app import HTTPException

        data = await self.body()
        try:
            return json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise HTTPException(400, f"Invalid JSON body: {exc}")

    async def form(self) -> QueryParams:
        """An ``application/x-www-form-urlencoded`` body as a multi-dict (415 for other types)."""
        from server.app import HTTPException

        ctype = (self.headers.get("content-type") or "").split(";")[0].strip().lower()
        if ctype != "application/x-www-form-urlencoded":
            raise HTTPException(415, "Expected application/x-www-form-urlencoded")
        data = await self.body()
        return QueryParams(data.decode("utf-8", "replace"))

    def __repr__(self) -> str:
        return (
            f"<Request {self.head.method} {self.head.path!r} params={self.path_params!r} "
            f"body={'read' if self._body is not None else 'streaming' if self._consumed else 'unread'}>"
        )
