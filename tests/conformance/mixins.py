"""Bind the stdlib's loop-parameterised test mixins to the loop under test.

For each mixin module, ``MIXINS`` names the stock concrete class used as the template (the one
for the always-available default selector, so its bases are exactly the stock mixins, e.g.
``UnixEventLoopTestsMixin, SubprocessTestsMixin, test_utils.TestCase`` in ``test_events``, with
the 3.11 child-watcher setUp), the hook it overrides (``create_event_loop`` or ``new_loop``), and
the stock concrete classes that build stock loops with an explicit selector: those are dropped
from the run, because the generated class replaces them.

The generated class keeps the stock module as ``__module__`` (so ``setUpModule`` /
``tearDownModule`` apply and ids read ``test.test_asyncio.test_events.LoopUnderTestEventLoopTests
.test_create_server``) and is not added to the module's namespace.
"""

from __future__ import annotations

import types
import unittest
from dataclasses import dataclass

from .loops import LoopUnderTest

__all__ = ["MIXINS", "MixinSpec", "bind"]

_SELECTOR_CLASSES = (
    "SelectEventLoopTests",
    "EPollEventLoopTests",
    "PollEventLoopTests",
    "KqueueEventLoopTests",
)


@dataclass(frozen=True)
class MixinSpec:
    template: str  # stock concrete class whose bases (mixins) the generated class inherits
    mixin: str  # the mixin the template must derive from (checked, documents intent)
    hook: str  # method returning the loop: "create_event_loop" or "new_loop"
    generated: str  # name of the generated class
    replaces: tuple[str, ...]  # stock concrete classes left out of the run


MIXINS: dict[str, MixinSpec] = {
    "test_events": MixinSpec(
        "SelectEventLoopTests",
        "EventLoopTestsMixin",
        "create_event_loop",
        "LoopUnderTestEventLoopTests",
        _SELECTOR_CLASSES,
    ),
    "test_sock_lowlevel": MixinSpec(
        "SelectEventLoopTests",
        "BaseSockTestsMixin",
        "create_event_loop",
        "LoopUnderTestSockTests",
        _SELECTOR_CLASSES,
    ),
    "test_sendfile": MixinSpec(
        "SelectEventLoopTests",
        "SendfileTestsBase",
        "create_event_loop",
        "LoopUnderTestSendfileTests",
        _SELECTOR_CLASSES,
    ),
    "test_server": MixinSpec(
        "SelectorStartServerTests",
        "BaseStartServer",
        "new_loop",
        "LoopUnderTestStartServerTests",
        ("SelectorStartServerTests",),
    ),
    "test_buffered_proto": MixinSpec(
        "BufferedProtocolSelectorTests",
        "BaseTestBufferedProtocol",
        "new_loop",
        "LoopUnderTestBufferedProtocolTests",
        ("BufferedProtocolSelectorTests",),
    ),
    "test_sslproto": MixinSpec(
        "SelectorStartTLSTests",
        "BaseStartTLS",
        "new_loop",
        "LoopUnderTestStartTLSTests",
        ("SelectorStartTLSTests",),
    ),
}


def bind(module: types.ModuleType, lut: LoopUnderTest) -> type[unittest.TestCase]:
    """Return ``module``'s mixin tests as a TestCase whose loop hook builds the loop under test."""
    spec = MIXINS[module.__name__.rpartition(".")[2]]
    template = getattr(module, spec.template)
    if spec.mixin not in {base.__name__ for base in template.__mro__}:
        raise TypeError(f"{template.__qualname__} no longer derives from {spec.mixin}")

    def make_loop(self: unittest.TestCase) -> object:
        return lut.new_loop()

    make_loop.__name__ = make_loop.__qualname__ = spec.hook
    namespace = {
        spec.hook: make_loop,
        "__module__": module.__name__,
        "__qualname__": spec.generated,
        "__doc__": f"{spec.mixin} on the loop under test ({lut.label}).",
    }
    return type(spec.generated, (template,), namespace)
