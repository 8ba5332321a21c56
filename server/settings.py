"""Settings from the environment and a TOML file, layered under the command line.

Theory of operation
-------------------
Precedence, highest first::

    command line  >  environment NETPOLL_<NAME>  >  config file (--config FILE.toml)  >  defaults

Every option of the CLI parser (``server.cli.build_parser``) is a setting whose *name* is the
option's destination: ``--max-body-size`` is ``max_body_size``, read from ``$NETPOLL_MAX_BODY_SIZE``
or from ``max_body_size = 1048576`` (or ``max-body-size``) in the file. :func:`layered` reads
the file, then the environment, converts each value with the option's own argparse converter
(so ``--port 70000``, ``NETPOLL_PORT=70000`` and ``port = 70000`` all fail the same way) and
returns the values; the CLI installs them as the parser's defaults, so anything given on the
command line still wins. The file is named by ``--config`` on the command line, else
``$NETPOLL_CONFIG``.

File format: top-level keys, or the same keys under a ``[server]`` table. Booleans are TOML
booleans (``access_log = true``; in the environment ``1/true/yes/on`` or ``0/false/no/off``);
``none``/``off`` switch an optional value off; ``static`` is a list of ``"PREFIX=DIR"`` strings
(``NETPOLL_STATIC`` takes them comma-separated). Environment variables with the prefix that
name no setting (``NETPOLL_POLLER`` belongs to the loop) are ignored; an unknown key in the file
is an error, since it is most likely a typo.
"""

from __future__ import annotations

import argparse
import tomllib
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["ENV_PREFIX", "SettingsError", "config_path", "layered", "read_file"]

ENV_PREFIX = "NETPOLL_"
_SKIP = {"help", "target", "config_file"}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class SettingsError(ValueError):
    """A bad value or key in the environment or the config file (message names the source)."""


def config_path(argv: Sequence[str], environ: Mapping[str, str]) -> str | None:
    """The config file named by ``--config FILE`` / ``--config=FILE``, else ``$NETPOLL_CONFIG``."""
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return environ.get(ENV_PREFIX + "CONFIG") or None


def read_file(path: str) -> dict[str, Any]:
    """The settings table of a TOML file (top level, with ``[server]`` merged over it)."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise SettingsError(f"cannot read config file {path!r}: {exc.strerror or exc}")
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"config file {path!r} is not valid TOML: {exc}")
    table = {k: v for k, v in data.items() if k != "server"}
    server = data.get("server", {})
    if not isinstance(server, dict):
        raise SettingsError(f"config file {path!r}: [server] must be a table")
    table.update(server)
    return {k.replace("-", "_"): v for k, v in table.items()}


def _actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Setting name -> option: the destination, plus each long option's own name as an alias
    (``metrics`` for ``--metrics``, whose destination is ``metrics_path``)."""
    out: dict[str, argparse.Action] = {}
    for a in parser._actions:
        if a.dest in _SKIP or not a.option_strings:
            continue
        out[a.dest] = a
        for opt in a.option_strings:
            if opt.startswith("--") and not opt.startswith("--no-"):
                out.setdefault(opt[2:].replace("-", "_"), a)
    return out


def _is_flag(action: argparse.Action) -> bool:
    return isinstance(action, argparse._StoreTrueAction | argparse.BooleanOptionalAction)


def _convert_text(action: argparse.Action, text: str) -> Any:
    try:
        value = action.type(text) if callable(action.type) else text  # type: ignore[misc]
    except (argparse.ArgumentTypeError, ValueError, TypeError) as exc:
        raise SettingsError(str(exc) or f"invalid value {text!r}")
    if action.choices is not None and value not in action.choices:
        choices = ", ".join(map(str, action.choices))
        raise SettingsError(f"invalid choice {value!r} (choose from {choices})")
    return value


def _from_env(action: argparse.Action, text: str) -> Any:
    if _is_flag(action):
        low = text.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise SettingsError(f"expected a boolean (1/0, true/false, yes/no, on/off), got {text!r}")
    if isinstance(action, argparse._AppendAction):
        return [_convert_text(action, part.strip()) for part in text.split(",") if part.strip()]
    return _convert_text(action, text)


def _from_file(action: argparse.Action, value: Any) -> Any:
    if _is_flag(action):
        if not isinstance(value, bool):
            raise SettingsError(f"expected true or false, got {value!r}")
        return value
    if isinstance(action, argparse._AppendAction):
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise SettingsError(f"expected a list of strings, got {value!r}")
        return [_convert_text(action, v) for v in value]
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise SettingsError(f"expected a string or a number, got {value!r}")
    return _convert_text(action, str(value))


def layered(
    parser: argparse.ArgumentParser, argv: Sequence[str], environ: Mapping[str, str]
) -> tuple[dict[str, Any], str | None]:
    """Values from the config file overlaid with the environment, and the file's path.

    Raises :class:`SettingsError` naming the source (file or variable) of a bad value.
    """
    actions = _actions(parser)
    out: dict[str, Any] = {}
    path = config_path(argv, environ)
    if path:
        for key, value in read_file(path).items():
            action = actions.get(key)
            if action is None:
                raise SettingsError(f"config file {path!r}: unknown setting {key!r}")
            try:
                out[action.dest] = _from_file(action, value)
            except SettingsError as exc:
                raise SettingsError(f"config file {path!r}: {key}: {exc}")
    for name, action in actions.items():
        var = ENV_PREFIX + name.upper()
        if var in environ:
            try:
                out[action.dest] = _from_env(action, environ[var])
            except SettingsError as exc:
                raise SettingsError(f"environment {var}: {exc}")
    return out, path
