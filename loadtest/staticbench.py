"""``python -m loadtest.staticbench``: static files side by side with nginx and Go's FileServer.

Theory of operation: the method of ``shared/anchors/cpubench.py`` (our own code): each server
is pinned to CPU 0, ``wrk -t1 -c16`` to CPU 1; besides requests/s we read the server's CPU time
(utime + stime of its process tree from ``/proc``) before and after each wrk run and divide by
the requests served. Servers are measured in turn, ``--rounds`` times, and the median is
printed, so ratios compare runs taken close together. Every run is bounded by ``--duration``.

Files: ``10k.bin`` (10 KiB) and ``1m.bin`` (1 MiB) in a temporary directory, served at
``/static/``. Servers (missing programs are skipped with a note, never an error):

* ``netpoll``: ``python -m server --static /static=DIR`` (sendfile path, open-file cache);
* ``netpoll-mem``: the same with small files kept in memory (``memory_max`` 64 KiB);
* ``uvloop``: our server on uvloop (read + write fallback: uvloop has no ``loop.sendfile``);
* ``nginx``: ``loadtest/peers/nginx-static.conf`` (sendfile, open_file_cache);
* ``go``: ``loadtest/peers/gostatic`` (``http.FileServer``, GOMAXPROCS=1).

Also measured once per run (``--slow-reader``): small-file latency while a client that never
reads holds a 64 MiB download open on another connection.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from loadtest.runner import stop_process

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TCK = os.sysconf("SC_CLK_TCK")

_MEM_APP = """
import os
from server import App
app = App()
app.static("/static", os.environ["STATIC_DIR"], memory_max=65536)
"""


def free_port() -> int:
    # wrk, nginx and Go take a port number, not a socket: ask the kernel for a free one
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def process_tree(pid: int) -> list[int]:
    out = [pid]
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task}/children") as fh:
                    for child in fh.read().split():
                        out += process_tree(int(child))
            except OSError:
                pass
    except OSError:
        pass
    return out


def cpu_ticks(pid: int) -> int:
    total = 0
    for p in process_tree(pid):
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/stat") as fh:
                    stat = fh.read()
                fields = stat[stat.rindex(")") + 2 :].split()
                total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total


def wait_up(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                r.read()
            return True
        except OSError:
            time.sleep(0.1)
    return False


def commands(static: Path, tmp: Path) -> dict[str, tuple[str, dict[str, str]] | str]:
    """name -> (command template with {port}, extra env), or a reason string when skipped."""
    py = shlex.quote(sys.executable)
    out: dict[str, tuple[str, dict[str, str]] | str] = {}
    base = f"{py} -m server --static /static={static} --port {{port}} --log-level warning"
    out["netpoll"] = (base + " --loop netpoll", {})
    app = tmp / "memapp.py"
    app.write_text(_MEM_APP)
    out["netpoll-mem"] = (
        f"{py} -m server memapp:app --port {{port}} --log-level warning",
        {"STATIC_DIR": str(static), "PYTHONPATH": f"{tmp}:{ROOT}"},
    )
    out["uvloop"] = (base + " --loop uvloop", {})
    nginx = shutil.which("nginx") or (
        "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None
    )
    if nginx:
        out["nginx"] = (f"{nginx} -c {tmp}/nginx-{{port}}.conf", {})
    else:
        out["nginx"] = "nginx not installed (apt-get install nginx-light)"
    go = shutil.which("go")
    if go:
        binary = tmp / "gostatic"
        build = subprocess.run(
            [go, "build", "-o", str(binary), "."],
            cwd=HERE / "peers" / "gostatic",
            capture_output=True,
            env={**os.environ, "GOFLAGS": "-mod=mod", "GO111MODULE": "off"},
        )
        if build.returncode == 0:
            out["go"] = (f"{binary} {{port}} {static}", {"GOMAXPROCS": "1"})
        else:
            out["go"] = "go build failed: " + build.stderr.decode()[-200:]
    else:
        out["go"] = "go not installed (apt-get install golang-go)"
    return out


def nginx_conf(tmp: Path, static: Path, port: int) -> None:
    text = (HERE / "peers" / "nginx-static.conf").read_text()
    text = text.replace("@PORT@", str(port)).replace("@STATIC@", str(static))
    ndir = tmp / f"nginx-{port}"
    ndir.mkdir(exist_ok=True)
    (tmp / f"nginx-{port}.conf").write_text(text.replace("@TMP@", str(ndir)))


def run_wrk(
    name: str, cmd: str, env: dict[str, str], paths: list[str], a: argparse.Namespace, tmp: Path
) -> dict[str, tuple[float, float, int]]:
    port = free_port()
    if name == "nginx":
        nginx_conf(tmp, a.static, port)
    log = open(tmp / f"{name}.log", "w")
    proc = subprocess.Popen(
        ["taskset", "-c", "0", *shlex.split(cmd.format(port=port))],
        stdout=subprocess.DEVNULL,
        stderr=log,
        start_new_session=True,
        env={**os.environ, **env},
        cwd=ROOT,
    )
    results: dict[str, tuple[float, float, int]] = {}
    try:
        base = f"http://127.0.0.1:{port}"
        if not wait_up(base + paths[0], proc):
            return results
        for path in paths:
            url = base + path
            subprocess.run(
                ["taskset", "-c", "1", "wrk", "-t1", "-c16", "-d1s", url], capture_output=True
            )  # warm-up
            c0 = cpu_ticks(proc.pid)
            out = subprocess.run(
                ["taskset", "-c", "1", "wrk", "-t1", "-c16", f"-d{a.duration}s", url],
                capture_output=True,
                text=True,
            ).stdout
            c1 = cpu_ticks(proc.pid)
            reqs, rps, errors = 0, 0.0, 0
            for line in out.splitlines():
                if "requests in" in line:
                    reqs = int(line.split()[0])
                elif line.startswith("Requests/sec"):
                    rps = float(line.split()[1])
                elif "Non-2xx" in line or "Socket errors" in line:
                    errors += sum(int(x) for x in line.replace(",", " ").split() if x.isdigit())
            if reqs:
                results[path] = (rps, (c1 - c0) * 1e6 / TCK / reqs, errors)
    finally:
        stop_process(proc)
        log.close()
    return results


def slow_reader_check(cmd: str, env: dict[str, str], tmp: Path, requests: int = 200) -> str:
    """Small-request latency while another connection never reads a 64 MiB download."""
    port = free_port()
    proc = subprocess.Popen(
        ["taskset", "-c", "0", *shlex.split(cmd.format(port=port))],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, **env},
        cwd=ROOT,
    )
    try:
        base = f"http://127.0.0.1:{port}/static/"
        if not wait_up(base + "10k.bin", proc):
            return "server did not start"
        slow = socket.create_connection(("127.0.0.1", port))
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        slow.sendall(b"GET /static/64m.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        slow.recv(100)
        times = []
        conn = socket.create_connection(("127.0.0.1", port))
        for _ in range(requests):
            t0 = time.perf_counter()
            conn.sendall(b"GET /static/10k.bin HTTP/1.1\r\nHost: x\r\n\r\n")
            buf = b""
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                buf += data
                _, sep, body = buf.partition(b"\r\n\r\n")
                if sep and len(body) >= 10240:
                    break
            times.append(time.perf_counter() - t0)
        slow.close()
        conn.close()
        times.sort()
        return (
            f"{requests} small requests during a stalled 64 MiB download: "
            f"median {statistics.median(times) * 1e3:.2f} ms, max {times[-1] * 1e3:.2f} ms"
        )
    finally:
        stop_process(proc)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--servers", default="netpoll,netpoll-mem,uvloop,nginx,go")
    ap.add_argument("--slow-reader", action="store_true", help="also run the slow-reader check")
    a = ap.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="staticbench-") as tmpdir:
        tmp = Path(tmpdir)
        tmp.chmod(0o755)  # nginx workers run as an unprivileged user
        a.static = tmp / "static"
        a.static.mkdir()
        (a.static / "10k.bin").write_bytes(os.urandom(10 * 1024))
        (a.static / "1m.bin").write_bytes(os.urandom(1024 * 1024))
        with open(a.static / "64m.bin", "wb") as fh:
            fh.truncate(64 * 1024 * 1024)
        cmds = commands(a.static, tmp)
        paths = ["/static/10k.bin", "/static/1m.bin"]
        names = [n for n in a.servers.split(",") if n in cmds]
        runs: dict[str, dict[str, list[tuple[float, float, int]]]] = {}
        for n in names:
            if isinstance(cmds[n], str):
                print(f"# {n}: skipped, {cmds[n]}")
        for _ in range(a.rounds):
            for n in names:
                spec = cmds[n]
                if isinstance(spec, str):
                    continue
                res = run_wrk(n, spec[0], spec[1], paths, a, tmp)
                for path, r in res.items():
                    runs.setdefault(n, {}).setdefault(path, []).append(r)
        print(f"{'server':<12} {'file':<8} {'rps':>9} {'MB/s':>8} {'cpu_us/req':>11} {'errors':>6}")
        for n in names:
            for path in paths:
                rs = runs.get(n, {}).get(path)
                if not rs:
                    if not isinstance(cmds[n], str):
                        print(f"{n:<12} {path.rsplit('/', 1)[1]:<8} FAILED (see logs)")
                    continue
                rps = statistics.median(r[0] for r in rs)
                us = statistics.median(r[1] for r in rs)
                size = 10 * 1024 if "10k" in path else 1024 * 1024
                print(
                    f"{n:<12} {path.rsplit('/', 1)[1]:<8} {rps:>9.0f} {rps * size / 1e6:>8.0f} "
                    f"{us:>11.1f} {sum(r[2] for r in rs):>6}"
                )
        if a.slow_reader and "netpoll" in names and not isinstance(cmds["netpoll"], str):
            spec = cmds["netpoll"]
            print("# netpoll slow reader:", slow_reader_check(spec[0], spec[1], tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
