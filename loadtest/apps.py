"""Benchmark target apps: the same two endpoints natively and as a bare ASGI callable.

``app`` is a native :class:`server.App`; ``asgi_app`` is a plain ASGI 3 callable with no
framework (what uvicorn would run). Both answer ``GET /plaintext`` with ``Hello, World!``
(text/plain) and ``GET /json`` with ``{"message":"Hello, World!"}`` (application/json), so
``python -m server loadtest.apps:app`` and ``python -m server loadtest.apps:asgi_app`` (or
``uvicorn loadtest.apps:asgi_app``) can be compared side by side.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from server import App, Request

app = App()


@app.get("/plaintext")
async def plaintext(request: Request) -> str:
    return "Hello, World!"


@app.get("/json")
async def json_(request: Request) -> dict[str, str]:
    return {"message": "Hello, World!"}


_PLAIN_START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"text/plain; charset=utf-8")],
}
_PLAIN_BODY = {"type": "http.response.body", "body": b"Hello, World!"}
_JSON_START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"application/json")],
}
_JSON_BODY = {"type": "http.response.body", "body": b'{"message":"Hello, World!"}'}
_404_START = {
    "type": "http.response.start",
    "status": 404,
    "headers": [(b"content-type", b"text/plain; charset=utf-8")],
}
_404_BODY = {"type": "http.response.body", "body": b"Not Found"}


async def asgi_app(
    scope: dict[str, Any],
    receive: Callable[[], Awaitable[dict[str, Any]]],
    send: Callable[[dict[str, Any]], Awaitable[None]],
) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/plaintext":
        await send(_PLAIN_START)
        await send(_PLAIN_BODY)
    elif path == "/json":
        await send(_JSON_START)
        await send(_JSON_BODY)
    else:
        await send(_404_START)
        await send(_404_BODY)
