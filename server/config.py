"""One place for every limit and timeout of the HTTP server.

The CLI, ``App.run`` and the tests all build a :class:`Config`; nothing else in ``server``
holds a default of its own. Defaults follow the limits table in the design brief.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

KiB = 1024
MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Config:
    """Server settings. Frozen: derive variants with :meth:`with_`."""

    host: str = "127.0.0.1"
    port: int = 8000
    #: Path of a Unix domain socket to listen on instead of host/port.
    uds: str | None = None
    #: An inherited, already listening socket fd (systemd-style activation).
    fd: int | None = None
    #: "netpoll" (default), "uvloop" or "asyncio".
    loop: str = "netpoll"
    #: "auto" (native for an App, ASGI for any other callable), "native" or "asgi".
    interface: str = "auto"
    workers: int = 1
    backlog: int = 2048
    #: ("/prefix", "/directory") pairs served as static files.
    static: tuple[tuple[str, str], ...] = ()
    autoindex: bool = False
    access_log: bool = False
    log_level: str = "info"
    server_header: str = "netpoll"
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    # --- limits (answer in the comment) ---
    max_request_line: int = 8 * KiB  # 414
    max_header_size: int = 16 * KiB  # 431 (the whole header block)
    max_header_count: int = 100  # 431
    max_body_size: int = 1 * MiB  # 413
    max_chunk_ext: int = 4 * KiB  # 400: huge chunk extensions
    max_requests_per_connection: int = 1000  # Connection: close on the last one
    max_pipelined: int = 16  # requests waiting before reading pauses
    max_drain_body: int = 256 * KiB  # unread body drained before reuse, else close
    max_connections: int = 10000  # pool size
    #: What to do beyond max_connections: "503" (answer and close) or "defer" (stop accepting).
    overload: str = "503"

    # --- timeouts, seconds ---
    header_timeout: float = 10.0  # whole head must arrive by then: 408, close
    keepalive_timeout: float = 5.0  # idle between requests: close silently
    body_timeout: float = 30.0  # no body bytes for this long: 408, close
    send_timeout: float = 30.0  # client not reading for this long: close
    request_timeout: float | None = None  # handler deadline (503), off by default
    graceful_timeout: float = 30.0  # shutdown: then force-close

    # --- workers and operations (server/supervisor.py, server/metrics.py) ---
    #: Fork a supervisor even with one worker (respawn, SIGHUP reload); workers > 1 implies it.
    supervise: bool = False
    worker_timeout: float = 30.0  # a worker silent (no heartbeat) this long is killed, replaced
    max_requests: int = 0  # a worker is recycled after this many requests; 0 = never
    max_requests_jitter: int = 0  # plus random(0..jitter), so workers do not recycle together
    #: Path answering Prometheus text metrics (aggregated over all workers); None = off.
    metrics_path: str | None = None
    #: Path answering 200 "ok" while serving, 503 while draining; None = off.
    health_path: str | None = None
    #: The TOML file the settings were read from (server/settings.py), for the record.
    config_file: str | None = None

    # --- behind a proxy (server/forwarded.py) ---
    #: Take the client's address and scheme from X-Forwarded-For / X-Forwarded-Proto when the
    #: peer is one of forwarded_allow_ips (as uvicorn's --proxy-headers, on by default).
    proxy_headers: bool = True
    #: Trusted proxies: comma-separated addresses or networks, "*" for any.
    forwarded_allow_ips: str = "127.0.0.1"

    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def check(self) -> None:
        """Raise ValueError naming the first setting whose value cannot work (the CLI shows it
        as a usage error; :func:`server.serve.serve` checks before it listens)."""
        for name in _AT_LEAST_ONE:
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        for name in _POSITIVE:
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be more than 0 seconds, got {value}")
        for name in _NON_NEGATIVE:
            value = getattr(self, name)
            if value < 0:
                raise ValueError(f"{name} must not be negative, got {value}")
        if any(c in self.server_header for c in "\r\n\x00"):
            raise ValueError("server_header must not contain CR, LF or NUL")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("ssl_certfile and ssl_keyfile go together")
        if self.metrics_path is not None and self.metrics_path == self.health_path:
            raise ValueError(f"metrics_path and health_path are both {self.metrics_path!r}")

    def with_(self, **changes: Any) -> Config:
        """Return a copy with ``changes`` applied (unknown names raise TypeError)."""
        return replace(self, **changes)

    @classmethod
    def names(cls) -> list[str]:
        """Every setting's name, in declaration order."""
        return [f.name for f in fields(cls)]


# what Config.check() asks of each limit (a 0 here would refuse or stall every request)
_AT_LEAST_ONE = (
    "workers max_request_line max_header_size max_header_count max_requests_per_connection "
    "max_pipelined max_connections"
).split()
_POSITIVE = "header_timeout keepalive_timeout body_timeout send_timeout request_timeout".split()
_NON_NEGATIVE = (  # (worker_timeout 0: no heartbeat check)
    "backlog max_body_size max_chunk_ext max_drain_body graceful_timeout worker_timeout "
    "max_requests max_requests_jitter"
).split()
