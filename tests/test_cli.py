"""The command line: option parsing (in process) and user errors (``python -m server`` in a
subprocess: one line on stderr, exit status 2)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from server import App
from server.cli import UsageError, load_target, make_handler, parse_args
from server.config import Config
from server.testing import TestClient

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, cwd: Path = ROOT, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "server", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_usage_error(proc: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("netpoll-server: error:")
    assert fragment in lines[0]


# --- in process ---


def test_parse_defaults_and_generated_options() -> None:
    target, cfg = parse_args([])
    assert target is None
    assert cfg.port == Config().port and cfg.loop == "netpoll" and cfg.static == ()
    target, cfg = parse_args(
        [
            "pkg.mod:app",
            "--port",
            "9000",
            "--workers",
            "3",
            "--loop",
            "asyncio",
            "--max-body-size",
            "123",
            "--keepalive-timeout",
            "1.5",
            "--request-timeout",
            "none",
            "--overload",
            "defer",
            "--access-log",
            "--static",
            f"/s={ROOT}",
            "--lifespan",
            "off",
        ]
    )
    assert target == "pkg.mod:app"
    assert (cfg.port, cfg.workers, cfg.loop) == (9000, 3, "asyncio")
    assert cfg.max_body_size == 123 and cfg.keepalive_timeout == 1.5 and cfg.request_timeout is None
    assert cfg.overload == "defer" and cfg.access_log
    assert cfg.static == (("/s", str(ROOT)),)
    assert cfg.extra["lifespan"] == "off"


@pytest.mark.parametrize(
    "argv",
    [
        ["--port", "http"],
        ["--port", "70000"],
        ["--workers", "0"],
        ["--max-body-size", "-1"],
        ["--keepalive-timeout", "soon"],
        ["--loop", "tokio"],
        ["--static", "nodir"],
        ["--static", "/x=/definitely/not/here"],
        ["--ssl-certfile", "c.pem"],
        ["--bogus"],
        ["--max-pipelined", "0"],
        ["--max-connections", "0"],
        ["--header-timeout", "0"],
        ["--request-timeout", "0"],
        ["--server-header", "a\r\nb"],
        ["--metrics", "/m", "--health", "/m"],
        ["--fd", "3", "--uds", "/tmp/x.sock"],
    ],
)
def test_bad_options_raise_usage_error(argv: list[str]) -> None:
    with pytest.raises(UsageError):
        parse_args(argv)


def test_every_limit_has_an_option() -> None:
    from server.cli import build_parser

    text = build_parser().format_help()
    for name in Config.names():
        if name.startswith(
            ("max_", "header_", "keepalive_", "body_", "send_", "request_", "graceful_")
        ):
            assert "--" + name.replace("_", "-") in text, name


def test_load_target(tmp_path: Path) -> None:
    assert isinstance(load_target(None), App)
    assert isinstance(load_target("loadtest.apps:app"), App)
    assert callable(load_target("loadtest.apps:asgi_app"))
    with pytest.raises(UsageError, match="cannot import"):
        load_target("no_such_module_xyz:app")
    with pytest.raises(UsageError, match="no attribute"):
        load_target("loadtest.apps:nope")
    with pytest.raises(UsageError, match="MODULE:ATTR"):
        load_target("loadtest.apps")
    with pytest.raises(UsageError, match="not callable"):
        load_target("server.config:KiB")
    (tmp_path / "f.txt").write_text("static!")
    with TestClient(load_target(str(tmp_path))) as c:
        assert c.get("/f.txt").text == "static!"
        assert "f.txt" in c.get("/").text  # autoindex for a directory target


def test_make_handler_interfaces_and_static(tmp_path: Path) -> None:
    from loadtest.apps import app, asgi_app
    from server.asgi import ASGIHandler

    h, start, stop = make_handler(app, Config())
    assert h is app and len(start) == 1 and len(stop) == 1
    h, _, _ = make_handler(asgi_app, Config())
    assert isinstance(h, ASGIHandler)
    with pytest.raises(UsageError):
        make_handler(app, Config(interface="wsgi"))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.txt").write_text("A")
    (tmp_path / "index.html").write_text("<p>index</p>")
    cfg = Config(static=(("/files", str(tmp_path)),), autoindex=True)
    with TestClient(asgi_app, config=cfg) as c:
        assert c.get("/plaintext").text == "Hello, World!"  # the app behind the mounts
        assert c.get("/files/sub/a.txt").text == "A"
        assert "<p>index</p>" in c.get("/files/").text
        assert c.get("/files").status_code == 308
        r = c.get("/files/sub")
        assert r.status_code == 308 and r.headers["location"] == "/files/sub/"
        assert "a.txt" in c.get("/files/sub/").text  # autoindex


def test_static_mounts_match_whole_segments_longest_first(tmp_path: Path) -> None:
    """A mount answers its prefix and what is below it, never a path that only starts with
    the same letters; the longest prefix wins; the rest reaches the app."""
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.txt").write_text("outer")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x.txt").write_text("inner")
    app = App()

    @app.get("/{rest:path}")
    async def fallback(request: object) -> str:
        return "app " + request.path  # type: ignore[attr-defined]

    mounts = (("/files", str(tmp_path / "a")), ("/files/deep", str(tmp_path / "b")))
    with TestClient(app, config=Config(static=mounts)) as c:
        assert c.get("/files/x.txt").text == "outer"
        assert c.get("/files/deep/x.txt").text == "inner"
        assert c.get("/filesx").text == "app /filesx"
        assert c.get("/files-x/x.txt").text == "app /files-x/x.txt"
        r = c.get("/files")
        assert r.status_code == 308 and r.headers["location"] == "/files/"
        r = c.get("/files/deep")
        assert r.status_code == 308 and r.headers["location"] == "/files/deep/"
        assert c.get("/").text == "app /"


def test_static_refuses_escapes(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "ok.txt").write_text("ok")
    (tmp_path / "secret.txt").write_text("secret")
    os.symlink(tmp_path / "secret.txt", root / "link.txt")
    os.symlink(root / "ok.txt", root / "inner-link.txt")
    app = App()
    app.static("/s", root)
    with TestClient(app) as c:
        assert c.get("/s/ok.txt").text == "ok"
        assert c.get("/s/inner-link.txt").text == "ok"  # a symlink inside the root is fine
        for path in (
            "/s/../secret.txt",
            "/s/%2e%2e/secret.txt",
            "/s/sub/..%2f..%2fsecret.txt",
            "/s/link.txt",
            "/s//etc/passwd",
            "/s/ok.txt%00.png",
            "/s/..%5csecret.txt",
            "/s/missing.txt",
            "/s/",
        ):
            r = c.get(path)
            assert r.status_code == 404, path
            assert b"secret" not in r.content, path
    with pytest.raises(ValueError):
        App().static("/x", tmp_path / "missing")


# --- subprocess ---


def test_cli_bad_module() -> None:
    assert_usage_error(
        run_cli("no_such_module_xyz:app"), "cannot import module 'no_such_module_xyz'"
    )


def test_cli_missing_attribute() -> None:
    assert_usage_error(run_cli("loadtest.apps:missing"), "has no attribute 'missing'")


def test_cli_bad_option_value() -> None:
    assert_usage_error(run_cli("--max-body-size", "lots"), "--max-body-size")


def test_cli_bad_tls_files_one_line(tmp_path: Path) -> None:
    (tmp_path / "empty.pem").write_text("")
    assert_usage_error(
        run_cli("--ssl-certfile", "missing.pem", "--ssl-keyfile", "missing.key"), "'missing.pem'"
    )
    proc = run_cli("--ssl-certfile", str(tmp_path / "empty.pem"), "--ssl-keyfile", "k.pem")
    assert_usage_error(proc, "empty.pem")


@contextlib.contextmanager
def _serving(
    cmd: list[str], cwd: Path = ROOT, **env: str
) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """Start a server command given ``--port 0``; yield it and the port it says it listens
    on (read from its stderr); stop it on exit if it still runs."""
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        while True:
            line = proc.stderr.readline()
            assert line, "server ended"
            if m := re.search(r"listening on http://[^ ]*:(\d+) ", line):
                break
        yield proc, int(m.group(1))
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(20)


def test_single_process_ignores_supervisor_signals_and_says_so() -> None:
    """SIGTTIN/SIGTTOU would stop the process, SIGHUP/SIGUSR1 end it: without a supervisor
    they are logged and ignored, and the server serves on."""
    import http.client

    with _serving([sys.executable, "-m", "server", "--port", "0"]) as (proc, port):
        for sig in (signal.SIGTTIN, signal.SIGTTOU, signal.SIGHUP, signal.SIGUSR1):
            proc.send_signal(sig)
            line = proc.stderr.readline()  # type: ignore[union-attr]
            assert f"{sig.name} ignored" in line, line
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/")
        assert conn.getresponse().status == 200
        conn.close()


def test_supervisor_signals_stay_ignored_during_the_drain(tmp_path: Path) -> None:
    """SIGUSR1 (or HUP, TTIN, TTOU) arriving while a SIGTERM drain finishes a request must not
    end the process with the request in flight."""
    import http.client
    import threading

    (tmp_path / "slowapp.py").write_text(
        "import asyncio\nfrom server import App\napp = App()\n\n@app.get('/slow')\n"
        "async def slow(r):\n    await asyncio.sleep(1.0)\n    return 'late'\n"
    )
    got: list[tuple[int, bytes]] = []
    cmd = [sys.executable, "-m", "server", "slowapp:app", "--port", "0"]
    with _serving(cmd, cwd=tmp_path) as (proc, port):

        def fetch() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/slow")
            r = conn.getresponse()
            got.append((r.status, r.read()))

        t = threading.Thread(target=fetch)
        t.start()
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        proc.send_signal(signal.SIGUSR1)
        t.join(10)
        assert got == [(200, b"late")]
        assert proc.wait(20) == 0


def test_scripts_serve_finds_the_app_from_where_it_is_run(tmp_path: Path) -> None:
    """``scripts/serve myapp:app`` run from the app's directory imports it from there (as
    ``python -m server`` does), not from the repository. (Its ``pip install -e`` step is
    skipped here by a stand-in interpreter: the test environment has the package already.)"""
    import http.client

    (tmp_path / "myapp.py").write_text(
        "from server import App\napp = App()\n\n@app.get('/')\nasync def root(r):\n"
        "    return 'mine'\n"
    )
    fake = tmp_path / "py"
    fake.write_text(f'#!/bin/sh\n[ "$1 $2" = "-m pip" ] && exit 0\nexec {sys.executable} "$@"\n')
    fake.chmod(0o755)
    cmd = ["bash", str(ROOT / "scripts" / "serve"), "myapp:app", "--port", "0"]
    with _serving(cmd, cwd=tmp_path, PYTHON=str(fake)) as (_proc, port):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/")
        assert conn.getresponse().read() == b"mine"
        conn.close()


def test_cli_taken_port() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert_usage_error(run_cli("--port", str(port)), f"127.0.0.1:{port}")


def _serve_demo_on_inherited_socket(
    *extra: str,
) -> tuple[subprocess.Popen[str], int, socket.socket]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "server", "--fd", str(listener.fileno()), *extra],
        cwd=ROOT,
        env=env,
        pass_fds=[listener.fileno()],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, listener.getsockname()[1], listener


@pytest.mark.parametrize("loop", ["netpoll", "asyncio"])
def test_cli_serves_demo_then_sigterm(loop: str) -> None:
    pytest.importorskip("server.serve")
    import http.client
    import signal

    proc, port, listener = _serve_demo_on_inherited_socket("--loop", loop, "--access-log")
    try:
        # The socket already listens: connections queue in the kernel until the server accepts.
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/plaintext")
        r = conn.getresponse()
        assert (r.status, r.read()) == (200, b"Hello, World!")
        conn.request("GET", "/users/7")
        r = conn.getresponse()
        assert r.status == 200 and r.read() == b'{"id":7,"name":"user7"}'
        conn.request("GET", "/static/hello.txt")
        r = conn.getresponse()
        assert r.status == 200 and r.read() == b"Hello from a static file.\n"
        assert r.getheader("content-type") == "text/plain; charset=utf-8"
        conn.request("POST", "/echo", body=b"ping", headers={"content-type": "text/x-ping"})
        r = conn.getresponse()
        assert r.read() == b"ping" and r.getheader("content-type") == "text/x-ping"
        conn.request("GET", "/static/../server/cli.py")
        r = conn.getresponse()
        assert r.status == 404
        r.read()
        conn.close()
    finally:
        listener.close()
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    assert proc.returncode == 0, err
    assert '"GET /plaintext HTTP/1.1" 200 13 ' in err


def test_app_run_blocking(tmp_path: Path) -> None:
    pytest.importorskip("server.serve")
    import http.client
    import signal

    script = tmp_path / "myapp.py"
    script.write_text(
        "import sys\n"
        "from server import App\n"
        "app = App()\n"
        "@app.get('/hi/{name}')\n"
        "async def hi(request):\n"
        "    return 'hi ' + request.path_params['name'] + ' ' + request.state.__class__.__name__\n"
        "@app.on_startup\n"
        "def started():\n"
        "    print('started', flush=True)\n"
        "app.run(fd=int(sys.argv[1]), loop='asyncio', log_level='warning')\n"
    )
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        proc = subprocess.Popen(
            [sys.executable, str(script), str(listener.fileno())],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            pass_fds=[listener.fileno()],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            conn = http.client.HTTPConnection("127.0.0.1", listener.getsockname()[1], timeout=30)
            conn.request("GET", "/hi/ann")
            r = conn.getresponse()
            assert (r.status, r.read()) == (200, b"hi ann SimpleNamespace")
            conn.close()
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                out, err = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
    assert proc.returncode == 0, err
    assert out.strip() == "started"


def test_cli_lifespan_failure(tmp_path: Path) -> None:
    (tmp_path / "failing_app.py").write_text(
        "async def app(scope, receive, send):\n"
        "    assert scope['type'] == 'lifespan'\n"
        "    await receive()\n"
        "    await send({'type': 'lifespan.startup.failed', 'message': 'database down'})\n"
    )
    env_path = f"{tmp_path}{os.pathsep}{ROOT}"
    proc = subprocess.run(
        [sys.executable, "-m", "server", "failing_app:app", "--port", "0", "--loop", "asyncio"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": env_path},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 3, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("netpoll-server: error:") and "database down" in last
