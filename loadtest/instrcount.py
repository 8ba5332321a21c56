"""Instructions per request of the server layers, counted by callgrind (not timed).

Theory of operation. CPU timings on a shared VM move by ±15 % between back-to-back runs, so a
1-3 % change cannot be judged by them. Instruction counts can: this drives one
:class:`~server.connection.HttpConnection` in-process (no sockets, no kernel: a transport that
only records what is written) with ``GET /plaintext`` (or ``/json``), ``--pipe`` requests per
``data_received``, on the native ``App`` or the ASGI app of :mod:`loadtest.apps` (``/static/10k.bin``
and ``/static/1m.bin``: the bench's files, mounted in front of it as ``--static`` does). It runs the
driver under ``valgrind --tool=callgrind`` twice, for two request counts, with
``PYTHONHASHSEED=0``, and reports the difference divided by the difference in requests, so
start-up and shut-down cancel out. Repeat runs agree within about 0.1 %.

It measures the Python cost of the HTTP core, connection, exchange and app layers only; the
loop, the transport and the kernel are what ``python -m loadtest bench`` adds. Without valgrind
(or with ``--no-valgrind``) it prints the driver's own timing instead (µs per request, noisy).

    python -m loadtest instrcount --kind native --pipe 16
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import time
from typing import Any

REQUEST = b"GET %s HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n"
WARMUP = 200  # requests fed before counting (caches warm, worker made)


class _Sink(asyncio.Transport):
    """A transport that keeps what is written (for the checks) and never pushes back."""

    def __init__(self) -> None:
        super().__init__()
        self.out: list[bytes] = []
        self.closing = False

    def write(self, data: Any) -> None:
        self.out.append(data)

    def writelines(self, list_of_data: Any) -> None:
        self.out.append(b"".join(list_of_data))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name in ("peername", "sockname") else default

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass


def drive(
    kind: str,
    pipe: int,
    requests: int,
    path: str = "/plaintext",
    check: bool = True,
    mounted: bool = False,
) -> tuple[int, float]:
    """Feed ``requests`` requests (after a warm-up) to one connection; return the number of
    ``200`` responses written for them (``check``; else the number of writes, each response
    being one write, so that counting costs nothing per request) and the CPU seconds the
    feeding took."""
    import netpoll
    from loadtest.apps import app, asgi_app
    from server.asgi import ASGIHandler
    from server.config import Config
    from server.pool import ConnectionPool

    data = (REQUEST % path.encode()) * pipe

    async def run() -> tuple[int, float]:
        cfg = Config(max_requests_per_connection=10**9)
        handler: Any = app if kind == "native" else ASGIHandler(asgi_app, cfg, lifespan="off")
        if mounted or path.startswith("/static/"):  # the bench's files, as --static mounts them
            from loadtest.mixed_app import ensure_static_dir
            from server.cli import StaticMounts

            cfg = Config(
                max_requests_per_connection=10**9, static=[("/static", ensure_static_dir())]
            )
            handler = StaticMounts(handler, cfg)
        conn = ConnectionPool(handler, cfg)()
        sink = _Sink()
        conn.connection_made(sink)
        loop = asyncio.get_running_loop()
        done: asyncio.Future[tuple[int, float]] = loop.create_future()

        def feed() -> None:  # from a loop callback, as a transport would (not inside a task)
            for _ in range(max(1, WARMUP // pipe)):
                conn.data_received(data)
            sink.out.clear()
            t0 = time.process_time()
            for _ in range(requests // pipe):
                conn.data_received(data)
            dt = time.process_time() - t0
            if check:
                done.set_result((sum(b.count(b"HTTP/1.1 200 ") for b in sink.out), dt))
            else:
                done.set_result((len(sink.out), dt))

        loop.call_soon(feed)
        result = await done
        conn.connection_lost(None)
        return result

    return netpoll.run(run())


def count(kind: str, pipe: int, path: str, small: int, large: int, mounted: bool = False) -> float:
    """Callgrind instructions per request: (count at ``large`` - at ``small``) / difference."""
    totals = []
    for n in (small, large):
        cmd = [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            "-m",
            "loadtest.instrcount",
            "--drive",
            "--kind",
            kind,
            "--pipe",
            str(pipe),
            "--path",
            path,
            "--requests",
            str(n),
            *(["--mounted"] if mounted else []),
        ]
        env = dict(os.environ, PYTHONHASHSEED="0")
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
        m = re.search(r"Collected : (\d+)", out.stderr)
        if m is None:
            raise RuntimeError(f"no callgrind total in: {out.stderr[-500:]}")
        totals.append(int(m.group(1)))
    return (totals[1] - totals[0]) / (large - small)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kind", choices=("native", "asgi"), default="native")
    p.add_argument("--pipe", type=int, default=1, help="requests per data_received (default 1)")
    p.add_argument(
        "--path",
        default="/plaintext",
        help="/plaintext, /json, /static/10k.bin or /static/1m.bin",
    )
    p.add_argument("--requests", type=int, default=1600, help="requests counted (the difference)")
    p.add_argument(
        "--mounted",
        action="store_true",
        help="with the bench's --static mount in front, as the bench runs ours",
    )
    p.add_argument("--no-valgrind", action="store_true", help="time the driver instead")
    p.add_argument("--drive", action="store_true", help=argparse.SUPPRESS)  # the measured child


def main(args: argparse.Namespace) -> int:
    pipe = max(1, args.pipe)
    if args.drive or args.no_valgrind or shutil.which("valgrind") is None:
        n = args.requests if args.drive else max(args.requests, 20_000)
        n -= n % pipe
        ok, seconds = drive(args.kind, pipe, n, args.path, not args.drive, args.mounted)
        if ok != n:
            print(f"instrcount: {ok} responses for {n} requests", file=sys.stderr)
            return 1
        if not args.drive:
            if shutil.which("valgrind") is None and not args.no_valgrind:
                print("instrcount: valgrind not found; timing instead (noisy)", file=sys.stderr)
            print(f"{args.kind} {args.path} pipe={pipe}: {seconds / n * 1e6:.2f} µs/request")
        return 0
    small = 320 - 320 % pipe
    large = small + args.requests - args.requests % pipe
    per = count(args.kind, pipe, args.path, small, large, args.mounted)
    where = " (mounted)" if args.mounted else ""
    print(
        f"{args.kind} {args.path}{where} pipe={pipe}: {per:,.0f} instructions/request (callgrind)"
    )
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
