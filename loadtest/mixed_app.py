"""The load-test target: a native :class:`server.App` with every route the locust scenarios use.

Theory of operation. ``python -m server loadtest.mixed_app:app`` serves:

=====================================  =============================================================
route                                  answer
=====================================  =============================================================
``GET /plaintext``, ``GET /json``      the TechEmpower-style hello world (as ``loadtest.apps``)
``GET /api/users/{id:int}``            a user object; ids above :data:`MAX_USER_ID` are 404
``GET /api/search?q=..&limit=..``      a list of ``limit`` (default 10, at most 100) results
``POST /api/items``                    201 with the parsed JSON body echoed back; bad JSON is 400
``GET /static/<name>``                 files of :func:`ensure_static_dir` (see ``STATIC_FILES``)
``GET /__stats``                       ``{"pid": ..., "requests": ...}`` for *this* process
=====================================  =============================================================

The static directory is generated, not shipped: ``$LOADTEST_STATIC_DIR`` if set, else a fixed
directory under the system temp dir. Contents are deterministic and written atomically (temp
file + rename), so several server processes, the bench and the locust users may all call
:func:`ensure_static_dir` at once and agree on every byte.

``/__stats`` counts every request this process answered (a middleware, so static files and 404s
count too); the scale-out check reads it from each server process to prove that the balancer
spread the load. The middleware takes the App off its no-middleware fast path, which is fine
here: this app measures behaviour under a mixed workload, ``loadtest.apps`` measures speed.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from server import App, HTTPException, JSONResponse, Request, Response

#: name -> size in bytes of the generated static files.
STATIC_FILES: dict[str, int] = {
    "small.txt": 1024,
    "10k.bin": 10 * 1024,
    "1m.bin": 1024 * 1024,
}
MAX_USER_ID = 10_000
MAX_LIMIT = 100


def file_bytes(name: str, size: int) -> bytes:
    """The deterministic content of static file ``name`` (clients may check it)."""
    seed = (name.encode() + b"|0123456789abcdefghijklmnopqrstuvwxyz\n") * 4
    return (seed * (size // len(seed) + 1))[:size]


def ensure_static_dir(directory: str | None = None) -> str:
    """Create (or complete) the static directory and return its absolute path."""
    root = (
        directory
        or os.environ.get("LOADTEST_STATIC_DIR")
        or os.path.join(tempfile.gettempdir(), f"netpoll-loadtest-static-{os.getuid()}")
    )
    os.makedirs(root, exist_ok=True)
    for name, size in STATIC_FILES.items():
        path = os.path.join(root, name)
        try:
            if os.path.getsize(path) == size:
                continue
        except OSError:
            pass
        fd, tmp = tempfile.mkstemp(dir=root, prefix=f".{name}.")
        with os.fdopen(fd, "wb") as f:
            f.write(file_bytes(name, size))
        os.chmod(tmp, 0o644)  # readable by servers that drop privileges (nginx workers)
        os.replace(tmp, path)
    return os.path.abspath(root)


class RequestCounter:
    """Middleware counting the requests this process handled (read by ``GET /__stats``)."""

    def __init__(self) -> None:
        self.count = 0  # requests that reached the app in this process, including /__stats

    async def __call__(self, request: Request, call_next: Any) -> Response:
        self.count += 1
        return await call_next(request)

    def __repr__(self) -> str:
        return f"<RequestCounter pid={os.getpid()} count={self.count}>"


STATIC_DIR = ensure_static_dir()
counter = RequestCounter()
app = App()
app.add_middleware(counter)
app.static("/static", STATIC_DIR)


@app.get("/plaintext")
async def plaintext(request: Request) -> str:
    return "Hello, World!"


@app.get("/json")
async def json_(request: Request) -> dict[str, str]:
    return {"message": "Hello, World!"}


@app.get("/api/users/{user_id:int}")
async def get_user(request: Request) -> dict[str, Any]:
    user_id: int = request.path_params["user_id"]
    if user_id > MAX_USER_ID:
        raise HTTPException(404, f"no user {user_id}")
    return {"id": user_id, "name": f"user-{user_id}", "email": f"user{user_id}@example.test"}


@app.get("/api/search")
async def search(request: Request) -> dict[str, Any]:
    q = request.query.get("q", "")
    try:
        limit = int(request.query.get("limit", "10") or "10")
    except ValueError:
        raise HTTPException(400, "limit must be an integer")
    limit = max(0, min(limit, MAX_LIMIT))
    return {"q": q, "results": [{"rank": i, "title": f"{q} #{i}"} for i in range(limit)]}


@app.post("/api/items")
async def create_item(request: Request) -> Response:
    item = await request.json()
    if not isinstance(item, dict):
        raise HTTPException(400, "expected a JSON object")
    return JSONResponse({"id": counter.count, "item": item}, status=201)


@app.get("/__stats")
async def stats(request: Request) -> dict[str, int]:
    return {"pid": os.getpid(), "requests": counter.count}
