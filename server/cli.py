"""Command line: ``python -m server [MODULE:ATTR | DIRECTORY] [options]`` (also ``netpoll-server``).

Theory of operation: :func:`parse_args` turns argv into a :class:`~server.config.Config`. The
hand-written options cover where and how to serve; every other ``Config`` field (limits and
timeouts) gets a generated ``--field-name`` option typed from its dataclass annotation, so a new
limit in ``Config`` appears on the command line without touching this file. Settings not given
on the command line come from ``$NETPOLL_<NAME>`` and a TOML file (``--config``), in that
order (:mod:`server.settings`). ``--workers N|auto`` forks a supervisor (:mod:`server.supervisor`);
for a ``MODULE:ATTR`` target it gets a loader that re-imports the app on SIGHUP.
:func:`load_target` imports the application (the current directory is put on ``sys.path``);
with no target the built-in demo app is served and ``server/demo/static`` mounted at
``/static``, unless ``--static`` mounts are given: then they alone are served (a plain file
server, 404 elsewhere); a directory target is served as static files at ``/``.

:func:`make_handler` is shared by the CLI, :meth:`server.app.App.run` and the test clients: it
picks the interface (``auto``: native for an :class:`~server.app.App`, ASGI for any other
callable), mounts ``Config.static`` in front of the app, wraps the access log, and returns the
handler with its startup/shutdown hooks for ``server.serve.run``.

Every user error (bad module path, missing attribute, bad option value, taken port) is one line
on stderr and exit status 2; an ASGI app whose lifespan startup fails gives one line and 3.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import socket
import sys
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import fields
from typing import TYPE_CHECKING, Any, NoReturn

from server.asgi import LifespanFailure
from server.config import Config
from server.exchange import MemoryAnswer, RequestHead
from server.forwarded import trusted
from server.pool import direct_call
from server.routing import PathMemo
from server.worker import only_makes_a_coroutine

if TYPE_CHECKING:
    from server.staticfiles import StaticFiles

Hook = Callable[[], Awaitable[None]]

# Options written by hand below; every other Config field gets a generated option.
_MANUAL = {
    "host",
    "port",
    "uds",
    "fd",
    "loop",
    "interface",
    "workers",
    "static",
    "autoindex",
    "access_log",
    "log_level",
    "ssl_certfile",
    "ssl_keyfile",
    "metrics_path",
    "health_path",
    "config_file",
    "extra",
}
_CHOICES = {"overload": ("503", "defer")}
# Defaults read from the dataclass fields (a slots dataclass has no class-level defaults).
_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(Config)}


class UsageError(Exception):
    """A user error reported as one line on stderr, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _nonneg_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


def _port(text: str) -> int:
    value = _nonneg_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"port out of range: {text!r}")
    return value


def _positive_int(text: str) -> int:
    value = _nonneg_int(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _workers(text: str) -> int:
    if text.strip().lower() == "auto":
        return os.cpu_count() or 1
    return _positive_int(text)


def _path(text: str) -> str:
    if not text.startswith("/"):
        raise argparse.ArgumentTypeError(f"expected a path starting with '/', got {text!r}")
    return text


def _nonneg_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}")
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {text!r}")
    return value


