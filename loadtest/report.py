"""Tables and plots for load-test runs and benchmarks (matplotlib, Agg backend, no display).

Theory of operation. Everything here reads files or plain dicts and writes files; nothing runs
a server or a client, so it can be tested on hand-made CSVs.

* A locust run (``--csv PREFIX --csv-full-history``) leaves ``PREFIX_stats_history.csv``: one
  row per second per endpoint plus an ``Aggregated`` row. :func:`read_history` keeps the
  aggregated rows; :func:`plot_history` draws requests/s (and failures/s) and p50/p95/p99
  latency against seconds since the start. :func:`write_run_report` writes ``requests.png``,
  ``latency.png`` and ``summary.md`` (per-endpoint table from ``PREFIX_stats.csv``).
* A benchmark (:mod:`loadtest.bench`) is a list of result dicts; :func:`bench_markdown` makes
  one table per workload (rps, server CPU µs/request, ratios vs the reference server) and
  :func:`plot_bench` one bar chart with a panel per workload.

Locust writes ``N/A`` for a percentile before the first response; such cells become NaN and
leave a gap in the line.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

PERCENTILES = ("50%", "95%", "99%")


def _num(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "", "N/A") else math.nan
    except ValueError:
        return math.nan


def read_history(path: Path) -> list[dict[str, float]]:
    """Aggregated rows of a locust ``*_stats_history.csv`` as floats (``t`` = seconds from start)."""
    rows: list[dict[str, float]] = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row.get("Name") != "Aggregated":
                continue
            rows.append(
                {
                    "timestamp": _num(row["Timestamp"]),
                    "users": _num(row["User Count"]),
                    "rps": _num(row["Requests/s"]),
                    "fps": _num(row["Failures/s"]),
                    **{p: _num(row.get(p)) for p in PERCENTILES},
                    "requests": _num(row["Total Request Count"]),
                    "failures": _num(row["Total Failure Count"]),
                }
            )
    if rows:
        t0 = rows[0]["timestamp"]
        for r in rows:
            r["t"] = r["timestamp"] - t0
    return rows


def plot_history(rows: Sequence[dict[str, float]], out_dir: Path, title: str) -> list[Path]:
    """Draw ``requests.png`` and ``latency.png`` into ``out_dir``; returns their paths."""
    t = [r["t"] for r in rows]
    out: list[Path] = []

    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.plot(t, [r["rps"] for r in rows], label="requests/s", color="tab:blue")
    ax.plot(t, [r["fps"] for r in rows], label="failures/s", color="tab:red")
    ax2 = ax.twinx()
    ax2.plot(t, [r["users"] for r in rows], label="users", color="tab:gray", linestyle=":")
    ax2.set_ylabel("users")
    ax.set_xlabel("seconds")
    ax.set_ylabel("requests per second")
    ax.set_title(f"{title}: throughput")
    ax.grid(True, alpha=0.3)
    lines = ax.get_legend_handles_labels()
    more = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], loc="lower right")
    fig.tight_layout()
    out.append(out_dir / "requests.png")
    fig.savefig(out[-1], dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for p, color in zip(PERCENTILES, ("tab:green", "tab:orange", "tab:red"), strict=True):
        ax.plot(t, [r[p] for r in rows], label=f"p{p.rstrip('%')}", color=color)
    ax.set_xlabel("seconds")
    ax.set_ylabel("response time (ms)")
    ax.set_title(f"{title}: latency percentiles (rolling window)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left")
    fig.tight_layout()
    out.append(out_dir / "latency.png")
    fig.savefig(out[-1], dpi=100)
    plt.close(fig)
    return out


def stats_table(stats_csv: Path) -> str:
    """Per-endpoint markdown table from a locust ``*_stats.csv``."""
    head = "| type | name | requests | failures | req/s | p50 ms | p95 ms | p99 ms | max ms |"
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    with open(stats_csv, newline="") as f:
        for row in csv.DictReader(f):
            lines.append(
                "| {} | {} | {} | {} | {:.1f} | {} | {} | {} | {:.0f} |".format(
                    row["Type"] or "",
                    row["Name"].replace("|", "\\|"),
                    row["Request Count"],
                    row["Failure Count"],
                    _num(row["Requests/s"]),
                    row["50%"],
                    row["95%"],
                    row["99%"],
                    _num(row["Max Response Time"]),
                )
            )
    return "\n".join(lines)


def write_run_report(
    out_dir: Path, scenario: str, *, users: int, duration: float, target: str | None
) -> list[Path]:
    """Plots and ``summary.md`` for a finished run in ``out_dir`` (prefix ``locust``)."""
    written: list[Path] = []
    history = out_dir / "locust_stats_history.csv"
    stats = out_dir / "locust_stats.csv"
    if history.exists():
        rows = read_history(history)
        if rows:
            written += plot_history(rows, out_dir, scenario)
    if stats.exists():
        summary = out_dir / "summary.md"
        text = [
            f"# {scenario}: {users} users, {duration:.0f} s, target {target}",
            "",
            stats_table(stats),
            "",
            "![requests](requests.png)",
            "",
            "![latency](latency.png)",
            "",
        ]
        summary.write_text("\n".join(text))
        written.append(summary)
    return written


# --- benchmark tables and chart ---------------------------------------------------------------


def _fmt(value: float | None, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def bench_summary(results: Iterable[dict[str, Any]], reference: str = "uvicorn") -> str:
    """One table, a row per server and a column per workload: server CPU µs per request and its
    ratio to ``reference`` (the README's benchmark table)."""
    rows = list(results)
    workloads: list[str] = []
    for r in rows:
        if r["workload"] not in workloads:
            workloads.append(r["workload"])
    cell: dict[tuple[str, str], dict[str, Any]] = {(r["server"], r["workload"]): r for r in rows}
    servers: list[str] = []
    for r in sorted(rows, key=lambda r: (r["workload"] != workloads[0], r.get("cpu_us") or 1e18)):
        if r["server"] not in servers:
            servers.append(r["server"])
    out = [
        "| server | " + " | ".join(workloads) + " |",
        "|---|" + "---:|" * len(workloads),
    ]
    for name in servers:
        cells = []
        for w in workloads:
            r, ref = cell.get((name, w)), cell.get((reference, w))
            if not r or not r.get("cpu_us"):
                cells.append("-")
                continue
            text = _fmt(r["cpu_us"], 1)
            if ref and ref.get("cpu_us"):
                text += f" ({r['cpu_us'] / ref['cpu_us']:.2f}x)"
            cells.append(text)
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def bench_markdown(
    results: Iterable[dict[str, Any]], reference: str = "uvicorn", notes: Sequence[str] = ()
) -> str:
    """One markdown table per workload. Result dicts carry ``workload``, ``server``, ``rps``,
    ``cpu_us`` (server CPU µs per request), ``errors`` and optionally ``note``."""
    by_workload: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_workload.setdefault(r["workload"], []).append(r)
    out: list[str] = []
    for workload, rows in by_workload.items():
        ref = next((r for r in rows if r["server"] == reference and r.get("rps")), None)
        out += [f"### {workload}", ""]
        out.append(
            f"| server | req/s | server CPU µs/req | req/s vs {reference} "
            f"| CPU/req vs {reference} | errors |"
        )
        out.append("|---|---:|---:|---:|---:|---:|")
        for r in sorted(rows, key=lambda r: (r.get("cpu_us") is None, r.get("cpu_us") or 0)):
            if not r.get("rps"):
                out.append(f"| {r['server']} | - | - | - | - | {r.get('note', 'failed')} |")
                continue
            rps_ratio = r["rps"] / ref["rps"] if ref else None
            cpu_ratio = r["cpu_us"] / ref["cpu_us"] if ref and ref.get("cpu_us") else None
            out.append(
                f"| {r['server']} | {_fmt(r['rps'])} | {_fmt(r['cpu_us'], 2)} "
                f"| {_fmt(rps_ratio, 2)}{'x' if rps_ratio else ''} "
                f"| {_fmt(cpu_ratio, 2)}{'x' if cpu_ratio else ''} | {r.get('errors', 0)} |"
            )
        out.append("")
    if notes:
        out += ["Notes:", "", *(f"- {n}" for n in notes), ""]
    return "\n".join(out)


def plot_bench(results: Sequence[dict[str, Any]], out_png: Path) -> Path:
    """Horizontal bars per workload: server CPU µs per request (lower is better) and req/s."""
    workloads: list[str] = []
    for r in results:
        if r["workload"] not in workloads:
            workloads.append(r["workload"])
    n = max(1, len(workloads))
    fig, axes = plt.subplots(n, 2, figsize=(12, 1.2 + 0.45 * len(results) + 0.6 * n), squeeze=False)
    for i, workload in enumerate(workloads):
        rows = [r for r in results if r["workload"] == workload and r.get("rps")]
        rows.sort(key=lambda r: r["cpu_us"], reverse=True)
        names = [r["server"] for r in rows]
        colors = ["tab:blue" if "netpoll" in r["server"] else "tab:gray" for r in rows]
        ax_cpu, ax_rps = axes[i]
        ax_cpu.barh(names, [r["cpu_us"] for r in rows], color=colors)
        ax_cpu.set_title(f"{workload}: server CPU µs/request (lower is better)", fontsize=9)
        ax_rps.barh(names, [r["rps"] for r in rows], color=colors)
        ax_rps.set_title(f"{workload}: requests/s", fontsize=9)
        for ax in (ax_cpu, ax_rps):
            ax.tick_params(labelsize=8)
            ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png
