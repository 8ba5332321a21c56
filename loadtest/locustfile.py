"""Locust scenarios against ``loadtest.mixed_app`` (run them through ``python -m loadtest run``).

Theory of operation. One :class:`~locust.FastHttpUser` class per scenario; every task of a class
carries the scenario's tag, so a scenario runs alone either by class name
(``locust -f loadtest/locustfile.py MixedUser``, what the runner does) or by tag
(``locust -f loadtest/locustfile.py --tags mixed``). :data:`SCENARIOS` maps the scenario names
the runner accepts to the classes.

=============  =================================================================================
scenario       what each user does
=============  =================================================================================
plaintext      ``GET /plaintext`` over one keep-alive connection, as fast as it can
json           ``GET /json``
static-small   ``GET /static/10k.bin`` (checks the length)
static-large   ``GET /static/1m.bin`` (checks the length)
mixed          API traffic: path params, query strings, JSON POST bodies, expected 404s,
               a few static files; small think time between requests
keepalive      ``GET /plaintext`` + ``/json`` on one kept-alive connection, with think time
newconn        the same with ``Connection: close``: a new TCP connection per request
slow           raw-socket clients that trickle the request head and read the 1 MiB body in
               small slices (stays well inside the server's header and send timeouts)
=============  =================================================================================

Every response is checked (status and, where cheap, body) with ``catch_response``, so a wrong
answer counts as a failure; the runner exits non-zero on any failure. A 404 the scenario asked
for is a success. Think time, the slow clients' pacing and the sizes are module constants.
"""

from __future__ import annotations

import json
import random
import socket
import time
from typing import Any
from urllib.parse import urlsplit

from locust import FastHttpUser, between, constant, events, tag, task
from locust.env import Environment
from locust.runners import WorkerRunner

SMALL_FILE = "/static/10k.bin"
SMALL_SIZE = 10 * 1024
LARGE_FILE = "/static/1m.bin"
LARGE_SIZE = 1024 * 1024
HELLO = b"Hello, World!"
WORDS = ("alpha", "beta", "gamma", "delta", "kappa", "omega", "netpoll", "epoll")

# Slow client pacing: the head goes out in SLOW_HEAD_PIECES pieces SLOW_HEAD_PAUSE apart, the
# body is read SLOW_READ_SIZE bytes at a time with SLOW_READ_PAUSE between reads.
SLOW_HEAD_PIECES = 4
SLOW_HEAD_PAUSE = 0.05
SLOW_READ_SIZE = 64 * 1024
SLOW_READ_PAUSE = 0.01
SLOW_TIMEOUT = 20.0


def _expect(resp: Any, status: int, body: bytes | None = None, size: int | None = None) -> None:
    """Mark ``resp`` (a catch_response context) failed unless it matches."""
    if resp.status_code != status:
        resp.failure(f"status {resp.status_code}, expected {status}")
    elif body is not None and resp.content != body:
        resp.failure(f"unexpected body {resp.content[:60]!r}")
    elif size is not None and len(resp.content or b"") != size:
        resp.failure(f"body of {len(resp.content or b'')} bytes, expected {size}")
    else:
        resp.success()


class PlaintextUser(FastHttpUser):
    """Keep-alive hello world, no think time."""

    wait_time = constant(0)

    @tag("plaintext")
    @task
    def plaintext(self) -> None:
        with self.client.get("/plaintext", catch_response=True) as resp:
            _expect(resp, 200, HELLO)


class JsonUser(FastHttpUser):
    wait_time = constant(0)

    @tag("json")
    @task
    def json(self) -> None:
        with self.client.get("/json", catch_response=True) as resp:
            _expect(resp, 200, b'{"message":"Hello, World!"}')


class StaticSmallUser(FastHttpUser):
    wait_time = constant(0)

    @tag("static-small", "static")
    @task
    def small_file(self) -> None:
        with self.client.get(SMALL_FILE, catch_response=True) as resp:
            _expect(resp, 200, size=SMALL_SIZE)


class StaticLargeUser(FastHttpUser):
    wait_time = constant(0)

    @tag("static-large", "static")
    @task
    def large_file(self) -> None:
        with self.client.get(LARGE_FILE, catch_response=True) as resp:
            _expect(resp, 200, size=LARGE_SIZE)


class MixedUser(FastHttpUser):
    """An API client: mostly reads with parameters, some writes, some misses."""

    wait_time = between(0.01, 0.1)

    @tag("mixed")
    @task(6)
    def get_user(self) -> None:
        user_id = random.randint(1, 10_000)
        with self.client.get(
            f"/api/users/{user_id}", name="/api/users/[id]", catch_response=True
        ) as resp:
            if resp.status_code == 200 and resp.json().get("id") != user_id:
                resp.failure("wrong user")
            else:
                _expect(resp, 200)

    @tag("mixed")
    @task(4)
    def search(self) -> None:
        q = random.choice(WORDS)
        limit = random.randint(0, 20)
        with self.client.get(
            "/api/search",
            params={"q": q, "limit": str(limit)},
            name="/api/search?q=[q]&limit=[n]",
            catch_response=True,
        ) as resp:
            if resp.status_code == 200 and len(resp.json().get("results", ())) != limit:
                resp.failure("wrong result count")
            else:
                _expect(resp, 200)

    @tag("mixed")
    @task(3)
    def create_item(self) -> None:
        item = {"name": random.choice(WORDS), "qty": random.randint(1, 99), "tags": ["a", "b"]}
        with self.client.post(
            "/api/items", json=item, name="/api/items", catch_response=True
        ) as resp:
            if resp.status_code == 201 and resp.json().get("item") != item:
                resp.failure("item not echoed")
            else:
                _expect(resp, 201)

    @tag("mixed")
    @task(1)
    def bad_json(self) -> None:
        with self.client.post(
            "/api/items",
            data=b"{not json",
            headers={"content-type": "application/json"},
            name="/api/items (bad json)",
            catch_response=True,
        ) as resp:
            _expect(resp, 400)

    @tag("mixed")
    @task(2)
    def not_found(self) -> None:
        path = random.choice(("/api/users/99999", "/no/such/page", "/static/missing.txt"))
        with self.client.get(path, name="404", catch_response=True) as resp:
            _expect(resp, 404)

    @tag("mixed")
    @task(2)
    def hello(self) -> None:
        with self.client.get("/json", catch_response=True) as resp:
            _expect(resp, 200)

    @tag("mixed")
    @task(1)
    def static_small(self) -> None:
        with self.client.get("/static/small.txt", catch_response=True) as resp:
            _expect(resp, 200, size=1024)


