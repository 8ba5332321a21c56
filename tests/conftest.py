"""Shared fixtures: every async test runs on each event loop where behaviour is loop-independent.

Loops: ``netpoll`` (default poller: epoll here), ``uvloop`` and stock ``asyncio``. A test marked
``@pytest.mark.pollers`` also runs on netpoll with the portable ``poll`` backend. Choose a subset
with ``@pytest.mark.asyncio(loop_factories=["netpoll"])``.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable

import pytest

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def _factories(all_pollers: bool) -> dict[str, LoopFactory]:
    out: dict[str, LoopFactory] = {}
    try:
        import netpoll

        out["netpoll"] = netpoll.new_event_loop
        if all_pollers:
            out["netpoll-poll"] = functools.partial(netpoll.Loop, poller="poll")
    except (ImportError, AttributeError):  # pragma: no cover - while netpoll is being built
        pass
    try:
        import uvloop

        out["uvloop"] = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a test dependency
        pass
    out["asyncio"] = asyncio.SelectorEventLoop
    return out


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "pollers: also run on netpoll's portable poll backend")
    config.addinivalue_line("markers", "slow: a test that takes seconds")


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, LoopFactory]:
    return _factories(item.get_closest_marker("pollers") is not None)


@pytest.fixture
def fd_count() -> Callable[[], int]:
    """Return a function counting this process's open file descriptors."""

    def count() -> int:
        return len(os.listdir("/proc/self/fd"))

    return count
