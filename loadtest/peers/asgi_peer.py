"""uvicorn's peer: raw ASGI for /plaintext and /json, Starlette ``StaticFiles`` for /static.

The dynamic routes skip Starlette entirely (as ``loadtest.apps.asgi_app`` does), so the plaintext
and JSON figures measure uvicorn; /static measures what a uvicorn user would typically deploy.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

from loadtest.apps import asgi_app as _hello

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def _static_app() -> Any:
    from starlette.staticfiles import StaticFiles

    from loadtest.mixed_app import ensure_static_dir

    return StaticFiles(directory=ensure_static_dir(os.environ.get("BENCH_STATIC_DIR")))


_files = _static_app()


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "http" and scope["path"].startswith("/static/"):
        scope = {**scope, "root_path": "/static", "path": scope["path"][len("/static") :]}
        await _files(scope, receive, send)
        return
    await _hello(scope, receive, send)
