"""The loop under test: which class, how to build one, and how to make asyncio default to it.

``--loop asyncio`` is stock ``asyncio.SelectorEventLoop`` (epoll on Linux) and changes nothing
in asyncio. ``--loop netpoll`` is ``netpoll.Loop``; :meth:`LoopUnderTest.install` patches what
asyncio falls back to when a test resets the policy (see the package docstring for the list and
the reason), so *every* loop a policy-based test creates is a netpoll loop. The poller backend is
chosen through ``$NETPOLL_POLLER``, which ``netpoll.Loop()`` reads when given no ``poller``: that
is the only way to reach the policy's argument-less ``_loop_factory()``.

:meth:`LoopUnderTest.install` also counts constructed loops (a wrapper around the class's
``__init__`` in this process), so the summary proves the run exercised the intended loop.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["LOOPS", "LoopUnderTest"]

LOOPS: tuple[str, ...] = ("asyncio", "netpoll")


class LoopUnderTest:
    """One loop implementation (plus poller backend) and the patches that make it the default."""

    def __init__(self, name: str, poller: str | None = None) -> None:
        if name not in LOOPS:
            raise ValueError(f"unknown loop {name!r} (have: {', '.join(LOOPS)})")
        if poller is not None and name != "netpoll":
            raise ValueError("--poller only applies to --loop netpoll")
        self.name = name  # "asyncio" | "netpoll"
        self.poller = poller  # None: the loop's default backend
        self.created = 0  # loops of the class under test constructed since install()
        self._patched: list[tuple[Any, str, Any]] = []  # (owner, attribute, original) to undo
        self.loop_class: type[asyncio.AbstractEventLoop] = self._load_class()

    def __repr__(self) -> str:
        return (
            f"<LoopUnderTest {self.label} class={self.loop_class.__module__}."
            f"{self.loop_class.__qualname__} created={self.created} patches={len(self._patched)}>"
        )

    @property
    def label(self) -> str:
        """``asyncio``, ``netpoll`` or ``netpoll/poll``: how summaries name this loop."""
        return self.name if self.poller is None else f"{self.name}/{self.poller}"

    def _load_class(self) -> type[asyncio.AbstractEventLoop]:
        if self.name == "asyncio":
            # What asyncio.SelectorEventLoop is on Unix, named so the patches cannot alias it.
            return asyncio.unix_events._UnixSelectorEventLoop  # type: ignore[attr-defined,no-any-return]
        if self.poller is not None:
            os.environ["NETPOLL_POLLER"] = self.poller  # also inherited by child interpreters
        import netpoll

        return netpoll.Loop  # type: ignore[no-any-return]

    def new_loop(self) -> asyncio.AbstractEventLoop:
        """Build a loop under test (the hook the generated mixin classes call)."""
        if self.poller is not None:
            return self.loop_class(poller=self.poller)  # type: ignore[call-arg]
        return self.loop_class()

    def policy_class(self) -> type[asyncio.AbstractEventLoopPolicy]:
        if self.name == "asyncio":
            return asyncio.DefaultEventLoopPolicy  # type: ignore[no-any-return]
        import netpoll

        return netpoll.EventLoopPolicy  # type: ignore[no-any-return]

    def install(self) -> None:
        """Count constructions; for netpoll, patch asyncio's fallbacks and set the policy."""
        self._count_constructions()
        if self.name == "netpoll":
            policy = self.policy_class()
            for owner in (asyncio, asyncio.unix_events):
                self._patch(owner, "DefaultEventLoopPolicy", policy)
                self._patch(owner, "SelectorEventLoop", self.loop_class)
                if hasattr(owner, "EventLoop"):  # 3.13+: asyncio.EventLoop alias
                    self._patch(owner, "EventLoop", self.loop_class)
            asyncio.set_event_loop_policy(policy())
        self.check()

    def check(self) -> None:
        """Fail fast if the policy path does not produce the loop under test."""
        loop = asyncio.new_event_loop()
        try:
            if not isinstance(loop, self.loop_class):
                raise RuntimeError(f"asyncio.new_event_loop() gave {loop!r}, not {self.label}")
        finally:
            loop.close()
            self.created -= 1  # the probe is not part of the run

    def uninstall(self) -> None:
        for owner, attr, original in reversed(self._patched):
            setattr(owner, attr, original)
        self._patched.clear()
        asyncio.set_event_loop_policy(None)

    def _patch(self, owner: Any, attr: str, value: Any) -> None:
        self._patched.append((owner, attr, getattr(owner, attr)))
        setattr(owner, attr, value)

    def _count_constructions(self) -> None:
        cls = self.loop_class
        original: Callable[..., None] = cls.__init__

        def counting_init(loop: Any, *args: Any, **kwargs: Any) -> None:
            self.created += 1  # subclasses (test helpers) that chain up count too
            original(loop, *args, **kwargs)

        self._patch(cls, "__init__", counting_init)


def interpreter_label() -> str:
    return ".".join(str(part) for part in sys.version_info[:3])
