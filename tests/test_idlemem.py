"""The idle-memory benchmark runs end to end against our server and prints its table.

``python -m loadtest.idlemem`` starts the server in a subprocess, holds 500 idle keep-alive
connections from a client process, and reports KiB per connection; the figure itself is not
asserted (it depends on the machine), only that every connection was held and measured.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_idlemem_table_for_our_server(tmp_path: Path) -> None:
    out = tmp_path / "idlemem.md"
    args = ["--connections", "500", "--servers", "netpoll-native", "--per-client", "250"]
    proc = subprocess.run(
        [sys.executable, "-m", "loadtest.idlemem", *args, "--timeout", "60", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = out.read_text()
    assert "| server | connections held |" in table
    row = re.search(r"^\| netpoll-native \| (\d+) \|([^\n]*)$", table, re.M)
    assert row is not None, table
    assert int(row.group(1)) == 500
    figures = [c.strip() for c in row.group(2).split("|") if c.strip()]
    assert len(figures) == 5 and all(re.fullmatch(r"-?\d+\.\d+|n/a", f) for f in figures)
    assert table in proc.stdout


def test_markdown_notes_a_failed_server() -> None:
    from loadtest.idlemem import markdown

    text = markdown([{"server": "x", "note": "did not start"}])
    assert "| x | did not start |" in text
