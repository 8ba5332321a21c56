"""A tiny server for the EMFILE test, run as a subprocess with a low RLIMIT_NOFILE.

usage: python -m helpers.emfile_server LOOP HEADROOM    (LOOP: netpoll | netpoll-poll | uvloop | asyncio)

It listens on 127.0.0.1:0 and greets each connection with ``hi\\n`` (closing it on EOF), then
lowers its soft fd limit to (fds open now + HEADROOM) and prints ``{"port": N, "limit": L}``.
Commands on stdin, one per line: ``stats`` prints ``{"stats": ...}`` (netpoll's counters, else
null), ``quit`` stops. Every reply is one JSON line on stdout.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
from typing import Any

from helpers import loop_factories


class Greeter(asyncio.Protocol):
    def connection_made(self, transport: Any) -> None:
        transport.write(b"hi\n")

    def eof_received(self) -> bool | None:
        return None  # close


def say(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def main(headroom: int) -> None:
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, _ctx: None)  # EMFILE reports are expected here
    server = await loop.create_server(Greeter, "127.0.0.1", 0, backlog=512)
    done = loop.create_future()

    def on_stdin() -> None:
        line = sys.stdin.readline().strip()
        if line == "stats":
            stats = loop.stats() if hasattr(loop, "stats") else None
            say({"stats": stats})
        elif line in ("quit", "") and not done.done():
            done.set_result(None)

    loop.add_reader(sys.stdin.fileno(), on_stdin)
    limit = len(os.listdir("/proc/self/fd")) + headroom
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    say({"port": server.sockets[0].getsockname()[1], "limit": limit})
    await done
    loop.remove_reader(sys.stdin.fileno())
    server.close()


if __name__ == "__main__":
    factory = loop_factories()[sys.argv[1]]
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main(int(sys.argv[2])))
