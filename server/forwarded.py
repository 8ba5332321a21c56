"""The client's address and scheme as a trusted proxy in front reports them.

Behind a load balancer or reverse proxy, the peer of every connection is the proxy. A proxy
says who its client was in ``X-Forwarded-For`` (a list: each proxy appends the address it got
the request from) and how that client connected in ``X-Forwarded-Proto``. Anyone can send
those headers, so they count only when the peer is trusted: ``Config.forwarded_allow_ips``
(comma-separated addresses or networks, ``*`` for any; default ``127.0.0.1``), with
``Config.proxy_headers`` on (the default). uvicorn's ``--proxy-headers`` /
``--forwarded-allow-ips`` work the same way, with the same defaults.

The client is the rightmost ``X-Forwarded-For`` entry that is not itself a trusted proxy (the
leftmost if all are), with port 0; the scheme is ``http`` or ``https`` from the last
``X-Forwarded-Proto`` value. The parser applies this once per request
(:class:`server.http11.RequestParser`), so the native ``Request``, the ASGI scope, access logs
and metrics all see the same client.
"""

from __future__ import annotations

import functools
import ipaddress

__all__ = ["Trusted", "forwarded", "trusted"]

Forwarded = tuple[bytes | None, bytes | None]  # (X-Forwarded-For, X-Forwarded-Proto) values


class Trusted:
    """A set of trusted proxy addresses: exact addresses, networks, or ``*`` (any)."""

    def __init__(self, spec: str) -> None:
        items = [item.strip() for item in spec.split(",") if item.strip()]
        self.any = "*" in items
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        hosts = set()
        for item in items:
            if item == "*":
                continue
            try:
                net = ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"forwarded_allow_ips: not an address or network: {item!r}")
            if net.num_addresses == 1:
                hosts.add(str(net.network_address))
            else:
                self.networks.append(net)
        self.hosts: frozenset[str] = frozenset(hosts)

    def __contains__(self, host: str) -> bool:
        if self.any or host in self.hosts:
            return True
        if not self.networks:
            return False
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(addr in net for net in self.networks)

    def __repr__(self) -> str:
        return f"<Trusted any={self.any} hosts={sorted(self.hosts)} networks={self.networks}>"


@functools.cache
def trusted(spec: str) -> Trusted:
    """The :class:`Trusted` set of a ``forwarded_allow_ips`` value (parsed once per value)."""
    return Trusted(spec)


def forwarded(
    values: Forwarded,
    client: tuple[str, int],
    scheme: str,
    trust: Trusted,
) -> tuple[tuple[str, int], str]:
    """``(client, scheme)`` for a request from the trusted proxy ``client`` carrying ``values``."""
    xff, proto = values
    if xff:
        hosts = [h.strip() for h in xff.decode("latin-1").split(",")]
        hosts = [h for h in hosts if h]
        if hosts:
            host = hosts[0]
            for candidate in reversed(hosts):
                if candidate not in trust:
                    host = candidate
                    break
            client = (host, 0)
    if proto:
        last = proto.decode("latin-1").rsplit(",", 1)[-1].strip().lower()
        if last in ("http", "https"):
            scheme = last
    return client, scheme
