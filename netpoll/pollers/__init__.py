"""Poller backends: one small interface, one file per kernel mechanism, chosen here only.

The interface every backend implements (the loop relies on nothing else):

``register(fd, events, exclusive=False)`` / ``modify(fd, events)``
    Watch ``fd`` for ``events``, a mask of ``selectors.EVENT_READ`` (1) and
    ``selectors.EVENT_WRITE`` (2). ``register`` of a watched fd and ``modify`` of an unwatched
    one are bugs in the caller (the selector layer prevents both). ``exclusive`` asks for one
    waiter to be woken per event when several processes poll the same file (a listening socket
    shared by workers): ``EPOLLEXCLUSIVE`` on epoll, a no-op elsewhere.
``unregister(fd)``
    Stop watching ``fd``. Must not raise if the fd was already closed (the kernel may have
    dropped it on its own).
``poll(timeout) -> list[tuple[int, int]]``
    Wait until something is ready or ``timeout`` seconds pass (``None``: forever, ``0``: do not
    block). Returns ``(fd, native_mask)`` pairs. A pair may repeat an fd (kqueue reports one
    pair per filter). ``EINTR`` is retried by the interpreter (PEP 475).
``READ`` / ``WRITE``
    Native-mask bits meaning "dispatch the reader" / "dispatch the writer". Errors and hang-ups
    set both, so whichever side is waiting sees the condition on its next syscall. Keeping the
    native mask avoids translating every event in the hot path.
``name``, ``fileno()``, ``close()``
    The backend's name (``"epoll"``, ``"kqueue"``, ``"poll"``), the kernel object's fd
    (``-1`` for poll), and release of that object.

All backends are level-triggered (see epoll.py for why).

:func:`choose` picks the backend: an explicit name, else ``$NETPOLL_POLLER``, else the best the
platform has (epoll, then kqueue, then poll).
"""

from __future__ import annotations

import os
import select
from typing import Protocol

__all__ = ["AVAILABLE", "Poller", "choose"]


class Poller(Protocol):
    name: str
    READ: int
    WRITE: int

    def register(self, fd: int, events: int, exclusive: bool = False) -> None: ...
    def modify(self, fd: int, events: int) -> None: ...
    def unregister(self, fd: int) -> None: ...
    def poll(self, timeout: float | None) -> list[tuple[int, int]]: ...
    def fileno(self) -> int: ...
    def close(self) -> None: ...


AVAILABLE: tuple[str, ...] = tuple(
    name
    for name, attr in (("epoll", "epoll"), ("kqueue", "kqueue"), ("poll", "poll"))
    if hasattr(select, attr)
)


def choose(name: str | None = None) -> Poller:
    """Return a new poller: ``name``, else ``$NETPOLL_POLLER``, else the best available."""
    name = name or os.environ.get("NETPOLL_POLLER") or AVAILABLE[0]
    if name not in AVAILABLE:
        raise ValueError(f"poller {name!r} is not available here (have: {', '.join(AVAILABLE)})")
    if name == "epoll":
        from .epoll import EpollPoller

        return EpollPoller()
    if name == "kqueue":
        from .kqueue import KqueuePoller

        return KqueuePoller()
    from .poll import PollPoller

    return PollPoller()
