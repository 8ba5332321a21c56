"""The contract between the HTTP connection layer and the application layers.

The connection layer (``server.connection``) parses bytes into a :class:`RequestHead`, then
hands one :class:`Exchange` per request to an *app handler*: ``async def handler(exchange)``.
The native framework (``server.app``), the ASGI adapter (``server.asgi``) and the in-memory
test client (``server.testing``) all sit on this one interface, so none of them knows how a
response is framed or written, and the connection layer knows nothing of routing.

Rules every implementation keeps:

* exactly one of ``respond`` / ``start`` is called per exchange (a second call raises
  :class:`ResponseStarted`); after ``start``, zero or more ``write``/``sendfile`` calls and
  one ``end``;
* header names and values are bytes; names are sent as given (lower-case is fine); a value or
  name containing CR, LF or NUL raises :class:`InvalidHeader` *before* anything is sent,
  so a handler can never split a response;
* ``Content-Length``, ``Transfer-Encoding``, ``Date``, ``Server`` and ``Connection`` are added
  by the connection layer when the handler did not supply them. Framing headers a handler does
  supply must frame what is sent: a ``Content-Length`` equal to the body (``respond``; for
  ``start`` it counts as ``content_length``), a ``Transfer-Encoding`` ending in ``chunked``
  (the body is then chunk-framed for it, never for an HTTP/1.0 client), never both; otherwise
  :class:`InvalidHeader` is raised before anything is sent, since a wrong length would make
  the client read the next response as part of this one;
* a 1xx status is not an answer (:class:`InvalidHeader`); a 204 or 304 sends no body, also
  when the handler streams one (it is counted, never sent);
* ``client_closed`` / ``wait_client_closed()`` tell a handler that waits without writing that
  the client has gone or sent its FIN; what it answers then is still sent;
* a handler may go on after its response is complete (work after the answer): the connection
  does not wait for it, and it is not cancelled when the client goes;
* if the handler returns without responding, the connection answers 500 when nothing was sent
  (400 or 413 instead when the request body broke its framing or the size limit: ``receive``
  raised, and the handler took it as a disconnect), and aborts the connection when a response
  was started but not ended.

A handler object may also have an ``answer_from_memory`` method (:class:`MemoryAnswering`):
a synchronous answer from memory, asked first for a request that has no body and nothing
unanswered before it. When it returns ``(status, headers, body)``, the connection frames and
writes that right away, with no exchange, no coroutine and no handler call (the open-file cache
of ``--static`` answers a hot file this way, as nginx does from its ``open_file_cache``);
``None`` sends the request the usual way. It must return exactly what the handler would send,
run no user code and not block. (A specific name, not ``ready``: a handler's own attribute must
not be taken for it by accident.) Its ``memory_paths`` attribute names the path prefixes it may
answer below, so that other requests cost the connection one lookup (remembered per path) and
no call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol

Headers = list[tuple[bytes, bytes]]
# Headers given to respond()/start(): only read, never kept or changed (a tuple may be shared).
ResponseHeaders = Sequence[tuple[bytes, bytes]]


class ExchangeError(Exception):
    """Base class of the errors an Exchange raises to its handler."""


class ResponseStarted(ExchangeError):
    """``respond``/``start`` called twice on one exchange."""


class InvalidHeader(ExchangeError):
    """A handler-supplied header name or value contains CR, LF, NUL or is otherwise invalid, or
    a framing header (Content-Length, Transfer-Encoding) does not frame the body sent."""


class ClientDisconnected(ExchangeError):
    """The client went away: mid-body on ``receive``, or while a response is written."""


class BodyTooLarge(ExchangeError):
    """The request body exceeds the configured limit (the connection answers 413)."""


@dataclass(slots=True)
class RequestHead:
    """A parsed request line and header block.

    ``headers`` keeps the order and duplicates of the wire, names lower-cased.
    ``path`` is percent-decoded exactly once (for routing); ``raw_path`` is the target's path
    exactly as received; ``query_string`` is the raw bytes after ``?`` (without it).
    """

    method: str
    path: str
    raw_path: bytes
    query_string: bytes
    http_version: str  # "1.0" or "1.1"
    headers: Headers
    keep_alive: bool = True
    client: tuple[str, int] | None = None
    server: tuple[str, int] | None = None
    scheme: str = "http"
    expect_continue: bool = False
    _state: dict[str, object] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def state(self) -> dict[str, object]:
        """Per-request scratch space for app layers (made on first use)."""
        st = self._state
        if st is None:
            st = self._state = {}
        return st

    def get_header(self, name: bytes, default: bytes | None = None) -> bytes | None:
        """First value of header ``name`` (lower-case bytes), or ``default``."""
        for k, v in self.headers:
            if k == name:
                return v
        return default


class Exchange(Protocol):
    """One request and its response on a connection (see the module docstring).

    The ``headers`` given to :meth:`respond` and :meth:`start` are only read, never kept or
    changed, and callers may share them between responses (static files pass a cached tuple):
    an exchange wrapper that adds headers must build a new sequence, not mutate the one given.
    """

    head: RequestHead

    async def receive(self) -> bytes:
        """Next chunk of the request body; ``b""`` once the body is complete.

        Sends ``100 Continue`` first when the client asked for it. Raises
        :class:`ClientDisconnected` if the peer goes away before the body is complete and
        :class:`BodyTooLarge` when the body passes the limit.
        """
        ...

    def respond(self, status: int, headers: ResponseHeaders, body: bytes) -> None:
        """Send a whole response at once (Content-Length computed). HEAD sends no body."""
        ...

    def start(
        self, status: int, headers: ResponseHeaders, content_length: int | None = None
    ) -> None:
        """Begin a streamed response; chunked on HTTP/1.1 when ``content_length`` is None."""
        ...

    async def write(self, chunk: bytes) -> None:
        """Send a body chunk; waits while the client is not reading (backpressure)."""
        ...

    async def sendfile(self, file: BinaryIO, offset: int, count: int) -> None:
        """Send ``count`` bytes of ``file`` from ``offset`` (zero-copy where the loop can)."""
        ...

    async def end(self) -> None:
        """Finish the response (final chunk for chunked encoding)."""
        ...

    @property
    def response_started(self) -> bool:
        """True once ``respond`` or ``start`` was called."""
        ...

    @property
    def disconnected(self) -> bool:
        """True once the client connection is gone."""
        ...

    @property
    def client_closed(self) -> bool:
        """True once the client is gone or has closed its sending side (a FIN: it will send
        nothing more; it may still read the answer, which is still sent)."""
        ...

    async def wait_client_closed(self) -> None:
        """Return once :attr:`client_closed` is true: for a handler that waits without
        writing (a long poll, an idle event stream) to notice a client that left."""
        ...


class AppHandler(Protocol):
    """What the connection layer calls for each request."""

    async def __call__(self, exchange: Exchange) -> None: ...


MemoryAnswer = tuple[int, ResponseHeaders, bytes]


class MemoryAnswering(AppHandler, Protocol):
    """An app handler that can answer some requests from memory (see the module docstring)."""

    memory_paths: tuple[str, ...]  # it is asked only for paths starting with one of these

    def answer_from_memory(self, head: RequestHead) -> MemoryAnswer | None:
        """``(status, headers, body)`` for a bodyless request this handler would answer with
        exactly that, or None. Called only when nothing before it is unanswered."""
        ...
