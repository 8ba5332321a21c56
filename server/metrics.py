"""Metrics, health and per-worker bookkeeping shared across processes.

Theory of operation
-------------------
A :class:`MetricsBoard` is one anonymous shared ``mmap`` created by the supervisor *before* it
forks, so every worker (of every generation) sees the same memory. It is cut into fixed-size
rows of unsigned 64-bit words; a worker owns one row (given to it at fork) and is its only
writer, so no locks are needed: readers sum rows word by word and may see a request counted
in one word and not yet in the next, which a scrape tolerates. Row 0 belongs to the
supervisor: when a worker is reaped its counters are folded into row 0 and its row is zeroed
for reuse, so the totals never go backwards when workers die, recycle or reload.

A row holds the worker's pid, state and heartbeat (``time.monotonic_ns``, system-wide, so the
supervisor can compare it with its own clock), request counters by status code, a latency
histogram, connection and pool gauges, and up to :data:`LOOP_SLOTS` integer counters of
``loop.stats()`` (netpoll only; stored under the sorted stat names, which every worker of a
run shares because they run the same loop).

:class:`Instrument` wraps an app handler the way :class:`~server.accesslog.AccessLogHandler`
does (the connection layer is not touched): it answers the metrics and health paths itself,
records status and duration of every other request, counts requests for ``max_requests``
recycling, and while the worker drains adds ``Connection: close`` to every response so
keep-alive clients leave after a complete answer instead of racing an idle close.

:func:`render` writes the Prometheus text exposition format 0.0.4.
"""

from __future__ import annotations

import asyncio
import bisect
import mmap
import time
from collections.abc import Callable
from typing import Any

from server.exchange import Exchange, ResponseHeaders

__all__ = ["BUCKETS", "Instrument", "MetricsBoard", "WorkerState", "render"]

#: Upper bounds (seconds) of the latency histogram; +Inf is implied.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LOOP_SLOTS = 32

# Row layout (word offsets).
W_PID = 0
W_STATE = 1  # FREE / BOOTING / READY / DRAINING
W_BEAT = 2  # last heartbeat, monotonic ns
W_REQUESTS = 3  # counter
W_CONN_OPEN = 4  # gauge
W_POOL_ACTIVE = 5  # gauge
W_POOL_FREE = 6  # gauge
W_POOL_REFUSED = 7  # counter
W_DUR_SUM = 8  # counter, microseconds
W_DUR_COUNT = 9  # counter
W_RESTARTS = 10  # counter, row 0 only (written by the supervisor)
W_BUCKETS = 16  # len(BUCKETS) + 1 words (the last is +Inf), not cumulative
W_LOOP = 32  # LOOP_SLOTS words
W_STATUS = 64  # 600 words, indexed by status code
ROW_WORDS = W_STATUS + 600
ROW_BYTES = ROW_WORDS * 8

FREE, BOOTING, READY, DRAINING = 0, 1, 2, 3
_GAUGES = (W_PID, W_STATE, W_BEAT, W_CONN_OPEN, W_POOL_ACTIVE, W_POOL_FREE)


class MetricsBoard:
    """Shared rows of counters, one per live worker, row 0 for retired totals."""

    def __init__(self, rows: int = 128) -> None:
        self.rows = rows  # row 0 included
        self._mm = mmap.mmap(-1, rows * ROW_BYTES)  # MAP_SHARED | MAP_ANONYMOUS on Unix
        self.words = memoryview(self._mm).cast("Q")

    def __repr__(self) -> str:
        live = [r for r in range(1, self.rows) if self.words[r * ROW_WORDS + W_STATE] != FREE]
        return f"<MetricsBoard rows={self.rows} live={live}>"

    # --- supervisor side ---
    def claim(self, pid: int = 0) -> int:
        """A free row for a new worker (state BOOTING, heartbeat now); -1 when full."""
        w = self.words
        for row in range(1, self.rows):
            base = row * ROW_WORDS
            if w[base + W_STATE] == FREE:
                w[base + W_PID] = pid
                w[base + W_BEAT] = time.monotonic_ns()
                w[base + W_STATE] = BOOTING
                return row
        return -1

    def set_pid(self, row: int, pid: int) -> None:
        if row > 0:
            self.words[row * ROW_WORDS + W_PID] = pid

    def retire(self, row: int) -> None:
        """Fold a dead worker's counters into row 0 and free its row."""
        if row <= 0:
            return
        w = self.words
        base = row * ROW_WORDS
        for i in range(ROW_WORDS):
            if i in _GAUGES:
                continue
            v = w[base + i]
            if v:
                w[i] = (w[i] + v) & 0xFFFFFFFFFFFFFFFF
        w[base : base + ROW_WORDS] = memoryview(bytes(ROW_BYTES)).cast("Q")

    def count_restart(self) -> None:
        self.words[W_RESTARTS] += 1

    def heartbeat(self, row: int) -> int:
        """The last heartbeat of ``row`` (monotonic ns)."""
        return int(self.words[row * ROW_WORDS + W_BEAT]) if row > 0 else 0

    def state(self, row: int) -> int:
        return int(self.words[row * ROW_WORDS + W_STATE]) if row > 0 else FREE

    # --- reading ---
    def total(self, offset: int, live_only: bool = False) -> int:
        """Sum of one word over the rows (gauges: live rows only)."""
        w = self.words
        start = 1 if live_only else 0
        return sum(int(w[r * ROW_WORDS + offset]) for r in range(start, self.rows))

    def live_workers(self) -> int:
        w = self.words
        return sum(1 for r in range(1, self.rows) if w[r * ROW_WORDS + W_STATE] in (READY,))


