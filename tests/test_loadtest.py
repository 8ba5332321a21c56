"""The load-test kit: the locust runner, the report, the bench and the loopback scale-out.

Everything runs real processes on 127.0.0.1: ``python -m loadtest run`` with locust against a
server it starts, ``python -m loadtest bench --quick`` with wrk, and HAProxy in front of two
servers with a locust master and two workers. Locust is never imported in the pytest process
(importing it monkey-patches the standard library with gevent); it runs in subprocesses.
"""

from __future__ import annotations

import ast
import csv
import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PNG = b"\x89PNG\r\n\x1a\n"

needs_locust = pytest.mark.skipif(
    __import__("importlib").util.find_spec("locust") is None,
    reason="locust not installed (pip install -e '.[test]')",
)


def _loadtest(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loadtest", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _only(directory: Path) -> Path:
    (out,) = [p for p in directory.iterdir() if p.is_dir()]
    return out


# --- pure parts ---------------------------------------------------------------------------------


def test_parse_duration() -> None:
    from loadtest.runner import parse_duration

    assert parse_duration("20s") == 20
    assert parse_duration("2m") == 120
    assert parse_duration("1h30m") == 5400
    assert parse_duration("45") == 45
    for bad in ("", "s", "10x", "5m3"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_runner_scenarios_match_locustfile() -> None:
    """The runner's scenario table names the classes the locustfile's SCENARIOS maps to."""
    from loadtest.runner import SCENARIOS

    tree = ast.parse((ROOT / "loadtest" / "locustfile.py").read_text())
    table = next(
        node.value
        for node in tree.body
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "SCENARIOS"
    )
    assert isinstance(table, ast.Dict)
    from_file = {
        k.value: v.id
        for k, v in zip(table.keys, table.values, strict=True)
        if isinstance(k, ast.Constant) and isinstance(v, ast.Name)
    }
    assert from_file == SCENARIOS
    classes = {n.name for n in tree.body if isinstance(n, ast.ClassDef)}
    assert set(SCENARIOS.values()) <= classes


def _history_csv(path: Path) -> None:
    cols = ["Timestamp", "User Count", "Type", "Name", "Requests/s", "Failures/s"]
    pcts = ["50%", "66%", "75%", "80%", "90%", "95%", "98%", "99%", "99.9%", "99.99%", "100%"]
    tail = ["Total Request Count", "Total Failure Count", "Total Median Response Time"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols + pcts + tail)
        w.writerow([1000, 0, "", "Aggregated", 0, 0, *["N/A"] * len(pcts), 0, 0, 0])
        for i in range(1, 6):
            w.writerow([1000 + i, 10, "GET", "/json", 90.0, 0, *[i] * len(pcts), 90 * i, 0, 1])
            w.writerow(
                [1000 + i, 10, "", "Aggregated", 100.0 * i, 0, *[i] * len(pcts), 100 * i, 0, 1]
            )


def test_report_plots_from_history(tmp_path: Path) -> None:
    from loadtest.report import plot_history, read_history

    _history_csv(tmp_path / "h.csv")
    rows = read_history(tmp_path / "h.csv")
    assert [r["t"] for r in rows] == [0, 1, 2, 3, 4, 5]  # Aggregated rows only
    assert rows[3]["rps"] == 300.0 and rows[0]["99%"] != rows[0]["99%"]  # N/A -> NaN
    written = plot_history(rows, tmp_path, "demo")
    assert [p.name for p in written] == ["requests.png", "latency.png"]
    for p in written:
        assert p.read_bytes().startswith(PNG)


def test_bench_markdown_ratios_and_missing_rows(tmp_path: Path) -> None:
    from loadtest.report import bench_markdown, plot_bench

    rows = [
        {"workload": "plaintext", "server": "uvicorn", "rps": 1000.0, "cpu_us": 20.0, "errors": 0},
        {"workload": "plaintext", "server": "netpoll", "rps": 2000.0, "cpu_us": 5.0, "errors": 0},
        {"workload": "plaintext", "server": "go", "note": "did not start"},
    ]
    text = bench_markdown(rows, "uvicorn", ["nginx skipped: not installed"])
    assert "| netpoll | 2,000 | 5.00 | 2.00x | 0.25x | 0 |" in text
    assert "| uvicorn | 1,000 | 20.00 | 1.00x | 1.00x | 0 |" in text
    assert "| go | - | - | - | - | did not start |" in text
    assert "- nginx skipped: not installed" in text
    lines = text.splitlines()
    assert lines.index(next(ln for ln in lines if ln.startswith("| netpoll"))) < lines.index(
        next(ln for ln in lines if ln.startswith("| uvicorn"))
    )  # lowest CPU per request first
    assert plot_bench(rows[:2], tmp_path / "b.png").read_bytes().startswith(PNG)


def test_render_haproxy_replaces_marked_blocks() -> None:
    from loadtest.scaleout import HAPROXY_CFG, render_haproxy

    template = HAPROXY_CFG.read_text()
    cfg = render_haproxy(
        template,
        {
            "resolvers": [],
            "bind": ["bind fd@7"],
            "stats": ["bind fd@8"],
            "servers": ["server web1 127.0.0.1:1 check", "server web2 127.0.0.1:2 check"],
        },
    )
    assert "resolvers docker" not in cfg and "nameserver" not in cfg
    assert "    bind fd@7\n" in cfg and "    bind fd@8\n" in cfg
    assert "server-template web" not in cfg and "bind :8080" not in cfg
    assert "    server web2 127.0.0.1:2 check\n" in cfg
    assert "balance roundrobin" in cfg  # the rest is the docker file as is
    with pytest.raises(KeyError):
        render_haproxy(template, {"bind": []})
    with pytest.raises(ValueError):
        render_haproxy("global\n", {"bind": []})


# --- the target app -----------------------------------------------------------------------------


def test_mixed_app_routes() -> None:
    from loadtest.mixed_app import STATIC_FILES
    from loadtest.runner import ServerProcess

    def get(url: str, data: bytes | None = None) -> tuple[int, bytes]:
        req = urllib.request.Request(url, data=data)
        if data is not None:
            req.add_header("content-type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    with ServerProcess().wait_ready() as srv:
        base = srv.url
        assert get(base + "/plaintext") == (200, b"Hello, World!")
        assert json.loads(get(base + "/api/users/7")[1])["id"] == 7
        assert get(base + "/api/users/99999")[0] == 404
        status, body = get(base + "/api/search?q=abc&limit=3")
        assert status == 200 and len(json.loads(body)["results"]) == 3
        status, body = get(base + "/api/items", b'{"name": "x"}')
        assert status == 201 and json.loads(body)["item"] == {"name": "x"}
        assert get(base + "/api/items", b"{nope")[0] == 400
        for name, size in STATIC_FILES.items():
            status, body = get(f"{base}/static/{name}")
            assert (status, len(body)) == (200, size)
        stats = json.loads(get(base + "/__stats")[1])
        assert stats["pid"] == srv.proc.pid and stats["requests"] >= 10


# --- real runs ----------------------------------------------------------------------------------


def test_cli_lists_subcommands() -> None:
    out = _loadtest("--help")
    assert out.returncode == 0
    for name in ("run", "bench", "scaleout", "instrcount"):
        assert name in out.stdout


@pytest.mark.parametrize(
    ("kind", "pipe", "path"),
    [("native", 16, "/plaintext"), ("asgi", 1, "/json"), ("native", 1, "/static/10k.bin")],
)
def test_instrcount_driver_answers_every_request(kind: str, pipe: int, path: str) -> None:
    """The in-process driver the instruction counts come from: every request fed gets its 200
    (so the count is of real responses), and the command line runs it (timed, no valgrind)."""
    from loadtest.instrcount import drive

    assert drive(kind, pipe, 320, path)[0] == 320
    assert drive(kind, pipe, 320, path, check=False)[0] == 320  # one write per response
    out = _loadtest(
        "instrcount", "--no-valgrind", "--kind", kind, "--pipe", str(pipe), "--path", path
    )
    assert out.returncode == 0, out.stderr
    assert f"{kind} {path} pipe={pipe}:" in out.stdout and "µs/request" in out.stdout


@needs_locust
def test_run_mixed_short(tmp_path: Path) -> None:
    """The acceptance run, shortened: zero failures, HTML report, CSVs and plots."""
    out = _loadtest(
        "run", "--scenario", "mixed", "--users", "5", "--duration", "4s",
        "--results", str(tmp_path), "--quiet", timeout=90,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "loadtest: OK:" in out.stdout
    run = _only(tmp_path)
    assert run.name.endswith("-mixed")
    for name in ("report.html", "locust_stats.csv", "locust_stats_history.csv", "summary.md"):
        assert (run / name).stat().st_size > 0, name
    for name in ("requests.png", "latency.png"):
        assert (run / name).read_bytes().startswith(PNG)
    summary = (run / "summary.md").read_text()
    assert "/api/users/[id]" in summary and "/api/items" in summary and "404" in summary
    # the verdict counts every request, as locust's final table does: its final totals, not
    # the stats CSV's last once-a-second write
    totals = json.loads((run / "locust_totals.json").read_text())
    assert f"loadtest: OK: {totals['requests']} requests, 0 failures" in out.stdout
    with open(run / "locust_stats.csv", newline="") as f:
        rows = {r["Name"]: r for r in csv.DictReader(f)}
    assert totals["requests"] >= int(rows["Aggregated"]["Request Count"]) > 0


@needs_locust
def test_run_with_locust_worker_processes(tmp_path: Path) -> None:
    """--processes 2: a master (port 0, read back) and two workers; stats reach the master."""
    out = _loadtest(
        "run", "--scenario", "plaintext", "--users", "4", "--duration", "3s",
        "--processes", "2", "--results", str(tmp_path), "--quiet", timeout=90,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    run = _only(tmp_path)
    with open(run / "locust_stats.csv", newline="") as f:
        rows = {r["Name"]: r for r in csv.DictReader(f)}
    assert int(rows["/plaintext"]["Request Count"]) > 0
    assert int(rows["Aggregated"]["Failure Count"]) == 0
    assert json.loads((run / "locust_totals.json").read_text())["requests"] > 0  # (the master's)


@needs_locust
def test_run_exits_nonzero_when_requests_fail(tmp_path: Path) -> None:
    """The mixed scenario against an app without its routes: failures, exit status 1."""
    from loadtest.runner import ServerProcess

    with ServerProcess("loadtest.apps:app").wait_ready() as srv:
        out = _loadtest(
            "run", "--scenario", "mixed", "--users", "2", "--duration", "2s",
            "--target", srv.url, "--results", str(tmp_path), "--quiet", timeout=60,
        )  # fmt: skip
    assert out.returncode == 1, out.stdout[-2000:]
    assert "loadtest: FAILED:" in out.stdout
    assert (_only(tmp_path) / "report.html").exists()


@needs_locust
@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy not installed")
def test_scaleout_spreads_load_over_both_servers(tmp_path: Path) -> None:
    from loadtest.scaleout import run_scaleout

    result = run_scaleout(duration=5, users=10, results=tmp_path)
    assert result.ok, result.summary()
    assert result.failures == 0 and result.requests > 0
    assert len(result.per_server) == 2 and len(set(result.pids.values())) == 2
    assert all(count > 0 for count in result.per_server.values())  # both processes served
    assert set(result.haproxy) == {"web1", "web2"}
    assert (result.out_dir / "scaleout.json").exists()


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk not installed")
def test_bench_quick_writes_table_json_and_chart(tmp_path: Path) -> None:
    out = _loadtest(
        "bench", "--quick", "--servers", "netpoll-native,uvicorn,no-such-*",
        "--workloads", "plaintext,static-10k", "--results", str(tmp_path), timeout=90,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    bench = _only(tmp_path)
    data = json.loads((bench / "bench.json").read_text())
    cells = {(r["workload"], r["server"]) for r in data["results"] if r.get("rps")}
    skipped = "uvicorn skipped" in out.stdout + out.stderr
    want = {"netpoll-native"} if skipped else {"netpoll-native", "uvicorn"}
    assert {s for w, s in cells if w == "plaintext"} >= want
    assert {s for w, s in cells if w == "static-10k"} >= want
    text = (bench / "bench.md").read_text()
    assert "### plaintext" in text and "server CPU µs/req" in text
    assert (bench / "bench.png").read_bytes().startswith(PNG)


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk not installed")
def test_bench_unknown_server_is_a_usage_error(tmp_path: Path) -> None:
    out = _loadtest("bench", "--quick", "--servers", "nope", "--results", str(tmp_path))
    assert out.returncode == 2 and "no server matches nope" in out.stderr
    assert not os.listdir(tmp_path)
