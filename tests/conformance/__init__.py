"""CPython's own asyncio test suite, run against the loop under test (netpoll or stock asyncio).

Theory of operation
-------------------
The interpreter ships ``test.test_asyncio``. Its modules get an event loop in two ways, and we
redirect both to the loop under test:

1. **Loop-parameterised mixins.** ``test_events``, ``test_sock_lowlevel``, ``test_sendfile``,
   ``test_server``, ``test_buffered_proto`` and ``test_sslproto`` define a test mixin plus one
   concrete ``TestCase`` per selector (``EPollEventLoopTests``, ``SelectorStartServerTests``...)
   whose ``create_event_loop()``/``new_loop()`` builds stock asyncio's loop. :mod:`.mixins`
   derives one class per module from the stock concrete class for the default selector (so it
   carries exactly the stock mixins, setUp/tearDown, child-watcher handling and any extra tests
   the file attaches to the selector loop) and overrides the hook to return the loop under test.
   The stock concrete classes are left out of the run (in both modes: the run on stock asyncio
   goes through the same generated classes, which is what validates the harness).
2. **The policy.** Everything else calls ``asyncio.new_event_loop()``, ``asyncio.run()``,
   ``IsolatedAsyncioTestCase`` (a ``Runner``) or, in a few classes, ``asyncio.SelectorEventLoop()``
   directly. Each module's ``tearDownModule`` (and several tests) reset the policy to ``None``,
   after which asyncio re-creates it from the package attribute ``asyncio.DefaultEventLoopPolicy``
   (``events._init_event_loop_policy`` does ``from . import DefaultEventLoopPolicy``, 3.11-3.13).
   :mod:`.loops` therefore patches, for netpoll, ``asyncio.DefaultEventLoopPolicy`` and
   ``asyncio.unix_events.DefaultEventLoopPolicy`` to ``netpoll.EventLoopPolicy``, and
   ``asyncio.SelectorEventLoop`` / ``asyncio.unix_events.SelectorEventLoop`` (plus the 3.13
   ``EventLoop`` alias) to ``netpoll.Loop``, then installs the policy. Subclasses of stock classes
   defined before the patch (``netpoll.Loop`` itself, test helpers) are unaffected.

Each target (one stdlib module, or the group ``mixins``) runs in its own interpreter process
(:mod:`.run`), so a crash, a hang (per-test ``faulthandler`` watchdog) or a leaked policy stays
local. :mod:`.driver` plans the (interpreter, target, loop) jobs and runs them in a small process
pool; ``tests/test_conformance.py`` is the pytest face of it and ``python -m tests.conformance``
the command-line one. Excluded tests and the reason for each live in :mod:`.exclusions`.
"""

from __future__ import annotations

import sys

__all__ = ["MIXIN_MODULES", "POLICY_MODULES", "TARGETS_NOT_RUN", "modules_for"]

#: Modules whose mixins are bound to the loop under test (see :mod:`.mixins`).
MIXIN_MODULES: tuple[str, ...] = (
    "test_events",
    "test_sock_lowlevel",
    "test_sendfile",
    "test_server",
    "test_buffered_proto",
    "test_sslproto",
)

#: Every module run with the loop under test installed as the default loop, with the minimum
#: interpreter version that ships it. The mixin modules are in here too: their other classes
#: (policy tests, handle tests...) run through the policy.
POLICY_MODULES: dict[str, tuple[int, int]] = {
    "test_base_events": (3, 11),
    "test_buffered_proto": (3, 11),
    "test_context": (3, 11),
    "test_eager_task_factory": (3, 12),
    "test_events": (3, 11),
    "test_futures": (3, 11),
    "test_futures2": (3, 11),
    "test_locks": (3, 11),
    "test_pep492": (3, 11),
    "test_queues": (3, 11),
    "test_runners": (3, 11),
    "test_sendfile": (3, 11),
    "test_server": (3, 11),
    "test_sock_lowlevel": (3, 11),
    "test_ssl": (3, 11),
    "test_sslproto": (3, 11),
    "test_staggered": (3, 13),
    "test_streams": (3, 11),
    "test_subprocess": (3, 11),
    "test_taskgroups": (3, 11),
    "test_tasks": (3, 11),
    "test_threads": (3, 11),
    "test_timeouts": (3, 11),
    "test_unix_events": (3, 11),
    "test_waitfor": (3, 11),
}

#: Modules of ``test.test_asyncio`` we do not run, and why.
TARGETS_NOT_RUN: dict[str, str] = {
    "test_protocols": "no loop: checks the abstract Protocol classes' default methods",
    "test_transports": "no loop: checks the abstract Transport classes' default methods",
    "test_selector_events": "unit tests of stock BaseSelectorEventLoop/_SelectorTransport "
    "internals against a mocked selector; never builds the default loop",
    "test_proactor_events": "Windows proactor internals (mocked)",
    "test_windows_events": "Windows only",
    "test_windows_utils": "Windows only",
}


def modules_for(version: tuple[int, int] = sys.version_info[:2]) -> list[str]:
    """Return the policy modules shipped by an interpreter of ``version``, in a stable order."""
    return [name for name, since in sorted(POLICY_MODULES.items()) if version >= since]
