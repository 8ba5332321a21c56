"""Listening and running: ``await serve(handler, config)`` and the blocking ``run(handler, config)``.

Theory of operation
-------------------
:func:`serve` binds one listener (host/port, a Unix socket ``uds``, or an inherited
``fd``), optionally with TLS, whose protocol factory is a :class:`~server.pool.ConnectionPool`.
It reports the bound addresses through ``ready`` and runs until ``shutdown`` is set or the
process gets SIGINT/SIGTERM. Graceful shutdown: stop accepting, tell every connection to
finish its response in flight with ``Connection: close`` (idle ones close at once), wait up to
``graceful_timeout``, then abort whatever is left.

:func:`run` picks the event loop from ``config.loop`` (``netpoll``, ``uvloop`` or ``asyncio``).
One worker is served in this process (:func:`run_worker`: startup hooks, :func:`serve`,
shutdown hooks). With ``workers > 1``, ``supervise`` or ``max_requests`` it hands over to the
prefork :class:`~server.supervisor.Supervisor` (respawn, SIGHUP reload, heartbeats,
recycling), whose workers call :func:`run_worker` on the listener it gives them. Metrics,
health and recycling wrap the handler (:func:`instrumented`), the connection layer is not
touched. A port in use gives one line on stderr and exit status 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
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
from .forwarded import trusted
from .metrics import READY, Instrument, MetricsBoard, WorkerState
from .pool import ConnectionPool

__all__ = ["BindError", "loop_factory", "run", "run_worker", "serve"]

log = logging.getLogger("server.serve")
Hook = Callable[[], Any]
#: Re-imports the application: returns ``(handler, startup hooks, shutdown hooks)``.
Loader = Callable[[], tuple[Any, list[Any], list[Any]]]


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
    # a TLS handshake has as long as a request head (not asyncio's default of 60 s)
    kw: dict[str, Any] = {"backlog": _backlog(config)}
    if ctx is not None:
        kw.update(ssl=ctx, ssl_handshake_timeout=config.header_timeout)
    try:
        if config.fd is not None:
            sock = socket.socket(fileno=config.fd)
            sock.setblocking(False)
            if sock.family == socket.AF_UNIX:
                return await loop.create_unix_server(pool, sock=sock, **kw)
            return await loop.create_server(pool, sock=sock, **kw)
        if config.uds:
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISSOCK(os.stat(config.uds).st_mode):
                    os.unlink(config.uds)  # a stale socket file from a previous run
            return await loop.create_unix_server(pool, path=config.uds, **kw)
        return await loop.create_server(
            pool, host=config.host, port=config.port, reuse_port=reuse_port or None, **kw
        )
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise BindError(exc.errno, f"cannot listen on {_address(config)}: {reason}") from exc


_SUPERVISOR_SIGNALS = [
    (getattr(signal, name), why)
    for name, why in (
        ("SIGHUP", "reloading takes a supervisor (--supervise or --workers N)"),
        ("SIGTTIN", "adding a worker takes a supervisor (--supervise or --workers N)"),
        ("SIGTTOU", "removing a worker takes a supervisor (--supervise or --workers N)"),
        ("SIGUSR1", "logs go to stderr, there is no log file to reopen"),
    )
    if hasattr(signal, name)
]


async def serve(
    handler: AppHandler,
    config: Config,
    *,
    ready: Callable[[list[tuple[Any, ...]]], None] | None = None,
    shutdown: asyncio.Event | None = None,
    reuse_port: bool = False,
    state: WorkerState | None = None,
    drain_grace: float = 0.0,
) -> None:
    """Serve ``handler`` until ``shutdown`` is set or SIGINT/SIGTERM, then shut down gracefully.

    ``state`` (a supervised worker's :class:`~server.metrics.WorkerState`) learns the pool and
    is marked draining when accepting stops. ``drain_grace`` > 0 first lets busy keep-alive
    connections get one more answer (with ``Connection: close``, see
    :class:`~server.metrics.Instrument`) for up to that many seconds before idle ones close.
    """
    loop = asyncio.get_running_loop()
    config.check()
    ctx = ssl_context(config)
    trusted(config.forwarded_allow_ips)  # (a bad value fails here, not on a request)
    pool = ConnectionPool(handler, config, scheme="https" if ctx else "http")
    server = await _listen(pool, config, ctx, reuse_port)
    if state is not None:
        state.attach(pool, loop)
    addresses: list[tuple[Any, ...]] = []
    for s in server.sockets:
        name = s.getsockname()
        addresses.append(tuple(name) if isinstance(name, tuple) else (name,))
    stop = shutdown if shutdown is not None else asyncio.Event()
    signals: list[int] = []  # SIGINT, SIGTERM: a second one during the drain acts by default
    quiet: list[tuple[int, Any]] = []  # (signal, its handler before): restored at the end
    if shutdown is None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            if _add_signal_handler(loop, sig, stop.set):
                signals.append(sig)
        # What a supervisor would do is said, not done (the default actions would end or stop
        # the process); a signal ignored already (by the supervisor for its workers, or
        # nohup) stays ignored.
        for sig, why in _SUPERVISOR_SIGNALS:
            before = signal.getsignal(sig)
            if before is not signal.SIG_IGN and _add_signal_handler(
                loop, sig, log.warning, "%s ignored: %s", sig.name, why
            ):
                quiet.append((sig, before))
    try:
        if ready is not None:
            ready(addresses)
        await stop.wait()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        try:
            await _drain(server, pool, config, state, drain_grace, shutdown is None)
        finally:
            for sig, before in quiet:
                loop.remove_signal_handler(sig)
                if before is not None:
                    signal.signal(sig, before)


def _add_signal_handler(loop: asyncio.AbstractEventLoop, sig: int, call: Any, *args: Any) -> bool:
    try:
        loop.add_signal_handler(sig, call, *args)
    except (NotImplementedError, RuntimeError, ValueError):
        return False
    return True


async def _drain(
    server: asyncio.AbstractServer,
    pool: ConnectionPool,
    config: Config,
    state: WorkerState | None,
    drain_grace: float,
    said: bool,
) -> None:
    """The graceful shutdown: stop accepting, let requests in flight finish (busy keep-alive
    connections first get ``drain_grace`` for one more request), force-close what is left at
    ``graceful_timeout``; ``said``: log it (a signal asked for it)."""
    loop = asyncio.get_running_loop()
    server.close()  # stop accepting
    if said:
        log.info("shutting down: %d connections open", len(pool.active))
    deadline = loop.time() + config.graceful_timeout
    if state is not None:
        state.draining = True
    if drain_grace > 0:
        await pool.wait_empty(min(drain_grace, config.graceful_timeout))
    pool.shutdown()
    if not await pool.wait_empty(max(0.0, deadline - loop.time())):
        log.warning(
            "graceful_timeout (%g s) passed: closing %d connections",
            config.graceful_timeout,
            len(pool.active),
        )
        pool.abort_all()
        await pool.wait_empty(1.0)
    # handlers still working after their answer went out (e.g. BackgroundTasks)
    await pool.wait_detached(max(0.0, deadline - loop.time()))
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


def run_worker(
    handler: AppHandler,
    config: Config,
    startup: Iterable[Hook] | None,
    shutdown_hooks: Iterable[Hook] | None,
    *,
    reuse_port: bool = False,
    state: WorkerState | None = None,
    ready: Callable[[list[tuple[Any, ...]]], None] | None = None,
    drain_grace: float = 0.0,
    heartbeat: float = 0.0,
    parent: int | None = None,
) -> int:
    """One serving process: a fresh loop, the startup hooks, :func:`serve`, the shutdown hooks.

    With ``heartbeat`` > 0 a task calls ``state.beat()`` that often (the supervisor's liveness
    check, plus the metrics gauges), and checks that the process ``parent`` (the supervisor)
    is still this one's parent: if it died (SIGKILL), the worker shuts down gracefully rather
    than serving on as an orphan that holds the port. Returns the exit status (1 on a bind
    error).
    """
    factory = loop_factory(config.loop)

    async def beat(state: WorkerState) -> None:
        while True:
            if parent is not None and os.getppid() != parent:
                log.warning("supervisor %d is gone: shutting down", parent)
                os.kill(os.getpid(), signal.SIGTERM)  # (serve's graceful shutdown)
                return
            state.beat()
            await asyncio.sleep(heartbeat)

    async def main() -> None:
        beater = None
        if state is not None and heartbeat > 0:
            beater = asyncio.create_task(beat(state))
        try:
            await _call_hooks(startup)
            try:
                await serve(
                    handler,
                    config,
                    reuse_port=reuse_port,
                    state=state,
                    ready=ready,
                    drain_grace=drain_grace,
                )
            finally:
                await _call_hooks(shutdown_hooks)
        finally:
            if beater is not None:
                beater.cancel()

    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(main())
    except BindError as exc:
        print(f"netpoll-server: error: {exc.strerror}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


def _log_listening(config: Config, addresses: list[tuple[Any, ...]]) -> None:
    scheme = "https" if config.ssl_certfile else "http"
    where = []
    for a in addresses:
        if len(a) == 1:
            where.append(f"unix:{a[0]}" if config.fd is None else f"fd {config.fd} ({a[0]})")
        else:
            host = f"[{a[0]}]" if ":" in str(a[0]) else a[0]
            where.append(f"{scheme}://{host}:{a[1]}")
    log.info("listening on %s (single process %d)", ", ".join(where), os.getpid())


def instrumented(handler: AppHandler, config: Config, state: WorkerState, limit: int = 0) -> Any:
    """``handler`` wrapped for metrics/health/recycling when any of them is on."""
    if config.metrics_path or config.health_path or limit or state.row > 0:
        return Instrument(handler, state, config, limit)
    return handler


def run(
    handler: AppHandler,
    config: Config,
    *,
    startup: Iterable[Hook] | None = None,
    shutdown_hooks: Iterable[Hook] | None = None,
    loader: Loader | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM (blocking); exits the process with status 1 on a bind error.

    One worker without ``supervise``/``max_requests`` runs in this process; otherwise a
    :class:`~server.supervisor.Supervisor` forks the workers. ``loader`` (a callable returning
    ``(handler, startup, shutdown_hooks)``) lets SIGHUP re-import the application.
    """
    loop_factory(config.loop)  # fail early with a clear message
    if config.workers <= 1 and not config.supervise and not config.max_requests:
        state = WorkerState(MetricsBoard(2) if config.metrics_path else None, 0)
        if state.board is not None:
            state = WorkerState(state.board, state.board.claim(os.getpid()))
            state.set_state(READY)
        code = run_worker(
            instrumented(handler, config, state),
            config,
            startup,
            shutdown_hooks,
            state=state,
            ready=lambda addresses: _log_listening(config, addresses),
            heartbeat=1.0 if state.board is not None else 0.0,
        )
    else:
        from .supervisor import Supervisor

        code = Supervisor(handler, config, startup, shutdown_hooks, loader).run()
    if code:
        raise SystemExit(code)
