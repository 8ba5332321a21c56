"""Path routing: static paths are one dict hit, parametrised paths one regex each.

Theory of operation: a route pattern is a path with ``{name}`` or ``{name:conv}`` segments.
A pattern without braces is *static*: it lives in ``Router.static``, a dict of
``path -> {method -> Endpoint}``, so the common case (``/plaintext``) costs one dict lookup and
no regex. Other patterns are compiled once into an anchored regex and tried in registration
order; the first route whose regex matches *and* has the method wins. Converters:

=========  =====================================  ==============
converter  matches                                value
=========  =====================================  ==============
``str``    one non-empty segment (no ``/``)       ``str``
``int``    ASCII digits                           ``int``
``float``  digits, optional ``.digits``, finite   ``float``
``path``   the rest of the path, may contain /    ``str``
``uuid``   8-4-4-4-12 hex digits                  ``uuid.UUID``
=========  =====================================  ==============

Lookup outcomes: an endpoint (+ params); "path exists, method does not" (405, with the sorted
``Allow`` list); or nothing (404). ``GET`` routes serve ``HEAD`` too unless a ``HEAD`` route is
registered explicitly.

Trailing slashes are significant: ``/a`` and ``/a/`` are different paths. When a lookup misses
but the other spelling exists, :meth:`Router.redirect_slash` returns it so the app can answer
``308 Permanent Redirect`` (method and body preserved). Only the miss path pays for that check.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .exchange import Exchange, MemoryAnswer, RequestHead

Handler = Callable[..., Awaitable[Any]]

_PARAM = re.compile(r"{([A-Za-z_][A-Za-z0-9_]*)(?::([A-Za-z_]+))?}")


def _finite_float(text: str) -> float:
    """``float`` for the ``float`` converter: a number too long to be finite does not match."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:20]}... is not a finite float")
    return value


CONVERTERS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "str": (r"[^/]+", str),
    "int": (r"[0-9]+", int),
    "float": (r"[0-9]+(?:\.[0-9]+)?", _finite_float),
    "path": (r".*", str),
    "uuid": (
        r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
        uuid.UUID,
    ),
}


class Endpoint:
    """A handler bound to one path pattern and a set of methods."""

    __slots__ = ("func", "max_body_size", "methods", "name", "from_memory", "path", "serve")

    def __init__(
        self,
        func: Handler,
        path: str,
        methods: tuple[str, ...],
        max_body_size: int | None = None,
        name: str | None = None,
    ) -> None:
        self.func = func  # async def func(request) -> result
        self.path = path  # the pattern as registered
        self.methods = methods  # upper-case methods this endpoint was registered for
        self.max_body_size = max_body_size  # per-route body limit (None: server-wide limit)
        self.name = name or getattr(func, "__name__", "endpoint")
        # Optional shortcut the app takes when no middleware wraps it: answers the exchange
        # itself from the path params, with no Request or Response object (static mounts).
        # ``func`` stays the handler middleware sees; both must answer alike.
        self.serve: Callable[[Exchange, dict[str, Any]], Awaitable[None]] | None = None
        # And its answer from memory (see server.exchange.MemoryAnswering), for App's.
        self.from_memory: Callable[[RequestHead, dict[str, Any]], MemoryAnswer | None] | None
        self.from_memory = None

    def __repr__(self) -> str:
        return f"<Endpoint {self.name} {'|'.join(self.methods)} {self.path!r}>"


class Route:
    """One parametrised pattern: its compiled regex, converters and method table."""

    __slots__ = ("convert", "methods", "pattern", "regex")

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.regex, self.convert = compile_pattern(pattern)
        self.methods: dict[str, Endpoint] = {}  # upper-case method -> endpoint

    def match(self, path: str) -> dict[str, Any] | None:
        m = self.regex.match(path)
        if m is None:
            return None
        try:
            return {k: self.convert[k](v) for k, v in m.groupdict().items()}
        except ValueError:
            return None

    def __repr__(self) -> str:
        return f"<Route {self.pattern!r} {sorted(self.methods)}>"


