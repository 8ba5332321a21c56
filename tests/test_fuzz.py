"""The atheris fuzz harnesses in ``fuzz/``: a short bounded run of each, and corpus replay.

Replay (no atheris needed): every seed in ``fuzz/corpus/<target>/`` and every input that once
broke something in ``fuzz/regressions/<target>/`` goes through the harness's invariants
in-process. The short run starts the three harnesses at once in subprocesses (about 20 s of
fuzzing each, bounded by libFuzzer's ``-max_total_time`` and by a hard subprocess timeout),
new inputs go to a temporary corpus directory (the repository's corpus is only read), and a
crash, a timeout (``-timeout=10`` per input) or an exit status other than 0 fails the test.
The executions per second and the total are printed (``pytest -s`` or ``-rP`` shows them).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: fuzz/

from fuzz import common, http11_fuzz, range_fuzz, static_fuzz
from server.config import Config
from server.exchange import RequestHead
from server.http11 import RequestParser

TARGETS = {
    "http11": http11_fuzz.test_one_input,
    "static": static_fuzz.test_one_input,
    "range": range_fuzz.test_one_input,
}
SECONDS = int(os.environ.get("FUZZ_SECONDS", "20"))
HAVE_ATHERIS = importlib.util.find_spec("atheris") is not None


@pytest.mark.parametrize("target", list(TARGETS))
def test_corpus_and_regressions_replay(target: str) -> None:
    count = common.replay(target, TARGETS[target])
    assert count >= 10, f"seed corpus of {target} is missing"


def test_regression_stray_cr_before_request_line() -> None:
    """Found by http11_fuzz: llhttp skips any CR/LF run before a request line, the head
    extraction skipped only CRLF pairs, so ``\\rPOST`` became the method."""
    for prefix in (b"\r", b"\n", b"\r\r\n", b"\n\n\r\n"):
        p = RequestParser(Config())
        p.feed(prefix + b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
        heads = [e for e in p.events if isinstance(e, RequestHead)]
        assert [(h.method, h.path) for h in heads] == [("POST", "/x")], (prefix, p.events)


class FuzzRun:
    """One harness running in a subprocess; :meth:`result` waits for it."""

    def __init__(self, target: str, work: Path) -> None:
        self.target = target
        corpus = work / target / "corpus"
        self.artifacts = work / target / "artifacts"
        corpus.mkdir(parents=True)
        self.artifacts.mkdir()
        self.log = work / target / "log.txt"
        cmd = [
            sys.executable,
            str(common.FUZZ_DIR / f"{target}_fuzz.py"),
            f"-max_total_time={SECONDS}",
            "-timeout=10",
            "-rss_limit_mb=1024",
            "-print_final_stats=1",
            f"-artifact_prefix={self.artifacts}/",
            str(corpus),
            str(common.FUZZ_DIR / "corpus" / target),
        ]
        self.started = time.monotonic()
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "FUZZ_TMPDIR": str(work / target)},
            )

    def result(self) -> tuple[int, str]:
        try:
            code = self.proc.wait(SECONDS + 90)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            code = -9
        return code, self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def fuzz_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, FuzzRun]]:
    work = tmp_path_factory.mktemp("fuzz")
    runs = {t: FuzzRun(t, work) for t in TARGETS}
    try:
        yield runs
    finally:
        for run in runs.values():
            run.stop()


@pytest.mark.slow
@pytest.mark.timeout(SECONDS + 150)
@pytest.mark.skipif(not HAVE_ATHERIS, reason=f"atheris is not installed for {sys.executable}")
@pytest.mark.parametrize("target", list(TARGETS))
def test_fuzz_short_run(target: str, fuzz_runs: dict[str, FuzzRun]) -> None:
    run = fuzz_runs[target]
    code, log = run.result()
    crashes = sorted(p.name for p in run.artifacts.iterdir())
    tail = "\n".join(log.splitlines()[-40:])
    assert code == 0 and not crashes, f"{target}: exit {code}, artifacts {crashes}\n{tail}"
    units = re.search(r"stat::number_of_executed_units:\s*(\d+)", log)
    rate = re.search(r"stat::average_exec_per_sec:\s*(\d+)", log)
    assert units and int(units.group(1)) > 0, tail
    print(
        f"\nfuzz {target}: {units.group(1)} executions, "
        f"{rate.group(1) if rate else '?'} exec/s in {SECONDS} s"
    )
