"""Peer servers for ``python -m loadtest bench``: our own small copies, one per framework.

Each serves the same three things as ``loadtest.apps`` plus static files: ``GET /plaintext``
(``Hello, World!``), ``GET /json`` (``{"message":"Hello, World!"}``) and ``/static/<file>``
from the directory in ``$BENCH_STATIC_DIR`` (default: :func:`loadtest.mixed_app.ensure_static_dir`).

* ``asgi_peer`` - raw ASGI for the two dynamic routes, Starlette ``StaticFiles`` for /static
  (run by uvicorn).
* ``rsgi_peer`` - granian's RSGI interface (granian serves /static itself).
* ``aiohttp_peer`` - aiohttp.web on an inherited listening socket.
* ``gosrv/main.go`` - Go net/http (``go build``; run with GOMAXPROCS=1).
* ``nginx.conf`` - nginx template (``@PORT@``, ``@STATIC@``, ``@TMP@`` are filled in).
"""
