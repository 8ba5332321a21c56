"""granian's peer (RSGI interface): /plaintext and /json; granian serves /static itself
(``--static-path-route /static --static-path-mount DIR``)."""

from __future__ import annotations

from typing import Any

_PLAIN = [("content-type", "text/plain; charset=utf-8")]
_JSON = [("content-type", "application/json")]


async def app(scope: Any, proto: Any) -> None:
    path = scope.path
    if path == "/plaintext":
        proto.response_bytes(200, _PLAIN, b"Hello, World!")
    elif path == "/json":
        proto.response_bytes(200, _JSON, b'{"message":"Hello, World!"}')
    else:
        proto.response_bytes(404, _PLAIN, b"Not Found")
