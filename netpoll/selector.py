"""A ``selectors.BaseSelector`` face on a netpoll poller.

asyncio's selector-loop machinery (``add_reader``, ``_remove_writer``, subprocess pipes, the
signal self-pipe) talks to ``loop._selector`` through the ``selectors`` API; this class gives it
that API over any backend from :mod:`netpoll.pollers`. The loop's own hot path does not call
``select()``: it polls the backend directly and looks up ``keys`` by fd.

Invariant: ``keys[fd].events`` is exactly what the backend watches for ``fd``.
"""

from __future__ import annotations

import selectors
from collections.abc import Mapping
from typing import Any

from .pollers import Poller

_VALID = selectors.EVENT_READ | selectors.EVENT_WRITE


def _fd_of(fileobj: Any) -> int:
    if isinstance(fileobj, int):
        fd = fileobj
    else:
        try:
            fd = int(fileobj.fileno())
        except (AttributeError, TypeError, ValueError):
            raise ValueError(f"Invalid file object: {fileobj!r}") from None
    if fd < 0:
        raise ValueError(f"Invalid file descriptor: {fd}")
    return fd


def _lookup(keys: dict[int, selectors.SelectorKey], fileobj: Any) -> int:
    """The fd ``fileobj`` is registered under. A file object closed since it was registered
    (``fileno()`` is -1 now) is found by identity, as CPython's selectors do (anyio removes a
    socket's reader after closing it): else its key would stay, holding the fd number."""
    try:
        return _fd_of(fileobj)
    except ValueError:
        for key in keys.values():
            if key.fileobj is fileobj:
                return key.fd
        raise


class _KeyMap(Mapping[Any, selectors.SelectorKey]):
    __slots__ = ("_keys",)

    def __init__(self, keys: dict[int, selectors.SelectorKey]) -> None:
        self._keys = keys

    def __len__(self) -> int:
        return len(self._keys)

    def __getitem__(self, fileobj: Any) -> selectors.SelectorKey:
        try:
            return self._keys[_lookup(self._keys, fileobj)]
        except ValueError:
            raise KeyError(f"{fileobj!r} is not registered") from None

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._keys)


class PollerSelector(selectors.BaseSelector):
    def __init__(self, poller: Poller) -> None:
        self.poller = poller
        self.keys: dict[int, selectors.SelectorKey] = {}  # fd -> key; see module invariant
        self._map: _KeyMap | None = _KeyMap(self.keys)

    def register(
        self, fileobj: Any, events: int, data: Any = None, *, exclusive: bool = False
    ) -> selectors.SelectorKey:
        if not events or events & ~_VALID:
            raise ValueError(f"Invalid events: {events!r}")
        fd = _fd_of(fileobj)
        if fd in self.keys:
            raise KeyError(f"{fileobj!r} (FD {fd}) is already registered")
        self.poller.register(fd, events, exclusive)
        key = selectors.SelectorKey(fileobj, fd, events, data)
        self.keys[fd] = key
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        fd = _lookup(self.keys, fileobj)
        try:
            key = self.keys.pop(fd)
        except KeyError:
            raise KeyError(f"{fileobj!r} is not registered") from None
        self.poller.unregister(fd)
        return key

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        if not events or events & ~_VALID:
            raise ValueError(f"Invalid events: {events!r}")
        fd = _lookup(self.keys, fileobj)
        try:
            key = self.keys[fd]
        except KeyError:
            raise KeyError(f"{fileobj!r} is not registered") from None
        if key.events != events:
            self.poller.modify(fd, events)
        key = self.keys[fd] = selectors.SelectorKey(key.fileobj, fd, events, data)
        return key

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        """Poll and translate to ``(key, mask)`` pairs (for callers other than the loop)."""
        if timeout is not None and timeout < 0:
            timeout = 0
        read_bits, write_bits = self.poller.READ, self.poller.WRITE
        out = []
        for fd, native in self.poller.poll(timeout):
            key = self.keys.get(fd)
            if key is None:
                continue
            mask = (selectors.EVENT_READ if native & read_bits else 0) | (
                selectors.EVENT_WRITE if native & write_bits else 0
            )
            if mask & key.events:
                out.append((key, mask & key.events))
        return out

    def get_key(self, fileobj: Any) -> selectors.SelectorKey:
        try:
            return self.keys[_lookup(self.keys, fileobj)]
        except KeyError:
            raise KeyError(f"{fileobj!r} is not registered") from None

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._map  # type: ignore[return-value]

    def fileno(self) -> int:
        return self.poller.fileno()

    def close(self) -> None:
        self.keys.clear()
        self._map = None
        self.poller.close()

    def __repr__(self) -> str:
        return f"<PollerSelector {self.poller!r} keys={len(self.keys)}>"
