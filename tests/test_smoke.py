import asyncio


async def test_loop_runs_callbacks() -> None:
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    loop.call_soon(fut.set_result, 42)
    assert await fut == 42