def _optional(conv: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        return None if text.lower() in ("none", "off") else conv(text)

    parse.__name__ = conv.__name__
    return parse


def _static_mount(text: str) -> tuple[str, str]:
    prefix, sep, directory = text.partition("=")
    if not sep or not prefix.startswith("/") or not directory:
        raise argparse.ArgumentTypeError(
            f"expected PREFIX=DIR with PREFIX starting with '/', got {text!r}"
        )
    if not os.path.isdir(directory):
        raise argparse.ArgumentTypeError(f"not a directory: {directory!r}")
    return prefix, os.path.abspath(directory)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="netpoll-server", description="Serve a netpoll App, an ASGI app or a directory."
    )
    p.add_argument(
        "target", nargs="?", help="MODULE:ATTR of the app, or a directory (default: the demo app)"
    )
    p.add_argument("--host", default=_DEFAULTS["host"])
    p.add_argument("--port", type=_port, default=_DEFAULTS["port"])
    p.add_argument("--uds", help="listen on this Unix domain socket path")
    p.add_argument("--fd", type=_nonneg_int, help="serve on this inherited, listening socket fd")
    p.add_argument("--loop", choices=("netpoll", "uvloop", "asyncio"), default=_DEFAULTS["loop"])
    p.add_argument(
        "--interface", choices=("auto", "native", "asgi"), default=_DEFAULTS["interface"]
    )
    p.add_argument(
        "--workers",
        type=_workers,
        default=_DEFAULTS["workers"],
        help="worker processes, or 'auto' for one per CPU",
    )
    p.add_argument(
        "--config",
        dest="config_file",
        metavar="FILE.toml",
        help="read settings from this TOML file (also $NETPOLL_CONFIG; see server/settings.py)",
    )
    p.add_argument(
        "--metrics",
        "--metrics-path",
        dest="metrics_path",
        type=_optional(_path),
        metavar="PATH",
        help="answer Prometheus metrics (all workers) at PATH",
    )
    p.add_argument(
        "--health",
        "--health-path",
        dest="health_path",
        type=_optional(_path),
        metavar="PATH",
        help="answer 200 'ok' at PATH while serving, 503 while draining",
    )
    p.add_argument(
        "--static",
        type=_static_mount,
        action="append",
        default=[],
        metavar="PREFIX=DIR",
        help="serve DIR at PREFIX (repeatable)",
    )
    p.add_argument("--autoindex", action="store_true", help="list directories without index.html")
    p.add_argument("--cache-control", help="Cache-Control value of static responses")
    p.add_argument("--access-log", action="store_true", help="log one line per request")
    p.add_argument(
        "--log-level",
        choices=("critical", "error", "warning", "info", "debug"),
        default=_DEFAULTS["log_level"],
    )
    p.add_argument("--ssl-certfile")
    p.add_argument("--ssl-keyfile")
    p.add_argument(
        "--lifespan", choices=("auto", "on", "off"), default="auto", help="ASGI lifespan protocol"
    )
    p.add_argument(
        "--root-path",
        default="",
        help="ASGI root_path: the prefix a proxy in front strips (path includes it, as uvicorn)",
    )
    limits = p.add_argument_group("limits and timeouts (see server/config.py)")
    for f in fields(Config):
        if f.name in _MANUAL:
            continue
        kind = str(f.type)
        conv: Callable[[str], Any]
        if kind.startswith("bool"):
            limits.add_argument(
                "--" + f.name.replace("_", "-"),
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=f.default,
            )
            continue
        if kind.startswith("int"):
            conv = _nonneg_int
        elif kind.startswith("float"):
            conv = _nonneg_float
        else:
            conv = str
        if "None" in kind:
            conv = _optional(conv)
        limits.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            type=conv,
            default=f.default,
            choices=_CHOICES.get(f.name),
            metavar=f.name.upper() if f.name not in _CHOICES else None,
            help=f"default: {f.default}",
        )
    return p


def parse_args(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> tuple[str | None, Config]:
    """Parse argv into ``(target, Config)``; raises :class:`UsageError` on bad input.

    Settings missing from argv come from ``environ`` (default ``os.environ``) and the config
    file, see :mod:`server.settings` for the precedence.
    """
    from server.settings import SettingsError, layered

    args = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        base, path = layered(parser, args, os.environ if environ is None else environ)
    except SettingsError as exc:
        raise UsageError(str(exc))
    static_base = base.pop("static", [])
    parser.set_defaults(**base)
    ns = parser.parse_args(args)
    if not ns.static:
        ns.static = static_base
    ns.config_file = path
    values = {
        name: getattr(ns, name)
        for name in Config.names()
        if name not in ("extra",) and hasattr(ns, name)
    }
    values["static"] = tuple(ns.static)
    if (ns.ssl_certfile is None) != (ns.ssl_keyfile is None):
        raise UsageError("--ssl-certfile and --ssl-keyfile go together")
    if ns.fd is not None and ns.uds is not None:
        raise UsageError("--fd and --uds are two different listeners: give one")
    try:
        trusted(ns.forwarded_allow_ips)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    extra = {"lifespan": ns.lifespan, "root_path": ns.root_path}
    if ns.cache_control:
        extra["cache_control"] = ns.cache_control
    config = Config(**values, extra=extra)
    try:
        config.check()
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return ns.target, config


def _check_tls(config: Config) -> None:
    """Fail early, with one line naming the files, when the certificate and key do not load."""
    if config.ssl_certfile is None:
        return
    from server.serve import ssl_context

    try:
        ssl_context(config)
    except (OSError, ValueError) as exc:  # (ssl.SSLError is an OSError)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise UsageError(
            f"cannot use TLS certificate {config.ssl_certfile!r} with key "
            f"{config.ssl_keyfile!r}: {reason}"
        ) from None


