"""One coarse timing wheel per pool: connection deadlines without a TimerHandle each.

Theory of operation
-------------------
A connection has at most one pending deadline: the earliest instant at which one of its
timeouts may have expired (see :meth:`HttpConnection._on_timer
<server.connection.HttpConnection._on_timer>`, which re-checks its state and arms the next one).
Keeping that as a loop ``TimerHandle`` costs ~260 bytes per idle connection (the handle, its
copied ``Context``, a bound method, a float). Here a deadline is instead a place in a *bucket*:
time is cut into ticks of :data:`TICK` seconds and a deadline ``when`` goes to the bucket of
tick ``int(when / TICK) + 1``, which is due at ``tick * TICK`` (strictly after ``when``; at
most one tick late). A bucket is a circular doubly linked list threaded through the items
themselves (their ``_dl_prev``/``_dl_next`` slots, the bucket being the sentinel node), so
arming, moving and cancelling are O(1) and allocate nothing per item.

The wheel keeps the non-empty-at-creation buckets in a dict by tick plus a heap of their ticks,
and one loop timer armed for the earliest tick. When it fires, every bucket due by then is
unlinked first, then each item's ``_on_timer()`` runs (which may arm again, always into a
later tick). A bucket emptied by cancellations stays until its tick (one spurious wakeup at
most), so an idle connection costs no CPU between its deadlines and there is no periodic tick.

"Earliest deadline wins": :meth:`schedule` moves an item only to an earlier tick; a later
deadline is ignored (the item's ``_on_timer`` re-arms when the earlier one fires). Callers on a
hot path may skip the call when ``when >= item._dl_bucket.start`` (no move can result).

Items must define the slots ``_dl_prev``, ``_dl_next`` (``None`` when not scheduled) and
``_dl_bucket``, and a method ``_on_timer()``.
"""

from __future__ import annotations

import asyncio
import heapq
from typing import Any, Protocol

__all__ = ["TICK", "DeadlineWheel"]

TICK = 0.05  # seconds per bucket: deadlines fire at most this late
_PER_S = 1.0 / TICK


class _Item(Protocol):
    _dl_prev: Any
    _dl_next: Any
    _dl_bucket: _Bucket | None

    def _on_timer(self) -> None: ...


class _Bucket:
    """The sentinel node of one tick's circular list."""

    __slots__ = ("_dl_next", "_dl_prev", "start", "tick")

    def __init__(self, tick: int) -> None:
        self.tick = tick
        # deadlines from here on go to this tick or a later one: an item in this bucket need
        # not move for them (the caller's cheap check before schedule(), see the module doc)
        self.start = (tick - 1) * TICK
        self._dl_prev: Any = self
        self._dl_next: Any = self

    def __repr__(self) -> str:
        n = 0
        node = self._dl_next
        while node is not self:
            n += 1
            node = node._dl_next
        return f"<_Bucket tick={self.tick} items={n}>"


class DeadlineWheel:
    """Deadlines of many items on one loop timer (see the module docstring)."""

    __slots__ = ("_buckets", "_heap", "_timer", "_timer_tick", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._buckets: dict[int, _Bucket] = {}  # tick -> bucket; each tick is in _heap once
        self._heap: list[int] = []  # ticks of _buckets
        self._timer: asyncio.TimerHandle | None = None  # armed for _timer_tick
        self._timer_tick = 0

    def __repr__(self) -> str:
        nxt = self._heap[0] * TICK if self._heap else None
        return (
            f"<DeadlineWheel buckets={len(self._buckets)} next={nxt} "
            f"armed={self._timer is not None}>"
        )

    def schedule(self, item: _Item, when: float) -> None:
        """Make ``item._on_timer()`` run at ``when`` (at most :data:`TICK` late), unless it is
        already scheduled no later than that tick."""
        tick = int(when * _PER_S) + 1
        old = item._dl_bucket
        if old is not None:
            if old.tick <= tick:
                return
            _unlink(item)
        bucket = self._buckets.get(tick)
        if bucket is None:
            bucket = self._buckets[tick] = _Bucket(tick)
            heapq.heappush(self._heap, tick)
            if self._timer is None or tick < self._timer_tick:
                self._arm(tick)
        last = bucket._dl_prev
        item._dl_prev = last
        item._dl_next = bucket
        last._dl_next = item
        bucket._dl_prev = item
        item._dl_bucket = bucket

    def cancel(self, item: _Item) -> None:
        """Forget ``item``'s deadline (no-op if it has none)."""
        if item._dl_bucket is not None:
            _unlink(item)

    def _arm(self, tick: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_tick = tick
        self._timer = self.loop.call_at(tick * TICK, self._fire)

    def _fire(self) -> None:
        self._timer = None
        heap = self._heap
        buckets = self._buckets
        now = self.loop.time()
        due: list[Any] = []
        while heap and heap[0] * TICK <= now:
            bucket = buckets.pop(heapq.heappop(heap))
            node = bucket._dl_next
            while node is not bucket:
                nxt = node._dl_next
                node._dl_prev = node._dl_next = node._dl_bucket = None
                due.append(node)
                node = nxt
            bucket._dl_prev = bucket._dl_next = bucket
        try:
            for item in due:
                try:
                    item._on_timer()
                except (SystemExit, KeyboardInterrupt):
                    raise
                except BaseException as exc:
                    self.loop.call_exception_handler(
                        {"message": "deadline callback failed", "exception": exc, "item": item}
                    )
        finally:
            # drop buckets emptied by cancellations, then wait for the next one due
            while heap and buckets[heap[0]]._dl_next is buckets[heap[0]]:
                del buckets[heapq.heappop(heap)]
            # callbacks may have armed the timer for a later tick than one already waiting
            if heap and (self._timer is None or self._timer_tick != heap[0]):
                self._arm(heap[0])


def _unlink(item: Any) -> None:
    prev = item._dl_prev
    nxt = item._dl_next
    prev._dl_next = nxt
    nxt._dl_prev = prev
    item._dl_prev = item._dl_next = item._dl_bucket = None
