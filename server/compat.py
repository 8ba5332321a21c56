"""Work-arounds for event-loop bugs the server must not inherit.

Theory of operation: the server writes a response as one ``transport.writelines(buffers)``.
Stock asyncio's socket transport got its own ``writelines`` in Python 3.12
(``_SelectorSocketTransport.writelines``), and some 3.12/3.13 releases have it wrong:

* it never calls ``pause_writing`` (CPython gh-127655), so a handler streaming to a client that
  does not read is never paused and buffers without bound;
* it does not check for a lost connection (gh-136234) and keeps buffering after a reset;
* an empty buffer in the list can keep the transport from ever finishing its close
  (gh-155888).

:func:`guard_writelines` gives such a transport an instance-level ``writelines`` that joins the
buffers and calls ``write``, which has none of these bugs. The join copies the bytes, a cost
paid only on stock asyncio 3.12+; netpoll and uvloop transports are left alone.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterable
from typing import Any

__all__ = ["guard_writelines"]

_BUGGY: Any = None
if sys.version_info >= (3, 12):
    from asyncio import selector_events

    _BUGGY = selector_events._SelectorSocketTransport.writelines


def guard_writelines(transport: asyncio.BaseTransport) -> None:
    """Route ``transport.writelines`` through ``write`` when it is stock asyncio's 3.12+ one."""
    if _BUGGY is None or getattr(type(transport), "writelines", None) is not _BUGGY:
        return
    write = transport.write  # type: ignore[attr-defined]

    def writelines(list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        data = b"".join(list_of_data)
        if data:
            write(data)

    transport.writelines = writelines  # type: ignore[attr-defined]
