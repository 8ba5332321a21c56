"""Listening and running: ``await serve(handler, config)`` and the blocking ``run(handler, config)``.

Theory of operation
-------------------
:func:`serve` binds one listener (host/port, a Unix socket ``uds``, or an inherited
``fd``), optionally with TLS, whose protocol factory is a :class:`~server.pool.ConnectionPool`.
It reports the bound addresses through ``ready`` and runs until ``shutdown`` is set or the
process gets SIGINT/SIGTERM. Graceful shutdown: stop accepting, tell every connection to
finish its response in flight with ``Connection: close`` (idle ones close at once), wait up to
``graceful_timeout``, then abort whatever is left.

:func:`run` picks the event loop from ``config.loop`` (``netpoll``, ``uvloop`` or ``asyncio``),
runs the startup hooks, :func:`serve`, then the shutdown hooks. With ``workers > 1`` it forks
that many processes; on TCP each binds its own ``SO_REUSEPORT`` socket (the kernel spreads
connections), on a Unix socket or inherited fd they share the parent's listener. The parent
forwards SIGINT/SIGTERM and waits (a respawning supervisor is a later issue). A port in use
gives one line on stderr and exit status 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import signal
import socket
import ssl
import stat
import sys
from collections.abc import Callable, Iterable
from typing import Any

from .config import Config
from .exchange import AppHandler
from .pool import ConnectionPool

__all__ = ["BindError", "loop_factory", "run", "serve"]

Hook = Callable[[], Any]


class BindError(OSError):
    """The listening address could not be bound (message names the address)."""


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """The event-loop constructor for ``config.loop``; a clear error when unavailable."""
    if name == "netpoll":
        try:
            import netpoll
        except ImportError as exc:
            raise RuntimeError(f"loop 'netpoll' requested but netpoll is not importable: {exc}")
        return netpoll.new_event_loop
    if name == "uvloop":
        try:
            import uvloop
        except ImportError as exc:
            raise RuntimeError(f"loop 'uvloop' requested but uvloop is not installed: {exc}")
        return uvloop.new_event_loop
    if name == "asyncio":
        return asyncio.SelectorEventLoop if sys.platform != "win32" else asyncio.new_event_loop
    raise ValueError(f"unknown loop {name!r} (netpoll, uvloop or asyncio)")


def ssl_context(config: Config) -> ssl.SSLContext | None:
    """A server TLS context from ``ssl_certfile``/``ssl_keyfile``, or None."""
    if not config.ssl_certfile:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(config.ssl_certfile, config.ssl_keyfile)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def _backlog(config: Config) -> int:
    try:
        with open("/proc/sys/net/core/somaxconn") as f:
            return min(config.backlog, int(f.read()))
    except (OSError, ValueError):
        return config.backlog


def _address(config: Config) -> str:
    if config.fd is not None:
        return f"fd {config.fd}"
    if config.uds:
        return f"unix:{config.uds}"
    return f"{config.host}:{config.port}"


async def _listen(
    pool: ConnectionPool, config: Config, ctx: ssl.SSLContext | None, reuse_port: bool
) -> asyncio.AbstractServer:
    loop = asyncio.get_running_loop()
    backlog = _backlog(config)
    try:
        if config.fd is not None:
            sock = socket.socket(fileno=config.fd)
            sock.setblocking(False)
            if sock.family == socket.AF_UNIX:
                return await loop.create_unix_server(pool, sock=sock, ssl=ctx, backlog=backlog)
            return await loop.create_server(pool, sock=sock, ssl=ctx, backlog=backlog)
        if config.uds:
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISSOCK(os.stat(config.uds).st_mode):
                    os.unlink(config.uds)  # a stale socket file from a previous run
            return await loop.create_unix_server(pool, path=config.uds, ssl=ctx, backlog=backlog)
        return await loop.create_server(
            pool,
            host=config.host,
            port=config.port,
            ssl=ctx,
            backlog=backlog,
            reuse_port=reuse_port or None,
        )
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise BindError(exc.errno, f"cannot listen on {_address(config)}: {reason}") from exc


async def serve(
    handler: AppHandler,
    config: Config,
    *,
    ready: Callable[[list[tuple[Any, ...]]], None] | None = None,
    shutdown: asyncio.Event | None = None,
    reuse_port: bool = False,
) -> None:
    """Serve ``handler`` until ``shutdown`` is set or SIGINT/SIGTERM, then shut down gracefully."""
    loop = asyncio.get_running_loop()
    ctx = ssl_context(config)
    pool = ConnectionPool(handler, config, scheme="https" if ctx else "http")
    server = await _listen(pool, config, ctx, reuse_port)
    addresses: list[tuple[Any, ...]] = []
    for s in server.sockets:
        name = s.getsockname()
        addresses.append(tuple(name) if isinstance(name, tuple) else (name,))
    stop = shutdown if shutdown is not None else asyncio.Event()
    signals: list[int] = []
    if shutdown is None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
                signals.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):
                pass
    try:
        if ready is not None:
            ready(addresses)
        await stop.wait()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        server.close()  # stop accepting
        pool.shutdown()
        if not await pool.wait_empty(config.graceful_timeout):
            pool.abort_all()
            await pool.wait_empty(1.0)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 1.0)
        if config.uds and config.fd is None:
            with contextlib.suppress(OSError):
                os.unlink(config.uds)


async def _call_hooks(hooks: Iterable[Hook] | None) -> None:
    for hook in hooks or ():
        result = hook()
        if inspect.isawaitable(result):
            await result


def _run_one(
    handler: AppHandler,
    config: Config,
    startup: Iterable[Hook] | None,
    shutdown_hooks: Iterable[Hook] | None,
    reuse_port: bool = False,
) -> int:
    factory = loop_factory(config.loop)

    async def main() -> None:
        await _call_hooks(startup)
        try:
            await serve(handler, config, reuse_port=reuse_port)
        finally:
            await _call_hooks(shutdown_hooks)

    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(main())
    except BindError as exc:
        print(f"error: {exc.strerror}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


def run(
    handler: AppHandler,
    config: Config,
    *,
    startup: Iterable[Hook] | None = None,
    shutdown_hooks: Iterable[Hook] | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM (blocking); exits the process with status 1 on a bind error."""
    loop_factory(config.loop)  # fail early with a clear message
    if config.workers <= 1:
        code = _run_one(handler, config, startup, shutdown_hooks)
    else:
        code = _run_workers(handler, config, startup, shutdown_hooks)
    if code:
        raise SystemExit(code)


