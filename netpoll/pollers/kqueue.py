"""kqueue backend (macOS, FreeBSD, OpenBSD, NetBSD).

Kernel facts this file relies on:

* kqueue watches (ident, filter) pairs: reading and writing are two separate registrations
  (``KQ_FILTER_READ``, ``KQ_FILTER_WRITE``), and one ``kevent`` call returns one event per pair.
  So ``poll`` may return the same fd twice, once per filter; the loop dispatches each.
* Closing an fd removes all its kevents automatically; deleting a registration that is already
  gone fails with ``ENOENT``/``EBADF``, which ``unregister`` ignores.
* ``EV_EOF`` is set on a read filter at end of stream and on a write filter when the peer can no
  longer receive; the waiting side learns the detail from its next syscall, as with epoll.
* A kqueue fd is not inherited across ``fork``: a child must build its own loop (as every
  asyncio loop already must).

Native masks here are our own: 1 for a read-filter event, 2 for a write-filter event.
"""

from __future__ import annotations

import select

_READ = 1
_WRITE = 2


class KqueuePoller:
    name = "kqueue"
    READ = _READ
    WRITE = _WRITE

    def __init__(self) -> None:
        self._kq = select.kqueue()  # type: ignore[attr-defined,unused-ignore]
        self._events: dict[int, int] = {}  # fd -> selectors mask currently registered

    def _change(self, fd: int, old: int, new: int) -> None:
        kq = select  # short alias for the constants below
        changes = []
        for bit, flt in ((_READ, kq.KQ_FILTER_READ), (_WRITE, kq.KQ_FILTER_WRITE)):  # type: ignore[attr-defined,unused-ignore]
            if new & bit and not old & bit:
                changes.append(kq.kevent(fd, flt, kq.KQ_EV_ADD))  # type: ignore[attr-defined,unused-ignore]
            elif old & bit and not new & bit:
                changes.append(kq.kevent(fd, flt, kq.KQ_EV_DELETE))  # type: ignore[attr-defined,unused-ignore]
        for change in changes:
            try:
                self._kq.control([change], 0, 0)
            except OSError:
                if not new:  # deleting from an fd the kernel already dropped
                    continue
                raise

    def register(self, fd: int, events: int, exclusive: bool = False) -> None:
        self._change(fd, 0, events)
        self._events[fd] = events

    def modify(self, fd: int, events: int) -> None:
        self._change(fd, self._events.get(fd, 0), events)
        self._events[fd] = events

    def unregister(self, fd: int) -> None:
        old = self._events.pop(fd, 0)
        try:
            self._change(fd, old, 0)
        except OSError:
            pass

    def poll(self, timeout: float | None) -> list[tuple[int, int]]:
        max_ev = max(2 * len(self._events), 1)
        read_filter = select.KQ_FILTER_READ  # type: ignore[attr-defined,unused-ignore]
        return [
            (kev.ident, _READ if kev.filter == read_filter else _WRITE)
            for kev in self._kq.control(None, max_ev, timeout)
        ]

    def fileno(self) -> int:
        return self._kq.fileno()

    def close(self) -> None:
        self._kq.close()

    def __repr__(self) -> str:
        state = "closed" if self._kq.closed else f"fd={self._kq.fileno()}"
        return f"<KqueuePoller {state} watching={len(self._events)}>"
