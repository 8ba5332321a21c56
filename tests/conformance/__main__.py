"""``python -m tests.conformance``: the whole conformance run from the command line.

Runs every planned job (see :mod:`.driver`) in a pool, prints one headline per job as it ends,
then the full report of each job that did not pass. Exit status 0 only if every job passed
(jobs for interpreters that are not installed are listed as missing and do not count).

    python -m tests.conformance                      # netpoll, all interpreters
    python -m tests.conformance --loops asyncio,netpoll --jobs 2
    python -m tests.conformance --python 3.11 --target test_ssl --target mixins
"""

from __future__ import annotations

import argparse
import sys
import time

from .driver import Outcome, Pool, plan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.conformance", description=__doc__)
    parser.add_argument("--loops", default=None, help="comma-separated: netpoll,asyncio")
    parser.add_argument("--jobs", type=int, default=None, help="concurrent subprocesses")
    parser.add_argument("--python", action="append", help="only these versions, e.g. 3.12")
    parser.add_argument("--target", action="append", help="only these targets")
    parser.add_argument("-q", "--quiet", action="store_true", help="headlines only")
    args = parser.parse_args(argv)
    jobs = plan(tuple(args.loops.split(",")) if args.loops else None)
    if args.python:
        jobs = [j for j in jobs if j.python.label in args.python]
    if args.target:
        jobs = [j for j in jobs if j.target in args.target]
    started = time.monotonic()
    pool = Pool(jobs, args.jobs)
    outcomes: list[Outcome] = []
    try:
        for job in jobs:
            outcome = pool.result(job)
            outcomes.append(outcome)
            print(outcome.headline(), flush=True)
    finally:
        pool.close()
    bad = [o for o in outcomes if o.status not in ("passed", "missing")]
    if not args.quiet:
        for outcome in bad:
            print("\n" + "#" * 70 + "\n" + outcome.report())
    print(
        f"\n{len(outcomes)} jobs: {sum(o.ok for o in outcomes)} passed, {len(bad)} not, "
        f"{sum(o.status == 'missing' for o in outcomes)} missing; "
        f"{time.monotonic() - started:.0f} s wall with {pool.workers} workers"
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
