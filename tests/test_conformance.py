"""CPython's own asyncio test suite against netpoll's loop: one pytest test per (interpreter, target).

Each test is one ``python -m tests.conformance.run <target> --loop netpoll`` subprocess (see
``tests/conformance/__init__.py`` for how the loop is swapped in). Subprocesses run two at a time
in a session-wide pool that starts, heaviest first, when the first conformance test asks for its
result; each test then waits for its own job, so the suite uses both cores while pytest runs its
items one by one. A failing test prints the runner's summary and unittest's tracebacks.
Interpreters that are not installed (3.12, 3.13) are skipped.

``NETPOLL_CONFORMANCE_LOOPS=asyncio,netpoll`` adds the same jobs on stock asyncio (the harness's
own validation: everything not excluded must pass there). The CLI twin is
``python -m tests.conformance``.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import unittest
from collections.abc import Iterator

import pytest
from conformance.driver import Job, Pool, plan
from conformance.exclusions import EXCLUSIONS, Exclusion, excluded
from conformance.loops import LoopUnderTest
from conformance.mixins import bind
from conformance.run import _Collector, _flatten
from conformance.watchdog import Watchdog

JOBS = plan()


@pytest.fixture(scope="session")
def conformance_pool(request: pytest.FixtureRequest) -> Iterator[Pool]:
    """A pool that runs exactly the conformance jobs selected in this session."""
    selected = [
        item.callspec.params["job"]
        for item in request.session.items
        if isinstance(item, pytest.Function)
        and item.originalname == "test_conformance"
        and hasattr(item, "callspec")
    ]
    pool = Pool([job for job in selected if job.python.path is not None])
    yield pool
    pool.close()


@pytest.mark.timeout(1800)  # waits for its job behind others in the pool; jobs bound themselves
@pytest.mark.parametrize("job", JOBS, ids=[job.id for job in JOBS])
def test_conformance(job: Job, conformance_pool: Pool) -> None:
    if job.python.path is None:
        pytest.skip(f"Python {job.python.label} with test.test_asyncio is not installed")
    outcome = conformance_pool.result(job)
    if not outcome.ok:
        pytest.fail(outcome.report(), pytrace=False)


# ------------------------------------------------------------------ the harness's own checks


def test_watchdog_turns_a_hang_into_an_error() -> None:
    """A test blocked in a syscall is interrupted at its deadline and recorded as an error."""
    read_fd, write_fd = os.pipe()

    class Hang(unittest.TestCase):
        def test_hang(self) -> None:
            os.read(read_fd, 1)  # nothing is ever written: blocks until interrupted

    test, result = Hang("test_hang"), unittest.TestResult()
    dog = Watchdog(timeout=0.5, grace=20.0)
    dog.start()
    try:
        dog.arm(test.id())
        test.run(result)
        dog.disarm()
    finally:
        dog.stop()
        os.close(read_fd)
        os.close(write_fd)
    assert dog.fired == 1
    assert len(result.errors) == 1
    assert "TestTimeout" in result.errors[0][1]


def test_exclusions_match_by_loop_and_version() -> None:
    entry = Exclusion("test_x.Case.test_*", "why", loops=("netpoll",), versions=((3, 12),))
    assert entry.applies("test_x.Case.test_a", "netpoll", (3, 12))
    assert not entry.applies("test_x.Case.test_a", "asyncio", (3, 12))
    assert not entry.applies("test_x.Case.test_a", "netpoll", (3, 11))
    assert not entry.applies("test_x.Other.test_a", "netpoll", (3, 12))
    test_id = "test.test_asyncio." + EXCLUSIONS[0].pattern
    assert excluded(test_id, "netpoll", (3, 11)) == EXCLUSIONS[0].reason
    assert excluded(test_id, "asyncio", (3, 11)) is None


def test_mixin_classes_replace_the_stock_selector_classes() -> None:
    """test_server's suite runs BaseStartServer on the loop under test, not on stock selectors."""
    collector = _Collector(LoopUnderTest("asyncio"), only_mixins=False, keyword=None)
    ids = [test.id() for test in _flatten(collector.collect(["test_server"]))]
    generated = [i for i in ids if ".LoopUnderTestStartServerTests." in i]
    assert generated
    assert not [i for i in ids if ".SelectorStartServerTests." in i]
    module = importlib.import_module("test.test_asyncio.test_server")
    bound = bind(module, LoopUnderTest("asyncio"))
    assert issubclass(bound, module.BaseStartServer)
    loop = bound("test_start_server_1").new_loop()  # type: ignore[attr-defined]
    try:
        assert type(loop) is asyncio.unix_events._UnixSelectorEventLoop  # type: ignore[attr-defined]
    finally:
        loop.close()
