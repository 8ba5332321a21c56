"""Metrics and health: the exposition format, counts, draining, aggregation across workers.

In-process tests serve an instrumented handler with ``serve()`` on every loop over real
sockets; the cross-process ones run ``python -m server --workers 2 --metrics /metrics``. The
exposition is checked with a strict parser of the text format 0.0.4 written here (no
prometheus_client dependency).
"""

from __future__ import annotations

import asyncio
import http.client
import logging
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers.serverproc import ServerProc
from helpers.workerapp import write_app

from server.config import Config
from server.exchange import Exchange
from server.metrics import (
    ROW_WORDS,
    W_REQUESTS,
    W_STATUS,
    MetricsBoard,
    WorkerState,
)
from server.serve import instrumented, serve

CONFIG = Config(port=0, graceful_timeout=3.0, metrics_path="/metrics", health_path="/healthz")

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_HELP = re.compile(rf"^# HELP ({_NAME}) \S.*$")
_TYPE = re.compile(rf"^# TYPE ({_NAME}) (counter|gauge|histogram|summary|untyped)$")
_SAMPLE = re.compile(
    rf'^({_NAME})(\{{{_NAME}="[^"\\\n]*"(?:,{_NAME}="[^"\\\n]*")*\}})? '
    r"(-?[0-9.]+(?:e[+-]?[0-9]+)?|\+Inf|NaN)$"
)


