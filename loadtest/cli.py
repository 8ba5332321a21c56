"""Command line of the load-test kit: ``python -m loadtest SUBCOMMAND [options]``.

Theory of operation. Each subcommand lives in its own module that exposes two functions,
``add_arguments(parser)`` and ``main(args) -> int`` (the exit status). :data:`SUBCOMMANDS`
lists them by name with the module path. Building the parser imports each module, so the
modules keep their heavy dependencies (matplotlib, locust, psutil) inside functions: ``run``
does not pay for matplotlib until its report, and ``bench`` never needs locust.

=========  =======================  ===============================================================
command    module                   what it does
=========  =======================  ===============================================================
run        loadtest.runner          one locust scenario against a server it starts (or --target)
bench      loadtest.bench           the side-by-side wrk comparison -> bench.md/json/png
scaleout   loadtest.scaleout        HAProxy + two servers + locust master/2 workers on loopback
soak       loadtest.soak            long-running stability run: server RSS and fds over time
idlemem    loadtest.idlemem         server memory per idle keep-alive connection, side by side
instrcount loadtest.instrcount      instructions per request of the server layers (callgrind)
=========  =======================  ===============================================================

Adding a subcommand: write ``loadtest/NAME.py`` with ``add_arguments`` and ``main``, and add one
line to :data:`SUBCOMMANDS`. A listed module that does not exist is left out of the command line.
(``loadtest.loopbench``, ``loadtest.staticbench`` and ``loadtest.workersbench`` run with
``python -m``.)
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
from collections.abc import Sequence

#: name -> (module, one-line help). Order is the order of ``--help``.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "run": ("loadtest.runner", "run a locust scenario headless and write its report"),
    "bench": ("loadtest.bench", "side-by-side benchmark with wrk: bench.md, bench.json, bench.png"),
    "scaleout": ("loadtest.scaleout", "HAProxy + 2 servers + locust master/2 workers on loopback"),
    "soak": ("loadtest.soak", "long-running stability run: RSS and fds over time"),
    "idlemem": ("loadtest.idlemem", "server memory per idle keep-alive connection, side by side"),
    "instrcount": ("loadtest.instrcount", "instructions per request of the server layers"),
}


def available() -> dict[str, tuple[str, str]]:
    """The subcommands whose module exists."""
    return {
        name: (mod, text)
        for name, (mod, text) in SUBCOMMANDS.items()
        if importlib.util.find_spec(mod) is not None
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m loadtest", description="netpoll load tests and benchmarks"
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (mod, text) in available().items():
        sp = sub.add_parser(name, help=text, description=text)
        module = importlib.import_module(mod)
        module.add_arguments(sp)
        sp.set_defaults(_module=mod)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module = importlib.import_module(args._module)
    return int(module.main(args))
