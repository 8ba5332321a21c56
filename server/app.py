"""The native framework: :class:`App` routes each Exchange to an ``async def handler(request)``.

Theory of operation. ``App`` *is* an app handler: the connection layer calls
``await app(exchange)`` once per request. Two paths:

* **Fast path** (no middleware): one dict lookup of ``head.path`` in the router's static table,
  one of ``head.method``, a lazily-parsing :class:`~server.request.Request`, the handler, and a
  single ``exchange.respond`` for ``str``/``bytes``/``dict``/``list``/whole-body responses. No
  regex, no header or query parsing, no per-request allocation beyond the Request and the
  response header list.
* **General path**: parametrised routes (one regex each), 404 / 405 (+ ``Allow``) / 308 slash
  redirect, and the middleware chain. The route is resolved *before* middleware runs, so a
  middleware sees ``request.path_params``/``request.endpoint``; 404s and 405s still pass
  through middleware as ordinary responses. Middleware registered first is outermost.

Errors. ``HTTPException(status, detail)`` becomes that response. ``@app.exception_handler(T)``
handlers are looked up along the exception's MRO and return a response. Anything else is logged
once on ``logging.getLogger("server.app")`` and answered with a generic 500 when nothing was
sent yet; if a response had started, the handler returns without ending it and the connection
layer aborts the connection. A client that disconnected is not an error and is not logged;
:class:`~server.exchange.BodyTooLarge` is answered 413.

Startup/shutdown hooks run through :meth:`App.startup` / :meth:`App.shutdown` (the server and
the test client call them). ``app.static(prefix, directory)`` mounts a
:class:`~server.staticfiles.StaticFiles` (zero-copy, conditional and range requests, open-file
cache, safe paths).
"""

from __future__ import annotations

import http
import inspect
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import quote

from server.config import Config
from server.exchange import (
    BodyTooLarge,
    ClientDisconnected,
    Exchange,
    MemoryAnswer,
    RequestHead,
)
from server.request import Request
from server.response import (
    CT_BYTES,
    CT_JSON,
    CT_TEXT,
    RedirectResponse,
    Response,
    dump_json,
    to_response,
)
from server.routing import Endpoint, Handler, Router
from server.static import contained, split_path
from server.staticfiles import MEMORY_MAX, SMALL_MAX, StaticFiles

log = logging.getLogger("server.app")

F = TypeVar("F", bound=Callable[..., Any])
CallNext = Callable[[Request], Awaitable[Response]]
Middleware = Callable[[Request, CallNext], Awaitable[Any]]
ExceptionHandler = Callable[[Request, Exception], Awaitable[Any]]

# Response headers of plain results, shared by every response (the Exchange contract: headers
# given to respond() are only read).
_TEXT = (CT_TEXT,)
_JSON = (CT_JSON,)
_BYTES = (CT_BYTES,)


