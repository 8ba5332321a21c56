"""Per-test time limit: a hung test becomes an error and the rest of the module still runs.

A loop bug usually shows up as a test that waits forever (a lost wake-up, a dropped write), so
a hang must cost one test, not the whole module. :class:`Watchdog` is one daemon thread, started
before the first test and alive until the last (so the suite's thread-leak checks, which compare
thread counts around each test, see a constant). Per test:

1. at ``timeout``: print the test id and every thread's stack (``faulthandler``), then
   ``pthread_kill(main thread, SIGUSR2)``. The signal interrupts a blocking ``epoll_wait``/
   ``poll`` (EINTR; the Python handler runs before the call is retried) and the handler raises
   :class:`TestTimeout`. It derives from ``SystemExit`` because asyncio's ``Handle._run`` and
   ``Task`` re-raise ``SystemExit``/``KeyboardInterrupt`` but log and swallow everything else,
   and unittest records any non-``KeyboardInterrupt`` exception as the test's error. The test's
   tearDown then closes its loop and the run moves on. (SIGUSR2 because the suite itself uses
   SIGALRM/ITIMER_REAL, SIGINT, SIGCHLD and SIGUSR1 in places; nothing uses SIGUSR2.)
   While the test is still running (typically its cleanup now joins a helper thread that is
   itself stuck), the interrupt is repeated every ``RESIGNAL`` seconds.
2. at ``timeout + grace``, if the same test is still running: the interpreter is wedged; print
   that and ``os._exit(3)``. ``faulthandler.dump_traceback_later`` backs this up from C in case
   the main thread never releases the GIL.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
import threading
import time
from types import FrameType

__all__ = ["TestTimeout", "Watchdog"]

SIGNAL = signal.SIGUSR2


class TestTimeout(SystemExit):
    """Raised in the main thread when a test overruns its time limit."""


class Watchdog:
    """Arms a deadline per test; see the module docstring for what happens when one passes."""

    RESIGNAL = 5.0  # seconds between interrupts while a timed-out test is still running

    def __init__(self, timeout: float, grace: float = 30.0) -> None:
        self.timeout = timeout  # seconds a test may run before it is interrupted
        self.grace = grace  # further seconds before the process is killed
        self.fired = 0  # tests interrupted so far
        self._cond = threading.Condition()
        self._test_id: str | None = None  # the running test, None between tests
        self._started = 0.0  # monotonic start of the running test
        self._generation = 0  # bumps per test, so a late wake-up cannot hit the next test
        self._main = threading.main_thread().ident
        self._thread: threading.Thread | None = None
        self._stopping = False

    def __repr__(self) -> str:
        return (
            f"<Watchdog timeout={self.timeout}s grace={self.grace}s test={self._test_id!r} "
            f"fired={self.fired}>"
        )

    def start(self) -> None:
        signal.signal(SIGNAL, self._on_signal)
        self._thread = threading.Thread(target=self._run, name="conformance-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()
        signal.signal(SIGNAL, signal.SIG_DFL)
        faulthandler.cancel_dump_traceback_later()

    def arm(self, test_id: str) -> None:
        with self._cond:
            self._test_id, self._started = test_id, time.monotonic()
            self._generation += 1
            self._cond.notify()
        faulthandler.dump_traceback_later(
            self.timeout + self.grace + 10.0, exit=True, file=sys.__stdout__
        )

    def disarm(self) -> None:
        faulthandler.cancel_dump_traceback_later()
        with self._cond:
            self._test_id = None
            self._generation += 1
            self._cond.notify()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        raise TestTimeout(f"test exceeded the {self.timeout:.0f} s limit (conformance watchdog)")

    def _wait(self, deadline: float, generation: int) -> bool:
        """Wait until ``deadline``; True if the same test is still running then."""
        while not self._stopping and self._generation == generation:
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            self._cond.wait(left)
        return False

    def _run(self) -> None:
        with self._cond:
            while not self._stopping:
                if self._test_id is None:
                    self._cond.wait()
                    continue
                test_id, generation = self._test_id, self._generation
                if not self._wait(self._started + self.timeout, generation):
                    continue
                self.fired += 1
                self._report(f"TIMEOUT: {test_id} still running after {self.timeout:.0f} s")
                assert self._main is not None
                kill_at = self._started + self.timeout + self.grace
                while True:
                    signal.pthread_kill(self._main, SIGNAL)
                    if not self._wait(min(time.monotonic() + self.RESIGNAL, kill_at), generation):
                        break
                    if time.monotonic() >= kill_at:
                        self._report(f"WEDGED: {test_id} ignored the interrupts; exiting")
                        os._exit(3)

    @staticmethod
    def _report(message: str) -> None:
        out = sys.__stdout__
        assert out is not None
        print(f"\n{message}; stacks:", file=out, flush=True)
        faulthandler.dump_traceback(file=out, all_threads=True)
        out.flush()
