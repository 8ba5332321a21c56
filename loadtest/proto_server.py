"""The loop benchmark's target: a minimal keep-alive HTTP/1.1 responder, the same code on every
loop, so the figures measure the loop and its transports, not a framework.

usage: python -m loadtest.proto_server LOOP [PORT] [--stats FILE]
       LOOP: netpoll | netpoll-poll | uvloop | asyncio | raw-epoll

Each connection is an ``asyncio.Protocol`` that feeds bytes to an ``httptools`` parser and
``write``s one canned 13-byte response per complete request (pipelined requests therefore make
several writes in one loop turn, which netpoll corks into one ``sendmsg``). ``raw-epoll`` is the
reference floor: no asyncio at all, one level-triggered ``select.epoll`` loop that reads into one
buffer and answers each readiness batch with one ``sendmsg``.

It binds 127.0.0.1:PORT (0: any free port), then prints ``{"port": N, "pid": P}`` on stdout.
With ``--stats FILE`` the loop's ``stats()`` (netpoll; ``null`` elsewhere, and the raw loop's own
counts) are appended to FILE as one JSON line on SIGUSR1 and on SIGTERM, which also stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import select
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

import httptools

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\nContent-Type: text/plain\r\n\r\nHello, World!"
BACKLOG = 1024


class HelloProtocol(asyncio.Protocol):
    """One canned response per parsed request; closes on a parse error or EOF."""

    __slots__ = ("parser", "transport")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)

    def __repr__(self) -> str:
        return f"<HelloProtocol open={self.transport is not None}>"

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_message_complete(self) -> None:
        assert self.transport is not None
        self.transport.write(RESPONSE)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.transport = None


def _announce(port: int) -> None:
    sys.stdout.write(json.dumps({"port": port, "pid": os.getpid()}) + "\n")
    sys.stdout.flush()


def _dump(path: str | None, stats: dict[str, Any] | None) -> None:
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(stats) + "\n")


async def _serve(port: int, stats_path: str | None) -> None:
    loop = asyncio.get_running_loop()
    stats: Callable[[], dict[str, Any]] | None = getattr(loop, "stats", None)
    server = await loop.create_server(HelloProtocol, "127.0.0.1", port, backlog=BACKLOG)
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGUSR1, lambda: _dump(stats_path, stats() if stats else None))

    def on_term() -> None:
        _dump(stats_path, stats() if stats else None)
        if not stop.done():
            stop.set_result(None)

    loop.add_signal_handler(signal.SIGTERM, on_term)
    loop.add_signal_handler(signal.SIGINT, on_term)
    _announce(server.sockets[0].getsockname()[1])
    await stop
    server.close()


def _loop_factory(kind: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if kind == "netpoll":
        import netpoll

        return netpoll.new_event_loop
    if kind == "netpoll-poll":
        import netpoll

        return functools.partial(netpoll.Loop, poller="poll")
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    if kind == "asyncio":
        return asyncio.SelectorEventLoop
    raise SystemExit(f"unknown loop {kind!r}")


# ------------------------------------------------------------------ the raw epoll floor


class _Stop(Exception):
    """Raised by the SIGTERM handler to leave the raw loop."""


class _RawConn:
    __slots__ = ("out", "parser", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.out: list[bytes] = []  # responses owed for the current readiness batch
        self.parser = httptools.HttpRequestParser(self)

    def __repr__(self) -> str:
        return f"<_RawConn fd={self.sock.fileno()} owed={len(self.out)}>"

    def on_message_complete(self) -> None:
        self.out.append(RESPONSE)


def _raw_epoll(port: int, stats_path: str | None) -> None:
    counts = {"polls": 0, "events": 0, "reads": 0, "writes": 0, "iovecs": 0}
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", port))
    ls.listen(BACKLOG)
    ls.setblocking(False)
    ep = select.epoll()
    ep.register(ls.fileno(), select.EPOLLIN)
    conns: dict[int, _RawConn] = {}
    buf = bytearray(1 << 16)
    view = memoryview(buf)
    signal.signal(signal.SIGUSR1, lambda *_: _dump(stats_path, dict(counts)))

    def on_term(*_: Any) -> None:
        _dump(stats_path, dict(counts))
        raise _Stop  # interrupts epoll.poll (PEP 475 would otherwise retry it)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    _announce(ls.getsockname()[1])
    lfd = ls.fileno()
    try:
        while True:
            ready = ep.poll()
            counts["polls"] += 1
            counts["events"] += len(ready)
            for fd, _ in ready:
                if fd == lfd:
                    while True:
                        try:
                            s, _addr = ls.accept()
                        except (BlockingIOError, ConnectionAbortedError):
                            break
                        s.setblocking(False)
                        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                        conns[s.fileno()] = _RawConn(s)
                        ep.register(s.fileno(), select.EPOLLIN)
                    continue
                c = conns[fd]
                try:
                    n = c.sock.recv_into(buf)
                except BlockingIOError:
                    continue
                except OSError:
                    n = 0
                counts["reads"] += 1
                if n == 0:
                    ep.unregister(fd)
                    c.sock.close()
                    del conns[fd]
                    continue
                try:
                    c.parser.feed_data(view[:n])
                except httptools.HttpParserError:
                    ep.unregister(fd)
                    c.sock.close()
                    del conns[fd]
                    continue
                if c.out:
                    try:
                        c.sock.sendmsg(c.out)  # responses are tiny: the kernel takes them whole
                    except OSError:
                        pass
                    counts["writes"] += 1
                    counts["iovecs"] += len(c.out)
                    c.out.clear()
    except _Stop:  # SIGTERM, wherever it landed
        pass
    for c in conns.values():
        c.sock.close()
    ep.close()
    ls.close()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("loop", choices=["netpoll", "netpoll-poll", "uvloop", "asyncio", "raw-epoll"])
    ap.add_argument("port", type=int, nargs="?", default=0)
    ap.add_argument("--stats", help="append stats JSON lines here on SIGUSR1/SIGTERM")
    a = ap.parse_args(argv)
    if a.loop == "raw-epoll":
        _raw_epoll(a.port, a.stats)
        return
    with asyncio.Runner(loop_factory=_loop_factory(a.loop)) as runner:
        runner.run(_serve(a.port, a.stats))


if __name__ == "__main__":
    main()