def load_target(target: str | None) -> Any:
    """Import ``MODULE:ATTR`` (dotted ATTR allowed); raises :class:`UsageError` on failure."""
    if target is None:
        from server.demo import app

        return app
    if os.path.isdir(target):
        from server.app import App

        app = App()
        app.static("/", target, autoindex=True)
        return app
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"expected MODULE:ATTR or a directory, got {target!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise UsageError(f"cannot import module {module_name!r}: {exc}")
        raise UsageError(f"error while importing {module_name!r}: {type(exc).__name__}: {exc}")
    except Exception as exc:
        raise UsageError(f"error while importing {module_name!r}: {type(exc).__name__}: {exc}")
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UsageError(f"module {module_name!r} has no attribute {attr!r}")
    if not callable(obj):
        raise UsageError(f"{target!r} is not callable (got {type(obj).__name__})")
    return obj


def make_handler(target: Any, config: Config) -> tuple[Any, list[Hook], list[Hook]]:
    """The app handler for ``target`` plus its startup and shutdown hooks."""
    from server.app import App
    from server.asgi import ASGIHandler

    interface = config.interface
    if interface == "auto":
        interface = "native" if isinstance(target, App) else "asgi"
    startup: list[Hook] = []
    shutdown: list[Hook] = []
    handler: Any
    if target is None:  # a plain file server: the static mounts and nothing else
        handler = None
    elif interface == "asgi":
        handler = ASGIHandler(target, config)
    elif interface == "native":
        handler = target
    else:
        raise UsageError(f"unknown interface {interface!r}")
    if hasattr(handler, "startup") and hasattr(handler, "shutdown"):
        startup.append(handler.startup)
        shutdown.append(handler.shutdown)
    if config.static or handler is None:
        mounts = StaticMounts(handler, config)
        shutdown.append(mounts.shutdown)
        handler = mounts
    if config.access_log:
        from server.accesslog import AccessLogHandler

        handler = AccessLogHandler(handler)
    return handler, startup, shutdown


class StaticMounts:
    """Serve ``Config.static`` mounts in front of an app handler (longest prefix first).

    Each mount is a :class:`~server.staticfiles.StaticFiles` called directly (no routing), with
    its own open-file cache; :meth:`shutdown` closes them. ``inner=None`` is a plain file
    server: paths outside every mount are 404. ``Config.extra["cache_control"]`` sets
    ``Cache-Control`` on every static response.
    """

    def __init__(self, inner: Any, config: Config) -> None:
        from server.staticfiles import StaticFiles

        self.inner = inner
        self._inner = None if inner is None else direct_call(inner)  # (as the pool calls it)
        cache_control = config.extra.get("cache_control")
        # (prefix without trailing /, the same with it, files), longest prefix first
        self.mounts: list[tuple[str, str, StaticFiles]] = []
        for prefix, directory in config.static:
            clean = "/" + prefix.strip("/")
            files = StaticFiles(
                directory,
                prefix=clean,
                autoindex=config.autoindex,
                cache_control=str(cache_control) if cache_control else None,
            )
            prefix = "" if clean == "/" else clean
            self.mounts.append((prefix, prefix + "/", files))
        self.mounts.sort(key=lambda m: len(m[0]), reverse=True)
        self.prefixes = [p for p, _, _ in self.mounts]
        self.memory_paths = tuple(below for _, below, _ in self.mounts)  # (MemoryAnswering)
        # path -> (mount, the rest of the path, below the mount's "prefix/"), or False: the
        # inner app's; remembered per path
        self._where = PathMemo(self._locate)
        # It runs no code of the app's before handing back a coroutine when the inner handler
        # does not either: the connection may call it outside the request's context (see
        # server.worker.only_makes_a_coroutine).
        self.only_makes_a_coroutine = inner is None or only_makes_a_coroutine(self._inner)
        self.cancel_on_reset = getattr(inner, "cancel_on_reset", True)  # (ConnectionPool)

    def _locate(self, path: str) -> tuple[StaticFiles, str, bool] | bool:
        for prefix, below, files in self.mounts:  # longest first
            if path.startswith(below):
                return (files, path[len(below) :], True)
            if path == prefix:
                return (files, "", False)
        return False

    def __call__(self, exchange: Any) -> Coroutine[Any, Any, None]:
        # Not a coroutine function: it hands back the coroutine that serves the request (a
        # mount's or the inner app's), one coroutine per request instead of two.
        path = exchange.head.path
        where = self._where.memo.get(path)
        if where is None:
            where = self._where.find(path)
        if where:
            return where[0].serve(exchange, where[1])  # type: ignore[no-any-return]
        if self.inner is None:
            return self._not_found(exchange)
        return self._inner(exchange)  # type: ignore[no-any-return,misc]

    def answer_from_memory(self, head: RequestHead) -> MemoryAnswer | None:
        """A mount's answer from memory (:meth:`StaticFiles.memory_answer`); None for the rest."""
        path = head.path
        where = self._where.memo.get(path)
        if where is None:
            where = self._where.find(path)
        if not where or not where[2]:
            return None
        return where[0].memory_answer(head, where[1])  # type: ignore[no-any-return]

    @staticmethod
    async def _not_found(exchange: Any) -> None:
        exchange.respond(404, [(b"content-type", b"text/plain; charset=utf-8")], b"Not Found")

    async def shutdown(self) -> None:
        for _, _, files in self.mounts:
            files.close()

    def __repr__(self) -> str:
        return f"<StaticMounts {self.prefixes} -> {self.inner!r}>"


