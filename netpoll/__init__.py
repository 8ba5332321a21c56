"""netpoll: an asyncio-compatible event loop on epoll/kqueue/poll."""