def _run_workers(
    handler: AppHandler,
    config: Config,
    startup: Iterable[Hook] | None,
    shutdown_hooks: Iterable[Hook] | None,
) -> int:
    """Fork ``config.workers`` processes; forward SIGINT/SIGTERM; wait for them all."""
    keep: socket.socket | None = None
    reuse_port = False
    if config.uds or config.fd is not None:
        # Share one listener: bind it here, children inherit the fd.
        if config.fd is None:
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISSOCK(os.stat(config.uds).st_mode):  # type: ignore[arg-type]
                    os.unlink(config.uds)  # type: ignore[arg-type]
            keep = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                keep.bind(config.uds)  # type: ignore[arg-type]
            except OSError as exc:
                print(
                    f"error: cannot listen on {_address(config)}: {exc.strerror}", file=sys.stderr
                )
                return 1
            keep.listen(_backlog(config))
            os.set_inheritable(keep.fileno(), True)
            config = config.with_(fd=keep.fileno())
    else:
        reuse_port = True
        if config.port == 0:
            # Reserve one port for all workers: a bound, non-listening SO_REUSEPORT socket.
            keep = socket.socket(socket.AF_INET6 if ":" in config.host else socket.AF_INET)
            keep.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            keep.bind((config.host, 0))
            config = config.with_(port=keep.getsockname()[1])
    children: list[int] = []
    for _ in range(config.workers):
        pid = os.fork()
        if pid == 0:  # child
            code = 1
            try:
                signal.signal(signal.SIGINT, signal.default_int_handler)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                code = _run_one(handler, config, startup, shutdown_hooks, reuse_port=reuse_port)
            finally:
                os._exit(code)
        children.append(pid)

    def forward(signum: int, _frame: Any) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    code = 0
    try:
        for child in children:
            while True:
                try:
                    _, status = os.waitpid(child, 0)
                    break
                except InterruptedError:
                    continue
            if os.waitstatus_to_exitcode(status) not in (0, -signal.SIGTERM, -signal.SIGINT):
                code = 1
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if keep is not None:
            keep.close()
            if config.uds:
                with contextlib.suppress(OSError):
                    os.unlink(config.uds)
    return code