LOG_FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str) -> None:
    """The one logging setup of the command line: time, pid, level, logger name, message."""
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT)


def purge_modules(module_name: str) -> list[str]:
    """Forget ``module_name``'s top-level package (or, for a plain module, it and the modules
    beside it in its directory) so the next import reads the files again. Installed packages,
    the standard library and ``server``/``netpoll`` are never purged. Returns the names."""
    import sysconfig

    top = module_name.split(".")[0]
    mod = sys.modules.get(top)
    beside: str | None = None
    file = getattr(mod, "__file__", None)
    if file and not hasattr(mod, "__path__"):
        beside = os.path.dirname(os.path.abspath(file))
        installed = {os.path.abspath(p) for p in sysconfig.get_paths().values()}
        if beside in installed:
            beside = None
    gone = []
    for name, m in list(sys.modules.items()):
        root = name.split(".")[0]
        if root in ("server", "netpoll"):
            continue
        drop = root == top
        if not drop and beside is not None:
            f = getattr(m, "__file__", None)
            drop = bool(f) and os.path.dirname(os.path.abspath(f)) == beside
        if drop:
            del sys.modules[name]
            gone.append(name)
    importlib.invalidate_caches()
    return gone


def _reloader(target: str, config: Config) -> Callable[[], tuple[Any, list[Hook], list[Hook]]]:
    """What the supervisor calls on SIGHUP: re-import ``target`` and build a fresh handler."""

    def load() -> tuple[Any, list[Hook], list[Hook]]:
        purge_modules(target.partition(":")[0])
        app = load_target(target)
        return make_handler(app, config)

    return load


def _check_port(config: Config) -> None:
    """Fail early, with one line, when host:port cannot be bound."""
    if config.uds is not None or config.fd is not None or config.port == 0:
        return
    try:
        infos = socket.getaddrinfo(
            config.host, config.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise UsageError(f"cannot resolve host {config.host!r}: {exc}")
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as exc:
            raise UsageError(f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}")


def _where(config: Config) -> str:
    if config.fd is not None:
        return f"inherited fd {config.fd}"
    if config.uds is not None:
        return f"unix:{config.uds}"
    scheme = "https" if config.ssl_certfile else "http"
    host = f"[{config.host}]" if ":" in config.host else config.host
    return f"{scheme}://{host}:{config.port}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m server`` and ``netpoll-server``; returns the exit status."""
    try:
        target, config = parse_args(argv)
        configure_logging(config.log_level)
        if target is None and config.static:
            app = None  # no app, only --static mounts: a plain file server
        else:
            app = load_target(target)
        if target is None and app is not None:
            from server.demo import STATIC_DIR

            if not any(p == "/static" for p, _ in config.static):
                config = config.with_(static=(*config.static, ("/static", STATIC_DIR)))
        handler, startup, shutdown = make_handler(app, config)
        loader = None
        if target is not None and not os.path.isdir(target):
            loader = _reloader(target, config)
        _check_port(config)
        _check_tls(config)
        from server import serve

        try:
            serve.loop_factory(config.loop)
        except (RuntimeError, ValueError) as exc:
            raise UsageError(str(exc))
        logging.getLogger("server.cli").info(
            "serving %s on %s (loop=%s, workers=%d, interface=%s)",
            target or ("static files" if app is None else "the demo app"),
            _where(config),
            config.loop,
            config.workers,
            config.interface,
        )
        serve.run(handler, config, startup=startup, shutdown_hooks=shutdown, loader=loader)
    except UsageError as exc:
        print(f"netpoll-server: error: {exc}", file=sys.stderr)
        return 2
    except LifespanFailure as exc:
        print(f"netpoll-server: error: {exc}", file=sys.stderr)
        return 3
    except OSError as exc:
        if exc.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
            print(f"netpoll-server: error: cannot listen: {exc}", file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        return 0
    return 0
