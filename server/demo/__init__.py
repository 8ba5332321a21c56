"""The built-in demo app served by ``python -m server`` with no MODULE.

A handful of routes that show the framework and double as benchmark targets:
``/`` (HTML index), ``/plaintext``, ``/json``, ``/users/{id:int}``, ``POST /echo`` (body echoed
back with its Content-Type), ``/stream`` (a chunked response) and ``/static/`` (the files next to
this module, mounted by the CLI).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

from server.app import App, HTTPException
from server.request import Request
from server.response import HTMLResponse, Response, StreamingResponse

STATIC_DIR = os.path.join(os.path.dirname(__file__), "static")

app = App()

_INDEX = """<!doctype html>
<html><head><meta charset="utf-8"><title>netpoll demo</title></head>
<body><h1>netpoll demo</h1><ul>
<li><a href="/plaintext">/plaintext</a></li>
<li><a href="/json">/json</a></li>
<li><a href="/users/42">/users/42</a></li>
<li><a href="/stream">/stream</a></li>
<li><a href="/static/index.html">/static/</a></li>
<li>POST /echo echoes its body</li>
</ul></body></html>
"""


@app.get("/")
async def index(request: Request) -> Response:
    return HTMLResponse(_INDEX)


@app.get("/plaintext")
async def plaintext(request: Request) -> str:
    return "Hello, World!"


@app.get("/json")
async def json_(request: Request) -> dict[str, str]:
    return {"message": "Hello, World!"}


@app.get("/users/{id:int}")
async def user(request: Request) -> dict[str, object]:
    uid = request.path_params["id"]
    if uid <= 0:
        raise HTTPException(404, "No such user")
    return {"id": uid, "name": f"user{uid}"}


@app.post("/echo")
async def echo(request: Request) -> Response:
    body = await request.body()
    ctype = request.headers.get("content-type") or "application/octet-stream"
    return Response(body, content_type=ctype)


@app.get("/stream")
async def stream(request: Request) -> Response:
    count = min(int(request.query.get("n") or "5"), 1000)

    async def lines() -> AsyncIterator[bytes]:
        for i in range(count):
            yield f"line {i}\n".encode()

    return StreamingResponse(lines(), content_type="text/plain; charset=utf-8")