def compile_pattern(pattern: str) -> tuple[re.Pattern[str], dict[str, Callable[[str], Any]]]:
    """Compile ``/users/{id:int}`` into an anchored regex and its converters."""
    if not pattern.startswith("/"):
        raise ValueError(f"route path must start with '/': {pattern!r}")
    parts: list[str] = []
    convert: dict[str, Callable[[str], Any]] = {}
    pos = 0
    for m in _PARAM.finditer(pattern):
        name, conv = m.group(1), m.group(2) or "str"
        if conv not in CONVERTERS:
            raise ValueError(f"unknown path converter {conv!r} in {pattern!r}")
        if name in convert:
            raise ValueError(f"duplicate path parameter {name!r} in {pattern!r}")
        regex, func = CONVERTERS[conv]
        parts.append(re.escape(pattern[pos : m.start()]))
        parts.append(f"(?P<{name}>{regex})")
        convert[name] = func
        pos = m.end()
    rest = pattern[pos:]
    if "{" in rest or "}" in rest:
        raise ValueError(f"malformed path parameter in {pattern!r}")
    parts.append(re.escape(rest))
    return re.compile("".join(parts) + r"\Z"), convert


class PathMemo:
    """``locate(path)`` remembered per request path.

    ``memo.get(path)`` is the answer for a path seen before (a dict hit: a keep-alive client
    repeats its paths, and the parser hands out one ``str`` per distinct target, its hash kept);
    None for a path not seen yet (``locate`` must never answer None), for which :meth:`find`
    calls ``locate`` and remembers the answer. It stands in for prefix tests: before Python
    3.13 ``str.startswith`` parses its arguments on every call, and the dict hit is several
    times cheaper. ``memo`` is cleared when it holds ``limit`` paths (clients choose paths:
    memory stays bounded).
    """

    __slots__ = ("limit", "locate", "memo")

    def __init__(self, locate: Callable[[str], Any], limit: int = 4096) -> None:
        self.locate = locate
        self.memo: dict[str, Any] = {}
        self.limit = limit

    def find(self, path: str) -> Any:
        """``locate(path)``, remembered."""
        found = self.locate(path)
        memo = self.memo
        if len(memo) >= self.limit:
            memo.clear()
        memo[path] = found
        return found

    def __repr__(self) -> str:
        return f"<PathMemo {self.locate!r} remembered={len(self.memo)}>"


def is_static(pattern: str) -> bool:
    return "{" not in pattern


class Router:
    """All routes of an app. ``static`` is the dict fast path, ``dynamic`` the regex list."""

    __slots__ = ("dynamic", "static")

    def __init__(self) -> None:
        self.static: dict[str, dict[str, Endpoint]] = {}  # exact path -> method -> endpoint
        self.dynamic: list[Route] = []  # parametrised patterns, registration order

    def add(
        self,
        path: str,
        methods: list[str] | tuple[str, ...],
        func: Handler,
        *,
        max_body_size: int | None = None,
        name: str | None = None,
    ) -> Endpoint:
        methods = tuple(m.upper() for m in methods)
        if not methods:
            raise ValueError("a route needs at least one method")
        endpoint = Endpoint(func, path, methods, max_body_size, name)
        if is_static(path):
            compile_pattern(path)  # validates the shape
            table = self.static.setdefault(path, {})
        else:
            route = next((r for r in self.dynamic if r.pattern == path), None)
            if route is None:
                route = Route(path)
                self.dynamic.append(route)
            table = route.methods
        for method in methods:
            table[method] = endpoint
        if "GET" in methods and "HEAD" not in methods:
            current = table.get("HEAD")
            if current is None or "HEAD" not in current.methods:
                table["HEAD"] = endpoint  # implicit HEAD; an explicit HEAD route wins
        return endpoint

    def lookup(self, method: str, path: str) -> tuple[Endpoint | None, dict[str, Any], list[str]]:
        """Resolve a request: ``(endpoint, params, [])`` on a hit, ``(None, {}, allow)`` for a
        405 (``allow`` non-empty) and ``(None, {}, [])`` for a 404."""
        table = self.static.get(path)
        if table is not None:
            ep = table.get(method)
            if ep is not None:
                return ep, {}, []
            allow = set(table)
        else:
            allow = set()
        for route in self.dynamic:
            params = route.match(path)
            if params is None:
                continue
            ep = route.methods.get(method)
            if ep is not None:
                return ep, params, []
            allow.update(route.methods)
        return None, {}, sorted(allow)

    def methods(self) -> list[str]:
        """Every method some route answers (the ``Allow`` of a server-wide ``OPTIONS *``)."""
        found: set[str] = set()
        for table in self.static.values():
            found.update(table)
        for route in self.dynamic:
            found.update(route.methods)
        return sorted(found)

    def redirect_slash(self, path: str) -> str | None:
        """The other trailing-slash spelling of ``path`` if that one is routed, else None."""
        if path == "/":
            return None
        other = path[:-1] if path.endswith("/") else path + "/"
        if other in self.static or any(r.match(other) is not None for r in self.dynamic):
            return other
        return None

    def __repr__(self) -> str:
        return f"<Router static={len(self.static)} dynamic={len(self.dynamic)}>"
