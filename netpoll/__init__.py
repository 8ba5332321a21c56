"""netpoll: an asyncio-compatible event loop on epoll (Linux), kqueue (BSD/macOS) or poll.

Use it like uvloop::

    import netpoll
    netpoll.run(main())                    # run one coroutine on a new netpoll loop
    netpoll.install()                      # make netpoll the default loop (sets the policy)
    asyncio.run(main(), loop_factory=netpoll.new_event_loop)   # Python 3.12+

``Loop(poller="poll")`` or ``NETPOLL_POLLER=poll`` forces a backend. ``loop.stats()`` returns
the loop's counters. :func:`sendfile` and :func:`splice` send file and pipe bodies without
copying them through Python where the loop and platform allow.
"""

from __future__ import annotations

from .loop import EventLoopPolicy, Loop, install, new_event_loop, run
from .pollers import AVAILABLE as POLLERS
from .zerocopy import sendfile, splice

__all__ = [
    "POLLERS",
    "EventLoopPolicy",
    "Loop",
    "install",
    "new_event_loop",
    "run",
    "sendfile",
    "splice",
]
__version__ = "0.1.0"
