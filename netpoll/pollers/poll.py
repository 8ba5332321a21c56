"""poll(2) backend: the portable fallback, and a second backend for the test suite.

Kernel facts this file relies on:

* ``poll`` keeps no kernel state: the interest set lives in the ``select.poll`` object and is
  copied to the kernel on every call, so a call costs O(watched fds). Fine as a fallback, the
  reason epoll/kqueue exist.
* An fd closed while still registered is reported as ``POLLNVAL`` on every call. The loop
  unregisters before closing; should a caller close an fd behind the loop's back, both the
  reader and writer are dispatched (``POLLNVAL`` is in ``READ`` and ``WRITE``), fail with
  ``EBADF`` and remove themselves, so the loop does not spin forever.
* ``POLLERR``/``POLLHUP``/``POLLNVAL`` are reported whether asked for or not.
* Timeouts are whole milliseconds: we round *up* so timers are never woken early.
"""

from __future__ import annotations

import math
import select

_IN = select.POLLIN
_OUT = select.POLLOUT
_NATIVE = (0, _IN, _OUT, _IN | _OUT)


class PollPoller:
    name = "poll"
    READ = ~_OUT
    WRITE = ~_IN

    def __init__(self) -> None:
        self._p = select.poll()
        self._fds: set[int] = set()  # registered fds (poll objects cannot list theirs)
        self._closed = False

    def register(self, fd: int, events: int, exclusive: bool = False) -> None:
        self._p.register(fd, _NATIVE[events])
        self._fds.add(fd)

    def modify(self, fd: int, events: int) -> None:
        self._p.modify(fd, _NATIVE[events])

    def unregister(self, fd: int) -> None:
        self._fds.discard(fd)
        try:
            self._p.unregister(fd)
        except KeyError:
            pass

    def poll(self, timeout: float | None) -> list[tuple[int, int]]:
        if timeout is None:
            return self._p.poll()
        return self._p.poll(math.ceil(timeout * 1e3) if timeout > 0 else 0)

    def fileno(self) -> int:
        return -1

    def close(self) -> None:
        self._fds.clear()
        self._closed = True

    def __repr__(self) -> str:
        return f"<PollPoller {'closed' if self._closed else 'open'} watching={len(self._fds)}>"
