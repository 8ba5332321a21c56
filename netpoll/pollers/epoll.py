"""epoll backend (Linux).

Kernel facts this file relies on:

* epoll watches the *open file description*, not the fd number. Closing an fd removes it from
  the interest list only when no other fd (a ``dup``, a forked child) refers to the same
  description. So the loop always unregisters before closing; an fd number reused by a new socket
  is then registered afresh and cannot inherit stale interest.
* ``EPOLLERR`` and ``EPOLLHUP`` are always reported, whether asked for or not. We pass them to
  both the reader and the writer (``READ``/``WRITE`` below), so the side that is waiting finds
  the error on its next ``recv``/``send`` instead of the loop spinning on an unhandled event.
* ``epoll_wait`` timeouts are in milliseconds; the interpreter rounds a float timeout *up*, so a
  timer is never woken early and spun on.
* Level-triggered, not edge-triggered. Edge-triggered mode would save the ``epoll_ctl`` calls
  that pause/resume-reading and add/remove-writer make, but it obliges every reader to drain the
  socket until ``EAGAIN`` on each event (an extra ``recv`` per request on keep-alive traffic)
  and makes ``add_reader`` callbacks written for level semantics (the whole asyncio ecosystem)
  miss wake-ups. Our transports keep the reader registered for the connection's lifetime and
  register the writer only when the kernel refused bytes, so ``epoll_ctl`` is off the hot path
  anyway.
* ``EPOLLEXCLUSIVE`` (Linux 4.5) wakes one of the epoll instances waiting on a file instead of
  all of them: listening sockets are registered with it, so workers sharing one listener (a Unix
  socket, an inherited fd) do not all wake for each connection. The kernel accepts the flag only
  with ``EPOLL_CTL_ADD``, never with ``EPOLL_CTL_MOD`` (EINVAL), so :meth:`EpollPoller.modify`
  of an exclusive fd re-adds it without the flag.
"""

from __future__ import annotations

import select

_IN = select.EPOLLIN
_OUT = select.EPOLLOUT
# index: selectors mask (1 = read, 2 = write) -> epoll mask
_NATIVE = (0, _IN, _OUT, _IN | _OUT)
_EXCLUSIVE = getattr(select, "EPOLLEXCLUSIVE", 0)


class EpollPoller:
    name = "epoll"
    READ = ~_OUT  # anything but "only writable" wakes the reader (IN, ERR, HUP, RDHUP, PRI)
    WRITE = ~_IN  # anything but "only readable" wakes the writer (OUT, ERR, HUP)

    def __init__(self) -> None:
        self._ep = select.epoll()
        self._count = 0  # registered fds, for a repr
        self._exclusive: set[int] = set()  # fds added with EPOLLEXCLUSIVE
        # epoll.poll already takes float seconds and None for "forever": expose it as is, so a
        # loop turn pays no Python frame for polling
        self.poll = self._ep.poll  # type: ignore[method-assign]

    def register(self, fd: int, events: int, exclusive: bool = False) -> None:
        if exclusive and _EXCLUSIVE:
            self._ep.register(fd, _NATIVE[events] | _EXCLUSIVE)
            self._exclusive.add(fd)
        else:
            self._ep.register(fd, _NATIVE[events])
        self._count += 1

    def modify(self, fd: int, events: int) -> None:
        if fd in self._exclusive:  # EPOLL_CTL_MOD refuses exclusive entries: re-add
            self._exclusive.discard(fd)
            self._ep.unregister(fd)
            self._ep.register(fd, _NATIVE[events])
            return
        self._ep.modify(fd, _NATIVE[events])

    def unregister(self, fd: int) -> None:
        self._count -= 1
        self._exclusive.discard(fd)
        try:
            self._ep.unregister(fd)
        except OSError:  # already closed: the kernel dropped it with the last reference
            pass

    def poll(self, timeout: float | None) -> list[tuple[int, int]]:  # replaced per instance
        return self._ep.poll(timeout)

    def fileno(self) -> int:
        return self._ep.fileno()

    def close(self) -> None:
        self._ep.close()

    def __repr__(self) -> str:
        state = "closed" if self._ep.closed else f"fd={self._ep.fileno()}"
        return f"<EpollPoller {state} watching={self._count}>"
