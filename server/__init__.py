"""netpoll's keep-alive HTTP/1.1 server and web framework.

Public API: :class:`App` (routing, middleware, hooks), :class:`Request`, the response classes
and :class:`Config`. ``server.asgi`` adapts ASGI apps, ``server.testing`` has the test client,
``python -m server`` is the command line.
"""

from server.app import App, HTTPException
from server.config import Config
from server.request import Request
from server.response import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)

__all__ = [
    "App",
    "Config",
    "FileResponse",
    "HTMLResponse",
    "HTTPException",
    "JSONResponse",
    "PlainTextResponse",
    "RedirectResponse",
    "Request",
    "Response",
    "StreamingResponse",
]