class KeepAliveUser(FastHttpUser):
    """One connection per user, reused for every request."""

    wait_time = between(0.005, 0.02)

    @tag("keepalive")
    @task
    def hello(self) -> None:
        with self.client.get("/plaintext", catch_response=True) as resp:
            _expect(resp, 200, HELLO)
        with self.client.get("/json", catch_response=True) as resp:
            _expect(resp, 200)


class NewConnectionUser(FastHttpUser):
    """``Connection: close`` on every request: the server closes, the next one reconnects."""

    wait_time = between(0.005, 0.02)

    @tag("newconn")
    @task
    def hello(self) -> None:
        close = {"connection": "close"}
        with self.client.get("/plaintext", headers=close, catch_response=True) as resp:
            _expect(resp, 200, HELLO)
        with self.client.get("/json", headers=close, catch_response=True) as resp:
            _expect(resp, 200)


class SlowClientUser(FastHttpUser):
    """A client on a bad link: trickles its request head, reads the response in small slices.

    It uses a plain socket (gevent-patched by locust) and reports each exchange through the
    ``request`` event, so it shows up in the stats like any other request.
    """

    wait_time = between(0.05, 0.2)

    @tag("slow")
    @task
    def slow_download(self) -> None:
        parts = urlsplit(self.host)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        head = f"GET {LARGE_FILE} HTTP/1.1\r\nHost: {parts.netloc}\r\nUser-Agent: slow\r\n\r\n"
        start = time.perf_counter()
        exc: Exception | None = None
        size = 0
        try:
            size = _slow_exchange(host, port, head.encode())
        except Exception as e:
            exc = e
        self.environment.events.request.fire(
            request_type="SLOW",
            name=LARGE_FILE,
            response_time=(time.perf_counter() - start) * 1000.0,
            response_length=size,
            exception=exc,
            context={},
        )


def _slow_exchange(host: str, port: int, head: bytes) -> int:
    """Trickle ``head`` to host:port, read the whole response slowly; returns the body size."""
    with socket.create_connection((host, port), timeout=SLOW_TIMEOUT) as sock:
        step = max(1, len(head) // SLOW_HEAD_PIECES)
        for i in range(0, len(head), step):
            sock.sendall(head[i : i + step])
            time.sleep(SLOW_HEAD_PAUSE)
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(SLOW_READ_SIZE)
            if not chunk:
                raise ConnectionError("connection closed before the response head")
            buf += chunk
        raw_head, _, body = buf.partition(b"\r\n\r\n")
        status_line, *lines = raw_head.decode("latin-1").split("\r\n")
        if status_line.split()[1] != "200":
            raise ValueError(f"unexpected status line {status_line!r}")
        length = next(
            (
                int(v)
                for k, _, v in (x.partition(":") for x in lines)
                if k.lower() == "content-length"
            ),
            None,
        )
        if length is None:
            raise ValueError("no Content-Length")
        received = len(body)
        while received < length:
            time.sleep(SLOW_READ_PAUSE)
            chunk = sock.recv(SLOW_READ_SIZE)
            if not chunk:
                raise ConnectionError(f"closed after {received} of {length} body bytes")
            received += len(chunk)
        if received != length:
            raise ValueError(f"read {received} bytes, expected {length}")
        return length


#: scenario name -> the user class that runs it (the runner passes the class name to locust).
SCENARIOS: dict[str, type[FastHttpUser]] = {
    "plaintext": PlaintextUser,
    "json": JsonUser,
    "static-small": StaticSmallUser,
    "static-large": StaticLargeUser,
    "mixed": MixedUser,
    "keepalive": KeepAliveUser,
    "newconn": NewConnectionUser,
    "slow": SlowClientUser,
}

__all__ = ["SCENARIOS", *(cls.__name__ for cls in SCENARIOS.values())]


# --- the run's final totals, for the runner's verdict ---
_env: list[Environment] = []


@events.init.add_listener
def _remember(environment: Environment, **_: Any) -> None:
    _env[:] = [environment]


@events.quit.add_listener
def _write_totals(exit_code: int, **_: Any) -> None:
    """Write ``PREFIX_totals.json`` (with ``--csv PREFIX``) from the final stats: locust writes
    its stats CSV once a second, so the CSV's last write can miss the last second's requests
    and those of the stop timeout, which locust's own final table counts."""
    if not _env:
        return
    env = _env[0]
    prefix = getattr(env.parsed_options, "csv_prefix", None)
    if not prefix or env.runner is None or isinstance(env.runner, WorkerRunner):
        return
    total = env.runner.stats.total
    with open(f"{prefix}_totals.json", "w") as f:
        json.dump(
            {
                "requests": total.num_requests,
                "failures": total.num_failures,
                "rps": total.total_rps,
            },
            f,
        )
