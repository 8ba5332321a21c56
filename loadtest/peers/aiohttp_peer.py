"""aiohttp's peer: ``python -m loadtest.peers.aiohttp_peer --fd N [--static DIR]``.

aiohttp.web with two handlers and ``add_static`` (sendfile), on an inherited listening socket,
on uvloop when it is installed (as aiohttp deployments usually run).
"""

from __future__ import annotations

import argparse
import asyncio
import socket

from aiohttp import web

from loadtest.mixed_app import ensure_static_dir


async def plaintext(request: web.Request) -> web.Response:
    return web.Response(text="Hello, World!")


async def json_(request: web.Request) -> web.Response:
    return web.Response(body=b'{"message":"Hello, World!"}', content_type="application/json")


def make_app(static: str) -> web.Application:
    app = web.Application()
    app.router.add_get("/plaintext", plaintext)
    app.router.add_get("/json", json_)
    app.router.add_static("/static", static)
    return app


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--fd", type=int, required=True)
    p.add_argument("--static")
    a = p.parse_args()
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    sock = socket.socket(fileno=a.fd)
    web.run_app(make_app(ensure_static_dir(a.static)), sock=sock, access_log=None, print=None)


if __name__ == "__main__":
    main()
