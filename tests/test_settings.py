"""Settings precedence: command line > NETPOLL_<NAME> > config file (TOML) > defaults."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.serverproc import ROOT, ServerProc
from helpers.workerapp import write_app

from server.cli import UsageError, parse_args
from server.config import Config
from server.settings import config_path, read_file


def write(tmp_path: Path, text: str, name: str = "netpoll.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_defaults_without_file_or_env() -> None:
    _, cfg = parse_args([], environ={})
    assert cfg == Config(extra=cfg.extra)
    assert cfg.config_file is None


def test_file_then_env_then_cli(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'port = 9001\nworkers = 3\nmax_body_size = 1000\nloop = "asyncio"\n'
        "keepalive-timeout = 2.5\naccess_log = true\n"
        '[server]\nmetrics = "/m"\nmax_requests = 500\n',
    )
    env = {"NETPOLL_PORT": "9002", "NETPOLL_MAX_BODY_SIZE": "2000"}
    _, cfg = parse_args(["--config", path, "--port", "9003"], environ=env)
    assert cfg.port == 9003  # CLI beats env and file
    assert cfg.max_body_size == 2000  # env beats file
    assert cfg.workers == 3 and cfg.loop == "asyncio" and cfg.keepalive_timeout == 2.5
    assert cfg.access_log is True and cfg.metrics_path == "/m" and cfg.max_requests == 500
    assert cfg.config_file == path
    _, cfg = parse_args(["--config", path], environ=env)
    assert cfg.port == 9002


def test_config_file_from_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "graceful_timeout = 7\n")
    _, cfg = parse_args([], environ={"NETPOLL_CONFIG": path})
    assert cfg.graceful_timeout == 7.0 and cfg.config_file == path
    assert config_path(["--config=x.toml"], {"NETPOLL_CONFIG": path}) == "x.toml"


def test_env_booleans_optionals_and_lists(tmp_path: Path) -> None:
    env = {
        "NETPOLL_ACCESS_LOG": "yes",
        "NETPOLL_SUPERVISE": "1",
        "NETPOLL_REQUEST_TIMEOUT": "2.5",
        "NETPOLL_HEALTH": "/hz",
        "NETPOLL_STATIC": f"/a={tmp_path}, /b={tmp_path}",
        "NETPOLL_WORKERS": "auto",
        "NETPOLL_POLLER": "poll",  # the loop's variable, not a setting: ignored
    }
    _, cfg = parse_args([], environ=env)
    assert cfg.access_log and cfg.supervise and cfg.request_timeout == 2.5
    assert cfg.health_path == "/hz" and cfg.workers == (os.cpu_count() or 1)
    assert cfg.static == (("/a", str(tmp_path)), ("/b", str(tmp_path)))
    # a --static on the command line replaces, not extends, the env's mounts
    _, cfg = parse_args(["--static", f"/c={tmp_path}"], environ=env)
    assert cfg.static == (("/c", str(tmp_path)),)
    _, cfg = parse_args(["--no-supervise"], environ=env)
    assert not cfg.supervise


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"NETPOLL_PORT": "70000"}, "NETPOLL_PORT"),
        ({"NETPOLL_WORKERS": "0"}, "NETPOLL_WORKERS"),
        ({"NETPOLL_ACCESS_LOG": "maybe"}, "NETPOLL_ACCESS_LOG"),
        ({"NETPOLL_LOOP": "tokio"}, "NETPOLL_LOOP"),
        ({"NETPOLL_METRICS": "metrics"}, "NETPOLL_METRICS"),
    ],
)
def test_bad_env_values_name_the_variable(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(UsageError, match=fragment):
        parse_args([], environ=env)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("prot = 80\n", "unknown setting 'prot'"),
        ("port = 'http'\n", "port"),
        ("access_log = 'yes'\n", "access_log"),
        ("port = [1]\n", "port"),
        ("port = \n", "not valid TOML"),
        ("server = 3\n", "must be a table"),
    ],
)
def test_bad_file_values_name_the_file_and_key(tmp_path: Path, text: str, fragment: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(UsageError, match=fragment) as info:
        parse_args(["--config", path], environ={})
    assert path in str(info.value)


def test_missing_file() -> None:
    with pytest.raises(UsageError, match="cannot read config file"):
        parse_args(["--config", "/definitely/not/here.toml"], environ={})


def test_read_file_merges_server_table(tmp_path: Path) -> None:
    path = write(tmp_path, 'host = "0.0.0.0"\n[server]\nhost = "::1"\nmax-requests = 3\n')
    assert read_file(path) == {"host": "::1", "max_requests": 3}


def test_cli_bad_config_file_one_line_exit_2(tmp_path: Path) -> None:
    path = write(tmp_path, "workers = -2\n")
    proc = subprocess.run(
        [sys.executable, "-m", "server", "--config", path],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "workers" in lines[0] and path in lines[0], proc.stderr


def test_served_with_settings_from_file_and_env(tmp_path: Path) -> None:
    """A real server configured only through a TOML file and the environment."""
    path = write(tmp_path, 'workers = 2\nhealth = "/up"\nloop = "asyncio"\n')
    p = ServerProc(
        [write_app(tmp_path), "--port", "0"],
        cwd=tmp_path,
        env={"NETPOLL_CONFIG": path, "NETPOLL_METRICS_PATH": "/m"},
    )
    try:
        port = p.port()
        p.ready_pids(2)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/up")
        r = conn.getresponse()
        assert (r.status, r.read()) == (200, b"ok\n")
        conn.request("GET", "/m")
        r = conn.getresponse()
        assert r.status == 200 and b"netpoll_workers 2" in r.read()
        conn.close()
        p.signal(signal.SIGTERM)
        assert p.wait() == 0
    finally:
        p.close()
