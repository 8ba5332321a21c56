"""Shared plumbing of the atheris harnesses in ``fuzz/``.

Theory of operation
-------------------
Each harness module (``http11_fuzz.py``, ``static_fuzz.py``, ``range_fuzz.py``) defines a plain
``test_one_input(data: bytes) -> None`` that raises :class:`AssertionError` (or anything else)
when an invariant breaks, and calls :func:`run` under ``if __name__ == "__main__"``. The harness
functions never import atheris, so ``tests/test_fuzz.py`` can replay the seed corpus and the
regression inputs on any interpreter; :func:`run` imports atheris, instruments every function
and method of the loaded ``server`` modules (:func:`instrument`; httptools/llhttp is C and is
exercised but not coverage-guided) and hands ``sys.argv`` to libFuzzer, so every
libFuzzer flag works (``-max_total_time=60``, ``-runs=N``, ``-dict=fuzz/http.dict``,
``-artifact_prefix=DIR/``, corpus directories: the first one receives new inputs).
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

FUZZ_DIR = Path(__file__).resolve().parent
REPO = FUZZ_DIR.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

Target = Callable[[bytes], None]


def corpus_files(target: str) -> list[Path]:
    """Seed and regression inputs of ``target`` (``fuzz/corpus/<target>/*``), sorted."""
    out: list[Path] = []
    for sub in ("corpus", "regressions"):
        d = FUZZ_DIR / sub / target
        if d.is_dir():
            out.extend(sorted(p for p in d.iterdir() if p.is_file()))
    return out


def replay(target: str, fn: Target) -> int:
    """Run ``fn`` on every corpus and regression file of ``target``; the count."""
    files = corpus_files(target)
    for path in files:
        try:
            fn(path.read_bytes())
        except Exception as exc:
            raise AssertionError(f"{target}: input {path} fails: {exc!r}") from exc
    return len(files)


def instrument(atheris: Any, prefixes: tuple[str, ...] = ("server", "fuzz")) -> int:
    """Coverage-instrument every function and method of the loaded ``server`` modules.

    ``atheris.instrument_all()`` would also patch the whole standard library, which takes
    minutes on some large functions; our own code is what needs the guidance.
    """
    count = 0
    seen: set[int] = set()
    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith(prefixes):
            continue
        stack: list[Any] = list(vars(module).values())
        while stack:
            obj = stack.pop()
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            if inspect.isfunction(obj) and obj.__module__ == name:
                atheris.instrument_func(obj)
                count += 1
            elif inspect.isclass(obj) and obj.__module__ == name:
                for attr in vars(obj).values():
                    if isinstance(attr, (staticmethod, classmethod)):
                        attr = attr.__func__
                    elif isinstance(attr, property):
                        stack.extend(f for f in (attr.fget, attr.fset) if f is not None)
                        continue
                    stack.append(attr)
    return count


def run(fn: Target) -> None:
    """Fuzz ``fn`` with atheris/libFuzzer using ``sys.argv`` (never returns normally)."""
    import atheris

    instrument(atheris)
    argv = list(sys.argv)
    if not any(a.startswith("-dict=") for a in argv) and (FUZZ_DIR / "http.dict").exists():
        argv.insert(1, f"-dict={FUZZ_DIR / 'http.dict'}")
    atheris.Setup(argv, fn)
    sys.stdout.flush()
    atheris.Fuzz()
