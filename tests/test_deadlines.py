"""The deadline wheel: unit behaviour on each loop, and connections sharing one over sockets."""

from __future__ import annotations

import asyncio
from typing import Any

from test_connection import Raw, echo, get, running

from server.deadlines import DeadlineWheel
from server.exchange import Exchange


class Item:
    """A wheel item that records when its deadline fired."""

    __slots__ = ("_dl_bucket", "_dl_next", "_dl_prev", "fired", "name", "on_fire")

    def __init__(self, name: str, fired: list[tuple[str, float]], on_fire: Any = None) -> None:
        self.name = name
        self.fired = fired
        self.on_fire = on_fire
        self._dl_bucket: Any = None
        self._dl_prev: Any = None
        self._dl_next: Any = None

    def __repr__(self) -> str:
        return f"<Item {self.name}>"

    def _on_timer(self) -> None:
        self.fired.append((self.name, asyncio.get_running_loop().time()))
        if self.on_fire is not None:
            self.on_fire(self)


async def test_fires_in_order_never_early_and_earliest_wins() -> None:
    loop = asyncio.get_running_loop()
    wheel = DeadlineWheel(loop)
    fired: list[tuple[str, float]] = []
    done = loop.create_future()
    t0 = loop.time()
    # 0.1 s apart: never in the same 50 ms bucket (within one, the order is arrival order)
    a, b, c, d = (Item(n, fired) for n in "abcd")
    last = Item("last", fired, lambda _: done.set_result(None))
    wheel.schedule(b, t0 + 0.35)
    wheel.schedule(a, t0 + 0.05)
    wheel.schedule(c, t0 + 0.15)
    wheel.schedule(c, t0 + 5.0)  # later: ignored, the earlier deadline stays
    wheel.schedule(d, t0 + 5.0)
    wheel.schedule(d, t0 + 0.25)  # earlier: moves
    wheel.schedule(last, t0 + 0.45)
    assert "buckets=" in repr(wheel)
    await asyncio.wait_for(done, 5)
    assert [n for n, _ in fired] == ["a", "c", "d", "b", "last"]
    wanted = {"a": 0.05, "b": 0.35, "c": 0.15, "d": 0.25, "last": 0.45}
    for name, at in fired:
        assert at >= t0 + wanted[name]
    assert a._dl_bucket is None and a._dl_next is None


async def test_cancel_and_rearm_from_callback() -> None:
    loop = asyncio.get_running_loop()
    wheel = DeadlineWheel(loop)
    fired: list[tuple[str, float]] = []
    done = loop.create_future()
    t0 = loop.time()
    rounds = [0]

    def again(item: Item) -> None:
        rounds[0] += 1
        if rounds[0] < 3:
            wheel.schedule(item, loop.time() + 0.01)  # re-armed while the wheel fires
        else:
            done.set_result(None)

    gone = Item("gone", fired)
    keep = Item("keep", fired, again)
    wheel.schedule(gone, t0 + 0.02)
    wheel.schedule(keep, t0 + 0.02)
    wheel.cancel(gone)
    wheel.cancel(gone)  # twice: harmless
    await asyncio.wait_for(done, 5)
    assert [n for n, _ in fired] == ["keep"] * 3
    assert gone._dl_bucket is None


async def test_callback_error_reported_others_still_fire() -> None:
    loop = asyncio.get_running_loop()
    wheel = DeadlineWheel(loop)
    fired: list[tuple[str, float]] = []
    errors: list[dict[str, Any]] = []
    done = loop.create_future()
    old = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))

    def boom(_: Item) -> None:
        raise RuntimeError("boom")

    try:
        wheel.schedule(Item("bad", fired, boom), loop.time())
        wheel.schedule(Item("good", fired, lambda _: done.set_result(None)), loop.time())
        await asyncio.wait_for(done, 5)
    finally:
        loop.set_exception_handler(old)
    assert [n for n, _ in fired] == ["bad", "good"]
    assert isinstance(errors[0]["exception"], RuntimeError)


async def test_many_idle_connections_share_the_wheel_and_close() -> None:
    """Keep-alive idle close with many connections in the pool's wheel; one that keeps talking
    stays open past the others' deadline."""
    async with running(echo, keepalive_timeout=0.3) as port:
        idle = [await Raw.open(port) for _ in range(20)]
        for c in idle:
            await c.send(get())
            await c.response()
        busy = await Raw.open(port)
        await busy.send(get())
        await busy.response()
        closed = asyncio.gather(*(c.closed() for c in idle))
        while not closed.done():  # activity every 0.1 s keeps `busy` alive
            await asyncio.wait([closed], timeout=0.1)
            await busy.send(get())
            assert (await busy.response()).status == 200
        assert all(closed.result())
        for c in idle:
            await c.close()
        await busy.close()


async def test_one_request_connection_lets_its_worker_go_at_the_next_tick() -> None:
    """A connection that served one request and went idle ends its worker task within a few
    deadline ticks (not after a second); the next requests are answered as before."""
    workers: list[asyncio.Task[Any]] = []

    async def slow(ex: Exchange) -> None:
        await asyncio.sleep(0)  # suspends: runs on the worker task
        task = asyncio.current_task()
        assert task is not None
        workers.append(task)
        await echo(ex)

    async with running(slow) as port:
        c = await Raw.open(port)
        await c.send(get("/one"))
        assert (await c.response()).status == 200
        done, _ = await asyncio.wait(workers, timeout=0.6)  # the default idle window is 1 s
        assert done == {workers[0]}
        await c.send(get("/two") + get("/three"))
        two, three = await c.response(), await c.response()
        assert (two.status, three.status) == (200, 200)
        assert b"/two" in two.body and b"/three" in three.body
        await c.close()
