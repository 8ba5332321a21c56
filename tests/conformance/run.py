"""Run one target of CPython's asyncio suite on one loop, in this process, and summarise it.

Usage::

    python -m tests.conformance.run test_tasks --loop netpoll
    python -m tests.conformance.run mixins --loop netpoll --poller poll
    python -m tests.conformance.run test_events --loop asyncio -v -k create_server

A target is a module of ``test.test_asyncio`` (see ``tests.conformance.POLICY_MODULES``) or
``mixins``: only the generated loop-parameterised classes of every mixin module. Order of work:
import the module(s) with stock asyncio untouched, build the suite (stock selector-bound classes
swapped for the generated ones, exclusions dropped), install the loop under test, run it with a
per-test watchdog (:mod:`.watchdog`: a hung test dumps every thread's stack and becomes an error),
and print the unittest report followed by one summary line per module and a machine-readable
``CONFORMANCE-RESULT {json}`` line (the driver parses it). Exit status: 0 when nothing failed or
errored, 1 otherwise, 2 on a usage or setup error.
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib
import json
import re
import signal
import sys
import time
import traceback
import unittest
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import TextIO

from . import POLICY_MODULES, modules_for
from .exclusions import excluded
from .loops import LOOPS, LoopUnderTest, interpreter_label
from .mixins import MIXINS, bind
from .watchdog import Watchdog

__all__ = ["Summary", "main", "run_target"]

RESULT_MARK = "CONFORMANCE-RESULT "
PACKAGE = "test.test_asyncio."


@dataclass
class Summary:
    """Counts for one target; ``failed_ids`` hold ``id: last traceback line``."""

    target: str
    loop: str
    python: str
    ran: int = 0
    failures: int = 0
    errors: int = 0
    skipped: int = 0
    excluded: int = 0
    expected_failures: int = 0
    unexpected_successes: int = 0
    loops_created: int = 0
    seconds: float = 0.0
    per_module: dict[str, dict[str, int]] = field(default_factory=dict)
    failed_ids: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.failures or self.errors or self.unexpected_successes)

    def line(self) -> str:
        return (
            f"{self.target} [{self.loop}, Python {self.python}]: ran {self.ran}, "
            f"failures {self.failures}, errors {self.errors}, skipped {self.skipped}, "
            f"excluded {self.excluded}, expected failures {self.expected_failures}, "
            f"unexpected successes {self.unexpected_successes}; "
            f"{self.loops_created} loops of the class under test; {self.seconds:.1f} s"
        )


def _flatten(suite: unittest.TestSuite | unittest.TestCase) -> Iterator[unittest.TestCase]:
    if isinstance(suite, unittest.TestSuite):
        for child in suite:
            yield from _flatten(child)
    else:
        yield suite


_MODULE_IN_ID = re.compile(r"test\.test_asyncio\.(\w+)")


def _module_of(test_id: str) -> str:
    """Short module name in a test id, also for setUpClass and import-failure pseudo-tests."""
    match = _MODULE_IN_ID.search(test_id)
    return match.group(1) if match else test_id


class _Collector:
    """Builds the suite for a target; remembers what it left out and why."""

    def __init__(self, lut: LoopUnderTest, only_mixins: bool, keyword: str | None) -> None:
        self.lut = lut
        self.only_mixins = only_mixins  # the "mixins" target: generated classes only
        self.keyword = keyword  # -k: fnmatch "*keyword*" over test ids
        self.excluded: list[tuple[str, str]] = []  # (test id, reason)
        self.version = sys.version_info[:2]

    def collect(self, names: list[str]) -> unittest.TestSuite:
        loader = unittest.TestLoader()
        out = unittest.TestSuite()
        for name in names:
            try:
                module = importlib.import_module(PACKAGE + name)
            except unittest.SkipTest as exc:  # module-level skip (e.g. no working socket)
                out.addTest(_skipped_module(name, str(exc)))
                continue
            tests: list[unittest.TestCase] = []
            spec = MIXINS.get(name)
            if not self.only_mixins:
                for test in _flatten(loader.loadTestsFromModule(module)):
                    cls = type(test)
                    if spec and cls.__module__ == module.__name__ and cls.__name__ in spec.replaces:
                        continue
                    tests.append(test)
            if spec is not None:
                tests.extend(_flatten(loader.loadTestsFromTestCase(bind(module, self.lut))))
            for test in tests:
                if self._keep(test):
                    out.addTest(test)
        return out

    def _keep(self, test: unittest.TestCase) -> bool:
        test_id = test.id()
        if self.keyword and not fnmatch.fnmatchcase(test_id, f"*{self.keyword}*"):
            return False
        reason = excluded(test_id, self.lut.name, self.version)
        if reason is not None:
            self.excluded.append((test_id, reason))
            return False
        return True


def _skipped_module(name: str, reason: str) -> unittest.TestCase:
    class ModuleSkipped(unittest.TestCase):
        def runTest(self) -> None:
            raise unittest.SkipTest(reason)

    ModuleSkipped.__module__ = PACKAGE + name
    return ModuleSkipped()


class _WatchdogResult(unittest.TextTestResult):
    """TextTestResult that arms the per-test watchdog around every test."""

    watchdog: Watchdog | None = None  # set by run_target for the duration of the run

    def startTest(self, test: unittest.TestCase) -> None:
        self.stream.flush()
        if self.watchdog is not None:
            self.watchdog.arm(test.id())
        super().startTest(test)

    def stopTest(self, test: unittest.TestCase) -> None:
        super().stopTest(test)
        if self.watchdog is not None:
            self.watchdog.disarm()


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def run_target(
    target: str,
    lut: LoopUnderTest,
    *,
    verbosity: int = 1,
    test_timeout: float = 120.0,
    keyword: str | None = None,
    stream: TextIO = sys.stdout,
) -> Summary:
    """Run ``target`` on ``lut`` and return its summary (the report goes to ``stream``)."""
    if target == "mixins":
        names, only_mixins = [m for m in MIXINS if m in modules_for()], True
    elif target in modules_for():
        names, only_mixins = [target], False
    else:
        raise ValueError(f"unknown target {target!r} for Python {interpreter_label()}")
    collector = _Collector(lut, only_mixins, keyword)
    suite = collector.collect(names)
    planned = [test.id() for test in _flatten(suite)]  # the suite drops tests as they run
    lut.install()
    watchdog = _WatchdogResult.watchdog = Watchdog(test_timeout)
    watchdog.start()
    runner = unittest.TextTestRunner(
        stream=stream, verbosity=verbosity, resultclass=_WatchdogResult
    )
    started = time.monotonic()
    try:
        result = runner.run(suite)
    finally:
        seconds = time.monotonic() - started
        watchdog.stop()
        _WatchdogResult.watchdog = None
        lut.uninstall()
    summary = Summary(target, lut.label, interpreter_label(), seconds=seconds)
    summary.ran = result.testsRun
    summary.failures, summary.errors = len(result.failures), len(result.errors)
    summary.skipped = len(result.skipped)
    summary.expected_failures = len(result.expectedFailures)
    summary.unexpected_successes = len(result.unexpectedSuccesses)
    summary.excluded = len(collector.excluded)
    summary.loops_created = lut.created
    for kind, pairs in (("FAIL", result.failures), ("ERROR", result.errors)):
        for test, text in pairs:
            summary.failed_ids.append(f"{kind} {test.id()}: {_last_line(text)}")
    for test in result.unexpectedSuccesses:
        summary.failed_ids.append(f"UNEXPECTED SUCCESS {test.id()}")
    summary.per_module = _per_module(planned, result, collector)
    if verbosity > 1:
        for test_id, reason in collector.excluded:
            print(f"excluded {test_id}: {reason}", file=stream)
    return summary


def _per_module(
    planned: list[str], result: unittest.TestResult, collector: _Collector
) -> dict[str, dict[str, int]]:
    table: defaultdict[str, Counter[str]] = defaultdict(Counter)
    for test_id in planned:
        table[_module_of(test_id)]["ran"] += 1
    outcomes: list[tuple[str, list[tuple[unittest.TestCase, str]]]] = [
        ("failures", result.failures),
        ("errors", result.errors),
        ("skipped", result.skipped),
    ]
    for key, pairs in outcomes:
        for test, _ in pairs:
            table[_module_of(test.id())][key] += 1
    for test_id, _ in collector.excluded:
        table[_module_of(test_id)]["excluded"] += 1
    return {name: dict(counts) for name, counts in sorted(table.items())}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.conformance.run", description=__doc__)
    parser.add_argument("target", help="a test.test_asyncio module name, or 'mixins'")
    parser.add_argument("--loop", choices=LOOPS, default="netpoll")
    parser.add_argument("--poller", help="netpoll backend: epoll, kqueue or poll")
    parser.add_argument("-v", "--verbose", action="count", default=1)
    parser.add_argument("-k", "--keyword", help="only tests whose id contains this (fnmatch)")
    parser.add_argument(
        "--test-timeout", type=float, default=120.0, help="seconds before a hung test is killed"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    # CPython's suite interrupts itself with SIGINT (test_runners) and expects Python's own
    # handler, as a terminal gives it. Launched with SIGINT ignored (a background job of a
    # non-interactive shell, nohup), those tests would wait for the watchdog instead.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    known = [*sorted(POLICY_MODULES), "mixins"]
    if args.target not in known:
        print(f"unknown target {args.target!r}; choose from: {', '.join(known)}", file=sys.stderr)
        return 2
    try:
        lut = LoopUnderTest(args.loop, args.poller)
        summary = run_target(
            args.target,
            lut,
            verbosity=args.verbose,
            test_timeout=args.test_timeout,
            keyword=args.keyword,
        )
    except Exception:  # a setup error is not a test failure: say so and stop
        traceback.print_exc()
        return 2
    print("=" * 70)
    print(summary.line())
    for name, counts in summary.per_module.items():
        if len(summary.per_module) > 1:
            print(f"  {name}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    for failed in summary.failed_ids:
        print(f"  {failed}")
    print(RESULT_MARK + json.dumps(asdict(summary)))
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(main())
