"""The prefork supervisor: forks workers, respawns, reloads, recycles, and never serves.

Theory of operation
-------------------
:class:`Supervisor` runs in the parent process. It binds the listening sockets itself, then
forks one worker per *slot* and keeps a table of :class:`Worker` records keyed by pid. Its one
loop waits in ``selectors`` on two pipes: the ``signal.set_wakeup_fd`` pipe (signal handlers
only queue the signal number; the loop handles them) and a message pipe the workers write
fixed-size records to (``READY`` once listening, ``RETIRE`` when ``max_requests`` is reached).
Each turn it reaps children with ``waitpid(WNOHANG)``, checks heartbeats, and *reconciles*:

* every slot below ``want`` needs a *lead*: a worker of the current generation that is neither
  retiring nor draining. Without one, a worker is forked (at once, or after the slot's
  back-off when the last one died young);
* once a slot's lead is ready, every other worker of that slot (an older generation, a retiring
  worker) gets SIGTERM and drains;
* workers of slots at or above ``want`` (after SIGTTOU) get SIGTERM.

That one rule gives respawn, SIGHUP reload (bump the generation: each slot gets a new lead, the
old one drains once the new one listens), ``max_requests`` recycling (the retiring worker keeps
serving until its replacement listens) and SIGTTIN/SIGTTOU.

Listeners. On Linux each TCP slot has its own ``SO_REUSEPORT`` socket, so the kernel spreads
connections over the slots; the supervisor binds it and *keeps its own copy open*. A worker
serves its slot's socket; a replacement (respawn, reload, recycle) inherits the very same
socket, so connections waiting in the accept queue are never reset when an old worker closes
its copy (closing the last copy of a reuseport socket resets its queue, see
``tcp_migrate_req``). A Unix socket, an inherited ``--fd`` and TCP elsewhere are one listener
shared by every slot. On SIGTERM the supervisor closes its copies at once, so new connections
are refused as soon as the workers have closed theirs.

Faults. A worker that dies without being asked is respawned: at once if it lived at least
:data:`MIN_UPTIME`, else after a back-off doubling from 0.1 s to :data:`MAX_BACKOFF`.
:data:`CRASH_LIMIT` such young deaths within :data:`CRASH_WINDOW` is a crash loop: everything
stops and the process exits 1 with one line on stderr. A worker that fails before listening
with status :data:`BOOT_ERROR` (startup hook or ASGI lifespan failure) stops everything with
status 3 - or, during a reload, abandons the reload and keeps the old generation. A worker
whose heartbeat (a word in the shared :class:`~server.metrics.MetricsBoard`, written every
second from a loop task) is older than ``worker_timeout`` gets SIGKILL and is respawned.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import selectors
import signal
import socket
import stat
import struct
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .config import Config
from .metrics import DRAINING, READY, ROW_WORDS, W_STATE, MetricsBoard, WorkerState
from .serve import _backlog, instrumented, run_worker

__all__ = ["BOOT_ERROR", "Listeners", "Supervisor", "Worker"]

log = logging.getLogger("server.supervisor")

BOOT_ERROR = 3  # a worker's exit status when it could not start serving
MIN_UPTIME = 3.0  # seconds: a worker dying younger counts toward the crash loop
CRASH_LIMIT = 5  # young deaths ...
CRASH_WINDOW = 30.0  # ... within this many seconds: stop
MAX_BACKOFF = 5.0  # seconds between respawns of a slot whose workers keep dying young
_MSG = struct.Struct("=iB")  # pid, kind: small enough for an atomic pipe write
MSG_READY, MSG_RETIRE = 1, 2
_SIGNALS = (
    signal.SIGCHLD,
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGUSR1,
)

Hooks = list[Callable[[], Any]]
AppSpec = tuple[Any, Hooks, Hooks]  # handler, startup hooks, shutdown hooks


@dataclass(eq=False)
class Worker:
    """One forked worker process as the supervisor sees it."""

    pid: int
    slot: int  # which listener it serves (several workers share a slot during a handover)
    row: int  # its row in the MetricsBoard
    generation: int  # bumped by every SIGHUP
    started: float  # time.monotonic() at fork
    ready: bool = False  # said READY: it is accepting
    retiring: bool = False  # said RETIRE (max_requests): replace it, then drain it
    draining: bool = False  # we sent SIGTERM
    term_at: float = 0.0  # when SIGTERM was sent
    killed: bool = False  # we sent SIGKILL

    def __repr__(self) -> str:
        flags = [f for f in ("ready", "retiring", "draining", "killed") if getattr(self, f)]
        return (
            f"<Worker pid={self.pid} slot={self.slot} gen={self.generation} "
            f"row={self.row} {'|'.join(flags) or 'booting'}>"
        )


class Listeners:
    """The listening sockets: one ``SO_REUSEPORT`` socket per slot (Linux TCP) or one shared."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.per_slot = (
            sys.platform.startswith("linux") and config.uds is None and config.fd is None
        )
        self.shared: socket.socket | None = None  # the one listener when not per_slot
        self.slots: dict[int, socket.socket] = {}  # slot -> its reuseport socket
        self.port = config.port  # the bound TCP port (known after open)
        self.created_uds = False  # we bound config.uds: unlink it at the end

    def __repr__(self) -> str:
        kind = "per-slot reuseport" if self.per_slot else "shared"
        return f"<Listeners {kind} {self.address()} slots={sorted(self.slots)}>"

    def address(self) -> str:
        c = self.config
        if c.fd is not None:
            return f"fd {c.fd}"
        if c.uds:
            return f"unix:{c.uds}"
        host = f"[{c.host}]" if ":" in c.host else c.host
        scheme = "https" if c.ssl_certfile else "http"
        return f"{scheme}://{host}:{self.port}"

    def _tcp(self, reuse_port: bool) -> socket.socket:
        c = self.config
        family, kind, proto, _, addr = socket.getaddrinfo(
            c.host, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(addr)
            sock.listen(_backlog(c))
        except BaseException:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        return sock

    def open(self) -> None:
        """Bind what the config asks for; raises OSError (caller reports it)."""
        c = self.config
        if c.fd is not None:
            self.shared = socket.socket(fileno=c.fd)
        elif c.uds:
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISSOCK(os.stat(c.uds).st_mode):
                    os.unlink(c.uds)  # a stale socket file from a previous run
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.bind(c.uds)
                sock.listen(_backlog(c))
            except BaseException:
                sock.close()
                raise
            self.shared = sock
            self.created_uds = True
        elif self.per_slot:
            self.slots[0] = self._tcp(reuse_port=True)
        else:
            self.shared = self._tcp(reuse_port=False)

    def get(self, slot: int) -> socket.socket:
        if not self.per_slot:
            assert self.shared is not None
            return self.shared
        sock = self.slots.get(slot)
        if sock is None:
            sock = self.slots[slot] = self._tcp(reuse_port=True)
        return sock

    def drop(self, slot: int) -> None:
        """Close a slot's socket (after SIGTTOU); its queued connections go with it."""
        sock = self.slots.pop(slot, None)
        if sock is not None:
            sock.close()

    def close_except(self, keep: socket.socket) -> None:
        """In a worker: close every listener but its own."""
        for sock in self.slots.values():
            if sock is not keep:
                sock.close()
        if self.shared is not None and self.shared is not keep:
            self.shared.close()

    def close_all(self) -> None:
        for sock in self.slots.values():
            sock.close()
        if self.shared is not None:
            self.shared.close()

    def cleanup(self) -> None:
        self.close_all()
        if self.created_uds and self.config.uds:
            with contextlib.suppress(OSError):
                os.unlink(self.config.uds)


def describe(code: int) -> str:
    """``waitstatus_to_exitcode`` result as words."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


class Supervisor:
    """See the module docstring. ``run()`` returns the process exit status."""

    def __init__(
        self,
        handler: Any,
        config: Config,
        startup: Any = None,
        shutdown_hooks: Any = None,
        loader: Callable[[], AppSpec] | None = None,
    ) -> None:
        self.config = config
        self.app: AppSpec = (handler, list(startup or ()), list(shutdown_hooks or ()))
        self.loader = loader  # re-imports the app on SIGHUP; None: restart with the same one
        self.want = max(1, config.workers)  # slots to fill
        self.workers: dict[int, Worker] = {}  # pid -> record, live children only
        self.generation = 1  # the generation new workers are forked with
        self._gen_seq = 1
        self.previous: tuple[AppSpec, int] | None = None  # during a reload: what to go back to
        self.due: dict[int, float] = {}  # slot -> earliest time to fork its next worker
        self.backoff: dict[int, float] = {}  # slot -> delay after the next young death
        self.crashes: deque[float] = deque()  # times of young deaths (crash-loop window)
        self.stopping = False
        self.stop_deadline = 0.0
        self.exit_code = 0
        self.board = MetricsBoard(rows=max(64, 4 * self.want + 16))
        self.listeners = Listeners(config)
        self.signals: deque[int] = deque()  # queued by the signal handlers
        self._buf = b""  # partial message bytes
        self._msg_r = self._msg_w = self._wake_r = self._wake_w = -1
        self._sel: selectors.BaseSelector | None = None

    def __repr__(self) -> str:
        return (
            f"<Supervisor want={self.want} gen={self.generation} stopping={self.stopping} "
            f"workers={list(self.workers.values())!r}>"
        )

    # --- running ---
    def run(self) -> int:
        try:
            self.listeners.open()
        except OSError as exc:
            print(
                f"netpoll-server: error: cannot listen on {self.listeners.address()}: "
                f"{exc.strerror or exc}",
                file=sys.stderr,
            )
            return 1
        log.info(
            "supervisor %d listening on %s (%s listener), %d workers",
            os.getpid(),
            self.listeners.address(),
            "per-worker SO_REUSEPORT" if self.listeners.per_slot else "shared",
            self.want,
        )
        self._msg_r, self._msg_w = os.pipe()
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._msg_r, self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._wake_r, selectors.EVENT_READ)
        self._sel.register(self._msg_r, selectors.EVENT_READ)
        old_wakeup = signal.set_wakeup_fd(self._wake_w)
        old = {sig: signal.signal(sig, self._on_signal) for sig in _SIGNALS}
        try:
            self._loop()
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
            signal.set_wakeup_fd(old_wakeup)
            for pid in list(self.workers):  # only after an unexpected error in the loop
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
            self._sel.close()
            for fd in (self._msg_r, self._msg_w, self._wake_r, self._wake_w):
                os.close(fd)
            self.listeners.cleanup()
        log.info("supervisor %d exiting with status %d", os.getpid(), self.exit_code)
        return self.exit_code

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.signals.append(signum)

    def _loop(self) -> None:
        assert self._sel is not None
        while True:
            busy = self.stopping or bool(self.due)
            for key, _ in self._sel.select(timeout=0.1 if busy else 0.25):
                if key.fd == self._wake_r:
                    with contextlib.suppress(BlockingIOError):
                        while os.read(self._wake_r, 512):
                            pass
                else:
                    self._read_messages()
            while self.signals:
                self._handle_signal(self.signals.popleft())
            self._reap()
            now = time.monotonic()
            if self.stopping:
                if not self.workers:
                    return
                if now > self.stop_deadline:
                    for w in self.workers.values():
                        self._kill(w, "still running after the graceful timeout")
                continue
            self._check_timeouts(now)
            self._reconcile(now)

    def _handle_signal(self, sig: int) -> None:
        if sig in (signal.SIGTERM, signal.SIGINT):
            if self.stopping:
                log.warning("second %s: killing the workers", signal.Signals(sig).name)
                for w in self.workers.values():
                    self._kill(w, "forced stop")
            else:
                log.info("%s: graceful shutdown", signal.Signals(sig).name)
                self._stop(0)
        elif self.stopping:
            return
        elif sig == signal.SIGHUP:
            self._reload()
        elif sig == signal.SIGTTIN:
            self.want += 1
            log.info("SIGTTIN: %d workers", self.want)
        elif sig == signal.SIGTTOU:
            if self.want > 1:
                self.want -= 1
            log.info("SIGTTOU: %d workers", self.want)
        elif sig == signal.SIGUSR1:  # (gunicorn's "reopen the log files")
            log.warning("SIGUSR1 ignored: logs go to stderr, there is no log file to reopen")

    def _stop(self, code: int) -> None:
        self.stopping = True
        self.exit_code = self.exit_code or code
        self.stop_deadline = time.monotonic() + self.config.graceful_timeout + 2.0
        for w in self.workers.values():
            self._terminate(w)
        self.listeners.close_all()  # refused once the workers have closed theirs too

    def _reload(self) -> None:
        if self.loader is not None:
            try:
                app = self.loader()
            except BaseException as exc:  # UsageError, SyntaxError, SystemExit from the app...
                log.error(
                    "reload failed: %s: %s; keeping the running workers", type(exc).__name__, exc
                )
                return
        else:
            app = self.app
        if self.previous is None:
            self.previous = (self.app, self.generation)
        self._gen_seq += 1
        self.generation = self._gen_seq
        self.app = app
        log.info("SIGHUP: reloading, starting generation %d", self.generation)

    # --- messages and children ---
    def _read_messages(self) -> None:
        try:
            self._buf += os.read(self._msg_r, 64 * _MSG.size)
        except BlockingIOError:
            return
        n = len(self._buf) // _MSG.size * _MSG.size
        chunk, self._buf = self._buf[:n], self._buf[n:]
        for pid, kind in _MSG.iter_unpack(chunk):
            w = self.workers.get(pid)
            if w is None:
                continue
            if kind == MSG_READY and not w.ready:
                w.ready = True
                if not w.draining:
                    self._set_row_state(w, READY)
                log.info("worker %d ready (slot %d, generation %d)", pid, w.slot, w.generation)
            elif kind == MSG_RETIRE and not w.retiring:
                w.retiring = True
                log.info("worker %d reached max_requests: replacing it", pid)

    def _set_row_state(self, w: Worker, state: int) -> None:
        self.board.words[w.row * ROW_WORDS + W_STATE] = state

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            w = self.workers.pop(pid, None)
            if w is not None:
                self._exited(w, os.waitstatus_to_exitcode(status))

    def _exited(self, w: Worker, code: int) -> None:
        now = time.monotonic()
        self.board.retire(w.row)
        uptime = now - w.started
        what = describe(code)
        if w.draining or self.stopping:
            log.info("worker %d (slot %d) stopped: %s", w.pid, w.slot, what)
            return
        if code == BOOT_ERROR and not w.ready:
            if self.previous is not None and w.generation == self.generation:
                log.error("reload failed: worker %d could not start (%s)", w.pid, what)
                self._revert()
                return
            msg = f"worker {w.pid} could not start ({what}); stopping"
            log.error(msg)
            print(f"netpoll-server: error: {msg}", file=sys.stderr, flush=True)
            self._stop(BOOT_ERROR)
            return
        self.board.count_restart()
        if uptime < MIN_UPTIME:
            self.crashes.append(now)
            while self.crashes and now - self.crashes[0] > CRASH_WINDOW:
                self.crashes.popleft()
            if len(self.crashes) >= CRASH_LIMIT:
                msg = (
                    f"crash loop: {len(self.crashes)} workers died within {MIN_UPTIME:g} s of "
                    f"starting in {CRASH_WINDOW:g} s (last: worker {w.pid}, {what}); stopping"
                )
                log.error(msg)
                print(f"netpoll-server: error: {msg}", file=sys.stderr, flush=True)
                self._stop(1)
                return
            delay = self.backoff.get(w.slot, 0.0)
            self.backoff[w.slot] = min(MAX_BACKOFF, max(0.1, 2 * delay))
        else:
            delay = self.backoff[w.slot] = 0.0
        log.warning(
            "worker %d (slot %d) died: %s after %.1f s; respawning in %.1f s",
            w.pid,
            w.slot,
            what,
            uptime,
            delay,
        )
        self.due[w.slot] = now + delay

    def _revert(self) -> None:
        assert self.previous is not None
        bad = self.generation
        self.app, self.generation = self.previous
        self.previous = None
        for w in self.workers.values():
            if w.generation == bad:
                self._terminate(w)
        log.info("keeping generation %d", self.generation)

    def _terminate(self, w: Worker) -> None:
        if w.draining:
            return
        w.draining = True
        w.term_at = time.monotonic()
        self._set_row_state(w, DRAINING)
        with contextlib.suppress(ProcessLookupError):
            os.kill(w.pid, signal.SIGTERM)

    def _kill(self, w: Worker, why: str) -> None:
        if w.killed:
            return
        w.killed = True
        log.error("killing worker %d (slot %d): %s", w.pid, w.slot, why)
        with contextlib.suppress(ProcessLookupError):
            os.kill(w.pid, signal.SIGKILL)

    def _check_timeouts(self, now: float) -> None:
        limit = self.config.worker_timeout
        for w in self.workers.values():
            if w.killed:
                continue
            if w.draining:
                if now - w.term_at > self.config.graceful_timeout + 5.0:
                    self._kill(w, "draining past the graceful timeout")
                continue
            if limit > 0:
                last = max(w.started, self.board.heartbeat(w.row) / 1e9)
                if now - last > limit:
                    self._kill(w, f"no heartbeat for {now - last:.1f} s (worker_timeout {limit:g})")

    def _reconcile(self, now: float) -> None:
        for slot in range(self.want):
            mine = [w for w in self.workers.values() if w.slot == slot and not w.draining]
            leads = [w for w in mine if w.generation == self.generation and not w.retiring]
            if not leads:
                if now >= self.due.get(slot, 0.0):
                    self.due.pop(slot, None)
                    self._spawn(slot)
                continue
            self.due.pop(slot, None)  # a lead exists: no respawn pending for this slot
            if any(w.ready for w in leads):
                for w in mine:
                    if w not in leads:
                        self._terminate(w)
        for w in list(self.workers.values()):
            if w.slot >= self.want:
                self._terminate(w)
        for slot in list(self.listeners.slots):
            if slot >= self.want:
                self.listeners.drop(slot)
        for slot in list(self.due):
            if slot >= self.want:
                del self.due[slot]
        if self.previous is not None and not any(
            w.generation != self.generation and not w.draining for w in self.workers.values()
        ):
            if all(
                any(w.ready and w.slot == s for w in self.workers.values() if not w.draining)
                for s in range(self.want)
            ):
                self.previous = None
                log.info("reload complete: generation %d serving", self.generation)

    # --- forking ---
    def _spawn(self, slot: int) -> None:
        row = self.board.claim()
        if row < 0:
            log.error("no free metrics row for a new worker; retrying in 1 s")
            self.due[slot] = time.monotonic() + 1.0
            return
        try:
            sock = self.listeners.get(slot)
        except OSError as exc:
            self.board.retire(row)
            log.error("cannot open a listener for slot %d: %s; retrying in 1 s", slot, exc)
            self.due[slot] = time.monotonic() + 1.0
            return
        handler, startup, shutdown = self.app
        generation = self.generation
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                code = self._child(row, sock, handler, startup, shutdown)
            except BaseException:
                traceback.print_exc()
            finally:
                with contextlib.suppress(Exception):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(code)
        self.board.set_pid(row, pid)
        self.workers[pid] = Worker(pid, slot, row, generation, time.monotonic())
        log.info("worker %d started (slot %d, generation %d)", pid, slot, generation)

    def _child(
        self, row: int, sock: socket.socket, handler: Any, startup: Hooks, shutdown: Hooks
    ) -> int:
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR1):
            signal.signal(sig, signal.SIG_IGN)
        supervisor = os.getppid()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        assert self._sel is not None
        os.close(self._sel.fileno())
        for fd in (self._msg_r, self._wake_r, self._wake_w):
            os.close(fd)
        self.listeners.close_except(sock)
        config = self.config
        msg_w = self._msg_w
        said_ready = False

        def tell(kind: int) -> None:
            with contextlib.suppress(OSError):
                os.write(msg_w, _MSG.pack(os.getpid(), kind))

        def ready(_addresses: list[Any]) -> None:
            nonlocal said_ready
            said_ready = True
            tell(MSG_READY)

        state = WorkerState(self.board, row)
        state.on_retire = lambda: tell(MSG_RETIRE)
        limit = 0
        if config.max_requests:
            limit = config.max_requests + random.randint(0, config.max_requests_jitter)
        interval = min(1.0, config.worker_timeout / 4) if config.worker_timeout > 0 else 1.0
        try:
            return run_worker(
                instrumented(handler, config, state, limit),
                config.with_(fd=sock.fileno()),
                startup,
                shutdown,
                state=state,
                ready=ready,
                drain_grace=min(1.0, config.graceful_timeout / 2),
                heartbeat=interval,
                parent=supervisor,
            )
        except Exception as exc:
            if said_ready:
                raise
            print(f"netpoll-server: error: worker {os.getpid()}: {exc}", file=sys.stderr)
            return BOOT_ERROR