def parse(text: str) -> dict[str, float]:
    """Strictly parse an exposition: ``{'name{labels}': value}``; AssertionError on any
    malformed line, a sample without a preceding TYPE, or a TYPE after its samples."""
    assert text.endswith("\n")
    types: dict[str, str] = {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if m := _HELP.match(line):
            continue
        if m := _TYPE.match(line):
            assert m.group(1) not in types, f"second TYPE for {m.group(1)}"
            types[m.group(1)] = m.group(2)
            continue
        m = _SAMPLE.match(line)
        assert m, f"malformed line {line!r}"
        name = m.group(1)
        family = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in types or (family in types and types[family] == "histogram"), line
        key = name + (m.group(2) or "")
        assert key not in out, f"duplicate sample {key}"
        out[key] = float(m.group(3))
    return out


def check_histogram(samples: dict[str, float], name: str) -> None:
    buckets = [(k, v) for k, v in samples.items() if k.startswith(name + "_bucket")]
    values = [v for _, v in buckets]
    assert values == sorted(values), "buckets must be cumulative"
    assert buckets[-1][0].endswith('le="+Inf"}')
    assert values[-1] == samples[name + "_count"]


async def app(ex: Exchange) -> None:
    if ex.head.path == "/boom":
        raise RuntimeError("handler failure")
    if ex.head.path == "/stream":
        ex.start(201, [])
        await ex.write(b"part")
        await ex.end()
        return
    if ex.head.path.startswith("/ok"):
        ex.respond(200, [], b"ok")
        return
    ex.respond(404, [], b"no")


async def _serving(state: WorkerState, stop: asyncio.Event, drain_grace: float = 0.0) -> Any:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[Any] = loop.create_future()
    handler = instrumented(app, CONFIG, state)
    task = asyncio.create_task(
        serve(
            handler,
            CONFIG,
            ready=ready.set_result,
            shutdown=stop,
            state=state,
            drain_grace=drain_grace,
        )
    )
    port = (await ready)[0][1]
    return task, port


async def test_counts_statuses_histogram_and_gauges(caplog: pytest.LogCaptureFixture) -> None:
    board = MetricsBoard(4)
    state = WorkerState(board, board.claim(os.getpid()))
    stop = asyncio.Event()
    task, port = await _serving(state, stop)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            for i in range(5):
                assert (await client.get(f"/ok/{i}")).status_code == 200
            for _ in range(3):
                assert (await client.get("/nope")).status_code == 404
            assert (await client.get("/boom")).status_code == 500
            assert (await client.get("/stream")).text == "part"
            # requests the connection refuses itself (the app never sees them) count too
            with caplog.at_level(logging.INFO, logger="server"):
                for raw in (b"GET / HTTP/1.1\r\n\r\n", b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n"):
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.write(raw)
                    assert (await reader.read()).startswith(b"HTTP/1.1 400 ")
                    writer.close()
            said = [r.getMessage() for r in caplog.records if "refused a request" in r.getMessage()]
            assert len(said) == 2 and all(
                m.startswith("refused a request from 127.0.0.1:") for m in said
            )
            assert ": 400 missing Host header" in said[0] and ": 400 " in said[1], said
            r = await client.get("/metrics")
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
            samples = parse(r.text)
    finally:
        stop.set()
        await task
    assert samples['http_requests_total{status="200"}'] == 5
    assert samples['http_requests_total{status="404"}'] == 3
    assert samples['http_requests_total{status="500"}'] == 1
    assert samples['http_requests_total{status="201"}'] == 1
    assert samples['http_requests_total{status="400"}'] == 2
    check_histogram(samples, "http_request_duration_seconds")
    assert samples["http_request_duration_seconds_count"] == 10
    assert samples["http_connections_open"] == 1  # the scraping connection
    assert samples['netpoll_pool_connections{state="in_use"}'] == 1
    loop = asyncio.get_running_loop()
    has_stats = callable(getattr(loop, "stats", None))
    assert ("netpoll_loop_accepts_total" in samples) == has_stats
    if has_stats:
        assert samples["netpoll_loop_accepts_total"] >= 1


async def test_health_ok_then_503_while_draining() -> None:
    state = WorkerState(None, 0)
    stop = asyncio.Event()
    task, port = await _serving(state, stop, drain_grace=2.0)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and await reader.readexactly(3) == b"ok\n"
        stop.set()
        while not state.draining:  # serve() marks draining as it stops accepting
            await asyncio.sleep(0)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        rest = await asyncio.wait_for(reader.read(), 10)  # answered, then closed
        assert rest.startswith(b"HTTP/1.1 503") and rest.endswith(b"draining\n")
        assert b"connection: close" in rest.lower()
    finally:
        writer.close()
        stop.set()
        await task


async def test_draining_adds_connection_close_to_app_responses() -> None:
    state = WorkerState(None, 0)
    stop = asyncio.Event()
    task, port = await _serving(state, stop, drain_grace=2.0)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert b"connection: close" not in head.lower()
        await reader.readexactly(2)
        stop.set()
        while not state.draining:
            await asyncio.sleep(0)
        writer.write(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
        rest = await asyncio.wait_for(reader.read(), 10)
        assert rest.startswith(b"HTTP/1.1 200") and b"connection: close" in rest.lower()
    finally:
        writer.close()
        await task


def test_board_retire_folds_counters_into_row_zero() -> None:
    board = MetricsBoard(4)
    a, b = board.claim(11), board.claim(22)
    assert (a, b) == (1, 2) and "live=[1, 2]" in repr(board)
    board.words[a * ROW_WORDS + W_STATUS + 200] = 7
    board.words[a * ROW_WORDS + W_REQUESTS] = 7
    board.words[b * ROW_WORDS + W_STATUS + 200] = 3
    board.retire(a)
    assert board.total(W_STATUS + 200) == 10 and board.total(W_REQUESTS) == 7
    assert board.claim(33) == a  # the row is free again, and zeroed
    assert board.words[a * ROW_WORDS + W_STATUS + 200] == 0


# --- across processes ---


@pytest.fixture
def served(tmp_path: Path) -> Iterator[ServerProc]:
    p = ServerProc(
        [write_app(tmp_path), "--port", "0", "--workers", "2", "--metrics", "/metrics",
         "--health", "/health"],
        cwd=tmp_path,
    )  # fmt: skip
    try:
        yield p
    finally:
        p.close()


def _get(port: int, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path, headers={"Connection": "close"})
    r = conn.getresponse()
    out = r.status, r.read().decode()
    conn.close()
    return out


def test_metrics_aggregate_all_workers_and_survive_a_kill(served: ServerProc) -> None:
    port = served.port()
    pids = set(served.ready_pids(2))
    answered_by: set[int] = set()
    for _ in range(200):
        status, body = _get(port, "/")
        assert status == 200
        answered_by.add(int(body.split()[-1]))
    for _ in range(10):
        assert _get(port, "/missing")[0] == 404
    assert answered_by == pids
    scrapes = [parse(_get(port, "/metrics")[1]) for _ in range(6)]  # from both workers
    for s in scrapes:
        assert s['http_requests_total{status="200"}'] == 200
        assert s['http_requests_total{status="404"}'] == 10
        assert s["http_request_duration_seconds_count"] == 210
        assert s["netpoll_workers"] == 2
        check_histogram(s, "http_request_duration_seconds")
    assert _get(port, "/health") == (200, "ok\n")
    victim = pids.pop()
    mark = served.mark()
    os.kill(victim, signal.SIGKILL)
    served.wait_for(r"worker \d+ ready", mark)
    s = parse(_get(port, "/metrics")[1])
    assert s['http_requests_total{status="200"}'] == 200  # the dead worker's counts are kept
    assert s["netpoll_worker_restarts_total"] == 1


def test_metrics_in_a_single_process(tmp_path: Path) -> None:
    p = ServerProc(
        [write_app(tmp_path), "--port", "0", "--metrics", "/metrics", "--loop", "asyncio"],
        cwd=tmp_path,
    )
    try:
        port = p.port()
        for _ in range(3):
            assert _get(port, "/")[0] == 200
        s = parse(_get(port, "/metrics")[1])
        assert s['http_requests_total{status="200"}'] == 3
        assert s["netpoll_workers"] == 1
    finally:
        p.close()