class WorkerState:
    """What one worker process knows about itself: its row, its pool, whether it drains."""

    def __init__(self, board: MetricsBoard | None, row: int) -> None:
        self.board = board
        self.row = row  # this worker's row in ``board`` (0 when there is no board)
        self.base = row * ROW_WORDS
        self.pool: Any = None  # the ConnectionPool, set by serve() once listening
        self.loop: asyncio.AbstractEventLoop | None = None
        self.draining = False  # set when the worker stops accepting
        self.on_retire: Callable[[], None] | None = None  # max_requests reached
        self.loop_names: list[str] = []  # integer loop.stats() keys, sorted

    def __repr__(self) -> str:
        return f"<WorkerState row={self.row} draining={self.draining} pool={self.pool!r}>"

    def attach(self, pool: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.loop = loop
        if self.board is not None:
            pool.on_refused = self.count_status
        stats = getattr(loop, "stats", None)
        if callable(stats):
            values = stats()
            names = [k for k, v in values.items() if isinstance(v, int) and not isinstance(v, bool)]
            self.loop_names = sorted(names)[:LOOP_SLOTS]

    def count_status(self, status: int) -> None:
        """One request answered with ``status`` (Instrument adds its duration; a request the
        connection refuses itself, a 400 to 505 from the parser, has none)."""
        w = self.board.words  # type: ignore[union-attr]
        w[self.base + W_REQUESTS] += 1
        if 0 <= status < 600:
            w[self.base + W_STATUS + status] += 1

    def set_state(self, state: int) -> None:
        if self.board is not None and self.row > 0:
            self.board.words[self.base + W_STATE] = state

    def beat(self) -> None:
        """Heartbeat plus gauges and loop counters, called about once a second."""
        board = self.board
        if board is None:
            return
        w = board.words
        base = self.base
        w[base + W_BEAT] = time.monotonic_ns()
        pool = self.pool
        if pool is not None:
            w[base + W_CONN_OPEN] = len(pool.active) + pool.held
            w[base + W_POOL_ACTIVE] = len(pool.active)
            w[base + W_POOL_FREE] = pool.free
            w[base + W_POOL_REFUSED] = pool.refused
        if self.loop_names and self.loop is not None:
            stats = self.loop.stats()  # type: ignore[attr-defined]
            for i, name in enumerate(self.loop_names):
                w[base + W_LOOP + i] = int(stats.get(name, 0))


class _Observed:
    """An Exchange proxy noting the status; adds ``Connection: close`` while draining."""

    __slots__ = ("_close", "done", "exchange", "head", "status")

    def __init__(self, exchange: Exchange, close: bool) -> None:
        self.exchange = exchange
        self.head = exchange.head
        self.status = 0  # status passed to respond/start, 0 = none yet
        self._close = close  # add Connection: close
        # when the response was complete (0.0: not yet): a request's duration ends there, not
        # when a handler that works on after it (background tasks) returns
        self.done = 0.0

    def respond(self, status: int, headers: ResponseHeaders, body: bytes) -> None:
        if self._close:
            headers = [*headers, (b"connection", b"close")]
        self.exchange.respond(status, headers, body)
        self.status = status
        self.done = time.perf_counter()

    async def end(self) -> None:
        await self.exchange.end()
        self.done = time.perf_counter()

    def start(
        self, status: int, headers: ResponseHeaders, content_length: int | None = None
    ) -> None:
        if self._close:
            headers = [*headers, (b"connection", b"close")]
        self.exchange.start(status, headers, content_length)
        self.status = status

    def __getattr__(self, name: str) -> Any:  # receive, write, sendfile, end, splice, ...
        return getattr(self.exchange, name)

    def __repr__(self) -> str:
        return f"<_Observed status={self.status} close={self._close} of {self.exchange!r}>"


_TEXT = [(b"content-type", b"text/plain; charset=utf-8")]
_PROM = [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")]


class Instrument:
    """Wrap an app handler: metrics and health paths, request counting, drain behaviour."""

    def __init__(self, handler: Any, state: WorkerState, config: Any, limit: int = 0) -> None:
        self.handler = handler
        self.state = state
        self.metrics_path: str | None = config.metrics_path
        self.health_path: str | None = config.health_path
        self.record = state.board is not None and self.metrics_path is not None
        self.limit = limit  # requests before asking to be recycled; 0 = never
        self.requests = 0  # requests handled by this worker
        self.startup = getattr(handler, "startup", None)
        self.shutdown = getattr(handler, "shutdown", None)
        self.cancel_on_reset = getattr(handler, "cancel_on_reset", True)  # (ConnectionPool)

    def __repr__(self) -> str:
        return f"<Instrument requests={self.requests} limit={self.limit} {self.handler!r}>"

    async def __call__(self, exchange: Exchange) -> None:
        state = self.state
        path = exchange.head.path
        if path == self.health_path:
            if state.draining:
                exchange.respond(503, [*_TEXT, (b"connection", b"close")], b"draining\n")
            else:
                exchange.respond(200, _TEXT, b"ok\n")
            return
        if path == self.metrics_path and state.board is not None:
            state.beat()
            body = render(state.board, state.loop_names).encode()
            exchange.respond(200, _PROM, body)
            return
        self.requests += 1
        if self.limit and self.requests == self.limit and state.on_retire is not None:
            state.on_retire()
        if not self.record:
            if state.draining:
                await self.handler(_Observed(exchange, True))
            else:
                await self.handler(exchange)
            return
        obs = _Observed(exchange, state.draining)
        t0 = time.perf_counter()
        try:
            await self.handler(obs)
        finally:
            status = obs.status
            if not status:
                status = 500 if not exchange.disconnected else 499
            self._count(status, (obs.done or time.perf_counter()) - t0)

    def _count(self, status: int, duration: float) -> None:
        self.state.count_status(status)
        w = self.state.board.words  # type: ignore[union-attr]
        base = self.state.base
        w[base + W_BUCKETS + bisect.bisect_left(BUCKETS, duration)] += 1
        w[base + W_DUR_SUM] += int(duration * 1e6)
        w[base + W_DUR_COUNT] += 1


def _help(out: list[str], name: str, kind: str, text: str) -> None:
    out.append(f"# HELP {name} {text}")
    out.append(f"# TYPE {name} {kind}")


def render(board: MetricsBoard, loop_names: list[str]) -> str:
    """The Prometheus text exposition (format 0.0.4) of the board, summed over workers."""
    w = board.words
    rows = range(board.rows)
    out: list[str] = []
    _help(out, "http_requests_total", "counter", "Requests answered, by status code.")
    for code in range(600):
        n = sum(int(w[r * ROW_WORDS + W_STATUS + code]) for r in rows)
        if n:
            out.append(f'http_requests_total{{status="{code}"}} {n}')
    _help(out, "http_request_duration_seconds", "histogram", "Handler time per request.")
    cumulative = 0
    for i, bound in enumerate((*BUCKETS, float("inf"))):
        cumulative += board.total(W_BUCKETS + i)
        le = "+Inf" if bound == float("inf") else repr(bound)
        out.append(f'http_request_duration_seconds_bucket{{le="{le}"}} {cumulative}')
    out.append(f"http_request_duration_seconds_sum {board.total(W_DUR_SUM) / 1e6}")
    out.append(f"http_request_duration_seconds_count {board.total(W_DUR_COUNT)}")
    _help(out, "http_connections_open", "gauge", "Open client connections.")
    out.append(f"http_connections_open {board.total(W_CONN_OPEN, live_only=True)}")
    _help(out, "netpoll_pool_connections", "gauge", "Connection objects in the pools, by state.")
    out.append(f'netpoll_pool_connections{{state="in_use"}} {board.total(W_POOL_ACTIVE, True)}')
    out.append(f'netpoll_pool_connections{{state="free"}} {board.total(W_POOL_FREE, True)}')
    _help(out, "netpoll_pool_refused_total", "counter", "Connections refused past the limit.")
    out.append(f"netpoll_pool_refused_total {board.total(W_POOL_REFUSED)}")
    _help(out, "netpoll_workers", "gauge", "Worker processes serving.")
    out.append(f"netpoll_workers {board.live_workers()}")
    _help(out, "netpoll_worker_restarts_total", "counter", "Workers respawned after dying.")
    out.append(f"netpoll_worker_restarts_total {int(w[W_RESTARTS])}")
    for i, name in enumerate(loop_names):
        metric = f"netpoll_loop_{name}_total"
        _help(out, metric, "counter", f"netpoll loop.stats()['{name}'], all workers.")
        out.append(f"{metric} {board.total(W_LOOP + i)}")
    out.append("")
    return "\n".join(out)


def pid_row(board: MetricsBoard) -> dict[int, int]:
    """pid -> row of the live workers (for tests and debugging)."""
    w = board.words
    return {
        int(w[r * ROW_WORDS + W_PID]): r
        for r in range(1, board.rows)
        if w[r * ROW_WORDS + W_STATE] != FREE
    }
