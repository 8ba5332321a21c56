"""The app the worker/supervisor tests serve, written into a test's tmp dir as a module.

:func:`write_app` writes ``<dir>/<name>.py`` with ``VERSION`` baked in; every body ends with
the worker's pid so a test can tell the workers apart. ``/slow/{ms}`` logs ``slow-start PID``
on stderr before sleeping (a synchronisation point), ``/block`` blocks the whole loop (for the
heartbeat test), ``/spin/{ms}`` blocks it for ``ms`` (so the other worker must accept), ``/crash`` exits the worker at once. ``extra`` is appended verbatim (startup
hooks for the crash-loop and boot-error tests).
"""

from __future__ import annotations

from pathlib import Path

TEMPLATE = """\
import asyncio, os, sys, time
from server import App

VERSION = {version!r}
app = App()


@app.get("/")
async def index(request):
    return VERSION + " " + str(os.getpid())


@app.get("/slow/{{ms}}")
async def slow(request):
    os.write(2, b"slow-start %d\\n" % os.getpid())  # one write: lines never interleave
    await asyncio.sleep(int(request.path_params["ms"]) / 1000)
    return "slow " + str(os.getpid())


@app.get("/block")
async def block(request):
    time.sleep(60)
    return "unblocked " + str(os.getpid())


@app.get("/spin/{{ms}}")
async def spin(request):
    time.sleep(int(request.path_params["ms"]) / 1000)  # holds this worker's loop
    return "spun " + str(os.getpid())


@app.get("/crash")
async def crash(request):
    os._exit(9)
"""


def write_app(directory: Path, version: str = "v1", name: str = "wapp", extra: str = "") -> str:
    """Write the module; returns the ``MODULE:ATTR`` target."""
    (directory / f"{name}.py").write_text(TEMPLATE.format(version=version) + extra)
    return f"{name}:app"
