"""Client address and scheme from a trusted proxy (X-Forwarded-For / X-Forwarded-Proto):
the rules in server/forwarded.py, the parser applying them (also to heads from its cache),
and end to end over real sockets for the native framework and ASGI (the tests' own peer,
127.0.0.1, is the default trusted proxy, as with uvicorn)."""

from __future__ import annotations

import http.client
import json
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request as SRequest
from starlette.responses import JSONResponse
from starlette.routing import Route

from server import App, Request
from server.config import Config
from server.exchange import RequestHead
from server.forwarded import Trusted, forwarded, trusted
from server.http11 import RequestParser
from server.testing import live_server


def test_trusted_addresses_networks_and_any() -> None:
    t = Trusted("127.0.0.1, 10.0.0.0/8 ,::1")
    assert "127.0.0.1" in t and "10.2.3.4" in t and "::1" in t
    assert "11.0.0.1" not in t and "not-an-ip" not in t
    assert "203.0.113.9" in Trusted("*")
    assert "127.0.0.1" not in Trusted("")
    with pytest.raises(ValueError, match="not an address"):
        Trusted("127.0.0.1,proxy.local")
    assert trusted("127.0.0.1") is trusted("127.0.0.1")


@pytest.mark.parametrize(
    ("xff", "proto", "client", "scheme"),
    [
        (b"203.0.113.9", None, ("203.0.113.9", 0), "http"),
        # the rightmost address that is not a trusted proxy is the client
        (b"198.51.100.1, 203.0.113.9, 10.0.0.2", b"https", ("203.0.113.9", 0), "https"),
        (b"10.0.0.3, 10.0.0.2", None, ("10.0.0.3", 0), "http"),  # all trusted: the leftmost
        (None, b"https", ("127.0.0.1", 5), "https"),
        (None, b"http, HTTPS", ("127.0.0.1", 5), "https"),  # the last proxy's word
        (None, b"gopher", ("127.0.0.1", 5), "http"),  # not a scheme we serve: ignored
        (b" , ", None, ("127.0.0.1", 5), "http"),
    ],
)
def test_forwarded_rules(
    xff: bytes | None, proto: bytes | None, client: tuple[str, int], scheme: str
) -> None:
    trust = Trusted("127.0.0.1,10.0.0.0/8")
    assert forwarded((xff, proto), ("127.0.0.1", 5), "http", trust) == (client, scheme)


def _head(config: Config, peer: str, extra: bytes) -> RequestHead:
    p = RequestParser(config)
    p.reset(client=(peer, 5), server=("127.0.0.1", 80))
    p.feed(b"GET / HTTP/1.1\r\nHost: h\r\n" + extra + b"\r\n")
    head = p.events[0]
    assert isinstance(head, RequestHead)
    return head


def test_parser_takes_them_from_a_trusted_peer_only() -> None:
    fwd = b"X-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Proto: https\r\n"
    for _ in range(2):  # the second time from the head cache
        head = _head(Config(), "127.0.0.1", fwd)
        assert (head.client, head.scheme) == (("203.0.113.9", 0), "https")
        head = _head(Config(), "192.0.2.7", fwd)  # not a trusted proxy: its own address
        assert (head.client, head.scheme) == (("192.0.2.7", 5), "http")
        head = _head(Config(proxy_headers=False), "127.0.0.1", fwd)
        assert (head.client, head.scheme) == (("127.0.0.1", 5), "http")
        head = _head(Config(forwarded_allow_ips="192.0.2.0/24"), "192.0.2.7", fwd)
        assert (head.client, head.scheme) == (("203.0.113.9", 0), "https")
        head = _head(Config(), "127.0.0.1", b"")  # no such headers: the peer
        assert (head.client, head.scheme) == (("127.0.0.1", 5), "http")


def _get(port: int, headers: dict[str, str]) -> Any:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", "/who", headers=headers)
    r = c.getresponse()
    body = r.read()
    c.close()
    return json.loads(body)


async def test_e2e_native_and_asgi_see_the_proxys_client() -> None:
    import asyncio

    app = App()

    @app.get("/who")
    async def who(request: Request) -> dict[str, Any]:
        return {"client": list(request.client or ()), "url": request.url}

    async def swho(request: SRequest) -> JSONResponse:
        assert request.client is not None
        return JSONResponse({"client": list(request.client), "url": str(request.url)})

    sapp = Starlette(routes=[Route("/who", swho)])
    headers = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https", "Host": "ex.test"}
    for target in (app, sapp):
        async with live_server(target) as url:
            port = int(url.rsplit(":", 1)[1])
            got = await asyncio.to_thread(_get, port, headers)
            assert got == {"client": ["203.0.113.9", 0], "url": "https://ex.test/who"}
        async with live_server(target, forwarded_allow_ips="192.0.2.1") as url:
            port = int(url.rsplit(":", 1)[1])
            got = await asyncio.to_thread(_get, port, headers)
            assert got["client"][0] == "127.0.0.1" and got["url"] == "http://ex.test/who"