class HTTPException(Exception):
    """Raise from a handler to answer ``status`` with ``detail`` (default: the reason phrase)."""

    def __init__(
        self, status: int, detail: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        self.status = status
        self.detail = detail if detail is not None else _phrase(status)
        self.headers = headers
        super().__init__(status, self.detail)

    def response(self) -> Response:
        return Response(self.detail, self.status, self.headers, "text/plain; charset=utf-8")

    def __repr__(self) -> str:
        return f"HTTPException({self.status}, {self.detail!r})"


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"


class App:
    """A web application: routes, middleware, hooks and error handlers."""

    def __init__(self, config: Config | None = None) -> None:
        self.config = config or Config()  # defaults for run(); the server passes its own
        self.router = Router()
        self.middlewares: list[Middleware] = []  # registration order, first is outermost
        self.startup_hooks: list[Callable[[], Any]] = []
        self.shutdown_hooks: list[Callable[[], Any]] = []
        # by exception class, or by status for HTTPException (also the router's 404 and 405)
        self.exception_handlers: dict[type[BaseException] | int, ExceptionHandler] = {}
        self._chain: CallNext | None = None  # built middleware chain, None when no middleware
        self._static = self.router.static  # same dict, bound for the fast path
        self._mounts: list[str] = []  # "prefix/" of each static mount (see answer_from_memory)

    # --- registration ---
    def route(
        self,
        path: str,
        methods: list[str] | tuple[str, ...] = ("GET",),
        *,
        max_body_size: int | None = None,
        name: str | None = None,
    ) -> Callable[[F], F]:
        def decorator(func: F) -> F:
            if not inspect.iscoroutinefunction(func):
                raise TypeError(f"route handler {func!r} must be an async def function")
            self.router.add(path, methods, func, max_body_size=max_body_size, name=name)
            return func

        return decorator

    def add_route(
        self, path: str, func: Handler, methods: list[str] | tuple[str, ...] = ("GET",), **kw: Any
    ) -> Endpoint:
        return self.router.add(path, methods, func, **kw)

    def get(self, path: str, **kw: Any) -> Callable[[F], F]:
        return self.route(path, ("GET",), **kw)

    def post(self, path: str, **kw: Any) -> Callable[[F], F]:
        return self.route(path, ("POST",), **kw)

    def put(self, path: str, **kw: Any) -> Callable[[F], F]:
        return self.route(path, ("PUT",), **kw)

    def patch(self, path: str, **kw: Any) -> Callable[[F], F]:
        return self.route(path, ("PATCH",), **kw)

    def delete(self, path: str, **kw: Any) -> Callable[[F], F]:
        return self.route(path, ("DELETE",), **kw)

    def add_middleware(self, mw: Middleware) -> None:
        self.middlewares.append(mw)
        self._chain = self._build_chain()

    def middleware(self, mw: Middleware) -> Middleware:
        """Decorator: ``async def mw(request, call_next) -> Response``."""
        self.add_middleware(mw)
        return mw

    def on_startup(self, func: F) -> F:
        self.startup_hooks.append(func)
        return func

    def on_shutdown(self, func: F) -> F:
        self.shutdown_hooks.append(func)
        return func

    def exception_handler(self, exc_type: type[BaseException] | int) -> Callable[[F], F]:
        """Decorator: ``async def handler(request, exc)`` answers ``exc_type`` (and its
        subclasses), or with a status code, every :class:`HTTPException` of that status
        (``404`` and ``405`` include requests no route matches), as in Starlette. The most
        specific handler wins: a status before a class, and an ``HTTPException`` (or a body
        over its limit) keeps its own answer unless a handler names it or a subclass, so a
        catch-all ``Exception`` handler does not turn a 404 into a 500."""

        def decorator(func: F) -> F:
            self.exception_handlers[exc_type] = func
            return func

        return decorator

    def static(
        self,
        prefix: str,
        directory: str | os.PathLike[str],
        *,
        autoindex: bool = False,
        cache_control: str | None = None,
        dotfiles: bool = False,
        precompressed: bool = True,
        memory_max: int = MEMORY_MAX,
        small_max: int = SMALL_MAX,
        revalidate: float = 1.0,
    ) -> StaticFiles:
        """Serve files under ``directory`` at ``prefix`` (GET/HEAD) with
        :class:`~server.staticfiles.StaticFiles`; its open-file cache closes on shutdown."""
        files = StaticFiles(
            directory,
            autoindex=autoindex,
            cache_control=cache_control,
            dotfiles=dotfiles,
            precompressed=precompressed,
            memory_max=memory_max,
            small_max=small_max,
            revalidate=revalidate,
        )
        prefix = "/" + prefix.strip("/")
        base = "" if prefix == "/" else prefix

        async def static_files(request: Request) -> Response:
            return files.response(request.path_params["path"])

        ep = self.router.add(base + "/{path:path}", ("GET",), static_files, name=f"static:{prefix}")
        ep.serve = lambda exchange, params: files.serve(exchange, params["path"])
        ep.from_memory = lambda head, params: files.memory_answer(head, params["path"])
        self._mounts.append(base + "/")
        self.on_shutdown(files.close)
        return files

    @property
    def answer_from_memory(self) -> Callable[[RequestHead], MemoryAnswer | None] | None:
        """The connection's answers from memory (:class:`server.exchange.MemoryAnswering`) for an
        app with static mounts: a hot file below a mount, when no middleware wraps the app, is
        answered as the mount would answer it, with no exchange or handler. None without a
        mount, so that other apps pay nothing (the server reads this once, at start)."""
        return self._answer if self._mounts and not self.middlewares else None

    @property
    def memory_paths(self) -> tuple[str, ...]:
        """Where :attr:`answer_from_memory` may answer: below the static mounts."""
        return tuple(self._mounts)

    def _answer(self, head: RequestHead) -> MemoryAnswer | None:
        if self._chain is not None:
            return None
        ep, params, _ = self.router.lookup(head.method, head.path)  # (a route may come first)
        if ep is None or ep.from_memory is None:
            return None
        return ep.from_memory(head, params)

    # --- lifecycle ---
    async def startup(self) -> None:
        for hook in self.startup_hooks:
            result = hook()
            if inspect.isawaitable(result):
                await result

    async def shutdown(self) -> None:
        for hook in self.shutdown_hooks:
            result = hook()
            if inspect.isawaitable(result):
                await result

    def run(
        self,
        host: str | None = None,
        port: int | None = None,
        workers: int | None = None,
        loop: str | None = None,
        **config: Any,
    ) -> None:
        """Serve this app (blocking) with ``self.config`` updated by the given settings."""
        from server import serve
        from server.cli import make_handler

        given = {"host": host, "port": port, "workers": workers, "loop": loop}
        cfg = self.config.with_(**{k: v for k, v in given.items() if v is not None}, **config)
        handler, startup, shutdown = make_handler(self, cfg)
        serve.run(handler, cfg, startup=startup, shutdown_hooks=shutdown)

    # --- dispatch ---
    async def __call__(self, exchange: Exchange) -> None:
        head = exchange.head
        if self._chain is None:
            table = self._static.get(head.path)
            if table is not None:
                ep = table.get(head.method)
                if ep is not None:
                    request = Request(exchange, {}, ep)
                    try:
                        result = await ep.func(request)
                        if type(result) is str:
                            exchange.respond(200, _TEXT, result.encode())
                        elif type(result) is dict:
                            exchange.respond(200, _JSON, dump_json(result))
                        else:
                            await self._send(exchange, result)
                    except Exception as exc:
                        await self._error(exchange, request, exc)
                    return
        await self._general(exchange)

    handler = __call__

    async def _send(self, exchange: Exchange, result: Any) -> None:
        if isinstance(result, Response):
            if result.streaming:
                await result.send(exchange)
            else:
                result.respond_now(exchange)
        elif isinstance(result, dict | list):
            exchange.respond(200, _JSON, dump_json(result))
        elif isinstance(result, bytes):
            exchange.respond(200, _BYTES, result)
        elif isinstance(result, str):
            exchange.respond(200, _TEXT, result.encode())
        elif result is None:
            exchange.respond(204, [], b"")
        else:
            await self._send(exchange, to_response(result))

    async def _general(self, exchange: Exchange) -> None:
        head = exchange.head
        ep, params, allow = self.router.lookup(head.method, head.path)
        if ep is not None and ep.serve is not None and self._chain is None:
            try:
                await ep.serve(exchange, params)  # e.g. a static mount: no Request/Response
            except Exception as exc:
                await self._error(exchange, Request(exchange, params, ep), exc)
            return
        request = Request(exchange, params, ep)
        try:
            if self._chain is not None:
                response = await self._chain(request)
                await self._send(exchange, response)
            elif ep is not None:
                await self._send(exchange, await ep.func(request))
            else:
                await self._send(exchange, await self._unrouted(request, allow))
        except Exception as exc:
            await self._error(exchange, request, exc)

    async def _unrouted(self, request: Request, allow: list[str]) -> Response:
        """The answer when no route takes the request: 404 or 405 (as an HTTPException, so
        that its handlers apply), or a redirect to the routed trailing-slash spelling."""
        head = request.head
        if head.raw_path == b"*":  # asterisk-form: the parser lets only OPTIONS through
            # "OPTIONS *": about the server, not a resource (RFC 9110 9.3.7): 200, what it answers
            return Response(b"", 200, [(b"allow", ", ".join(self.router.methods()).encode())])
        if allow:
            exc = HTTPException(405, headers={"allow": ", ".join(allow)})
        elif request.method in _REDIRECTED and (other := self.router.redirect_slash(request.path)):
            # the routed spelling percent-encoded again (a decoded ?, # or % would make a
            # query, a fragment or another escape of it), with one leading slash (``//x``
            # would be another host)
            location = "/" + quote(other, safe=_PATH_SAFE).lstrip("/")
            if head.query_string:
                location += "?" + head.query_string.decode("latin-1")
            return RedirectResponse(location, 308)
        else:
            exc = HTTPException(404)
        response = await self._handled(request, exc)
        assert response is not None  # (an HTTPException always has an answer)
        return response

    async def _innermost(self, request: Request) -> Response:
        ep = request.endpoint
        if ep is None:
            _, _, allow = self.router.lookup(request.method, request.path)
            return await self._unrouted(request, allow)
        try:
            return to_response(await ep.func(request))
        except Exception as exc:
            response = await self._handled(request, exc)
            if response is None:
                raise
            return response

    def _build_chain(self) -> CallNext | None:
        if not self.middlewares:
            return None
        call: CallNext = self._innermost
        for mw in reversed(self.middlewares):
            call = _wrap(mw, call)
        return call

    async def _handled(self, request: Request, exc: Exception) -> Response | None:
        """The response for a known exception, or None if nothing handles it."""
        handlers = self.exception_handlers
        if handlers:
            handler = None  # a handler of the status first
            if isinstance(exc, HTTPException):
                handler = handlers.get(exc.status)
            elif isinstance(exc, BodyTooLarge):
                handler = handlers.get(413)
            if handler is None:
                for cls in type(exc).__mro__:
                    handler = handlers.get(cls)
                    if handler is not None or cls is HTTPException or cls is BodyTooLarge:
                        break  # (these two answer themselves before any base class handler)
            if handler is not None:
                return to_response(await handler(request, exc))
        if isinstance(exc, HTTPException):
            return exc.response()
        if isinstance(exc, BodyTooLarge):
            return Response(
                "Request body too large",
                413,
                [(b"connection", b"close")],
                "text/plain; charset=utf-8",
            )
        return None

    async def _error(self, exchange: Exchange, request: Request, exc: Exception) -> None:
        if isinstance(exc, ClientDisconnected) or exchange.disconnected:
            return
        try:
            response = await self._handled(request, exc)
        except Exception as exc2:  # an exception handler failed: report that one
            exc = exc2
            response = None
        if response is not None and not exchange.response_started:
            try:
                await self._send(exchange, response)
                return
            except ClientDisconnected:
                return
            except Exception as exc3:
                exc = exc3
        elif response is not None:
            return  # too late to answer; the connection aborts the half-sent response
        log.error("Unhandled exception in %s %s", request.method, request.path, exc_info=exc)
        if not exchange.response_started:
            exchange.respond(500, _TEXT, b"Internal Server Error")

    def __repr__(self) -> str:
        return (
            f"<App routes={len(self.router.static)}+{len(self.router.dynamic)} "
            f"middleware={len(self.middlewares)} hooks={len(self.startup_hooks)}/{len(self.shutdown_hooks)}>"
        )


_REDIRECTED = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"))
_PATH_SAFE = "/!$&'()*+,;=:@~"  # what a path segment may hold unescaped (RFC 3986 pchar)


def _wrap(mw: Middleware, nxt: CallNext) -> CallNext:
    async def call(request: Request) -> Response:
        return to_response(await mw(request, nxt))

    return call


def safe_join(root: str, rel: str) -> str | None:
    """``root``/``rel`` resolved, or None when ``rel`` would leave ``root`` (kept for callers
    of the old API; static mounts use :func:`server.filecache.open_beneath`).

    ``rel`` is the already percent-decoded remainder of the URL path. Refused: NUL, backslash,
    an absolute path, any ``..`` segment, and anything whose real path (after following
    symlinks) is outside the real ``root``.
    """
    parts = split_path(rel, allow_dotfiles=True)
    if parts is None:
        return None
    real = os.path.realpath(os.path.join(root, *parts))
    return real if contained(real, os.path.realpath(root)) else None
