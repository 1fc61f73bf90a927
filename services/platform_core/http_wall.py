"""The first gate of our HTTP servers (the proxy and the tenant API): uvicorn's httptools
protocol plus what only the connection can see, before any app is called.

llhttp (under httptools) is a strict parser: it refuses bare-LF line ends, obs-fold header
continuations, repeated Content-Length, Content-Length with Transfer-Encoding, malformed chunk
sizes and control bytes, before the app is called. It has no notion of time or size, though,
and uvicorn arms no timer until a first response is sent. This subclass adds:

- a **header timeout**: a client must complete its request head within ``header_timeout``
  seconds of connecting (or of the first byte of its next request on a kept-alive connection),
  else it is answered 408 and disconnected — a slowloris client cannot hold connections open;
- a **body idle timeout**: a request body that stops arriving for ``body_timeout`` seconds
  (while we are reading) is cut off the same way — a client cannot park requests in the
  middle of their bodies, each holding one of its tenant's concurrency slots;
- a cap on the size of a request head (llhttp buffers headers without limit): 431;
- trailer fields of chunked bodies dropped (uvicorn would merge them into the headers);
- absolute-form targets (``GET http://host/path``): the target's host must be the Host header
  (RFC 9112 lets the target override Host; we route by Host, so the two must agree);
- a **lingering close**: when the app answers without reading the whole body (a 413, say)
  and closes, or a head is refused as too large, we half-close (FIN after the answer) and read and drop what the client still
  sends for up to ``linger`` seconds and ``linger_bytes`` bytes, as nginx's lingering_close:
  closing at once with bytes still arriving makes the kernel send a reset, and the client
  would lose the answer; past the bounds the connection is closed all the same;
- the parser's refusals answered in the server's own error shape (``WallAnswers``): Matrix
  errors for the proxy, ``application/problem+json`` for the API.

The limits and the answers are parameters: ``guarded_protocol(...)`` makes the class that
``uvicorn.run(http=...)`` takes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

DEFAULT_HEADER_TIMEOUT_S = 10.0
DEFAULT_BODY_TIMEOUT_S = 60.0  # between two reads of a body, as nginx's client_body_timeout
MAX_HEAD_BYTES = 64 * 1024
DEFAULT_LINGER_S = 2.0
DEFAULT_LINGER_BYTES = 16 * 1024 * 1024


def _answer(status: int, content_type: bytes, body: dict[str, Any]) -> bytes:
    payload = json.dumps(body).encode()
    return b"".join(
        [
            STATUS_LINE[status],
            b"content-type: " + content_type + b"\r\n",
            b"content-length: " + str(len(payload)).encode() + b"\r\n",
            b"connection: close\r\n",
            b"\r\n",
            payload,
        ]
    )


@dataclass(frozen=True)
class WallAnswers:
    """The complete responses (status line to body) the gate answers its refusals with."""

    malformed: bytes
    target_mismatch: bytes
    head_timeout: bytes
    body_timeout: bytes
    head_too_large: bytes

    @classmethod
    def build(cls, render: Callable[[int, str, str], bytes]) -> WallAnswers:
        """``render(status, title, detail)`` → the bytes of one answer."""
        return cls(
            malformed=render(400, "Bad request", "Malformed HTTP request"),
            target_mismatch=render(
                400, "Bad request", "The request target names another host than the Host header"
            ),
            head_timeout=render(408, "Request timeout", "Request head not received in time"),
            body_timeout=render(408, "Request timeout", "Request body not received in time"),
            head_too_large=render(431, "Request header fields too large", "Request head too large"),
        )


def _matrix_error(status: int, _title: str, error: str) -> bytes:
    errcode = "M_UNRECOGNIZED" if status == 400 else "M_UNKNOWN"
    return _answer(status, b"application/json", {"errcode": errcode, "error": error})


def _problem(status: int, title: str, detail: str) -> bytes:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    return _answer(status, b"application/problem+json", body)


MATRIX_ANSWERS = WallAnswers.build(_matrix_error)  # the homeserver proxy
PROBLEM_ANSWERS = WallAnswers.build(_problem)  # the tenant API (RFC 9457)


class _TargetMismatch(Exception):
    pass


def _host_only(authority: bytes) -> bytes:
    host = authority.strip().lower()
    if host.startswith(b"["):
        return host[: host.find(b"]") + 1]
    return host.rsplit(b":", 1)[0].rstrip(b".")


class _LingeringTransport:
    """The connection's transport as uvicorn sees it: ``close()`` asks the protocol, which
    may linger first (and is "closing" meanwhile: uvicorn starts nothing more on it)."""

    def __init__(self, transport: asyncio.Transport, protocol: GuardedHttpToolsProtocol) -> None:
        self._transport = transport
        self._protocol = protocol

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def close(self) -> None:
        self._protocol._close_or_linger()

    def is_closing(self) -> bool:
        return self._protocol._lingering or self._transport.is_closing()


class _ListEvent(asyncio.Event):
    """An ``asyncio.Event`` whose waiters are kept in a list instead of a deque: uvicorn makes
    one per connection and one per request, an empty deque is 624 bytes and a list 56, and
    such an event has one waiter at most (the request's task). ``Event`` only appends,
    removes and iterates its waiters."""

    def __init__(self) -> None:
        super().__init__()
        self._waiters = []  # type: ignore[assignment]


class _Pipeline(list[Any]):
    """uvicorn's queue of pipelined requests, as a list (the deque it makes is 624 bytes empty,
    per connection, and is nearly always empty): uvicorn only ``appendleft``s, ``pop``s and
    tests it."""

    __slots__ = ()

    def appendleft(self, item: Any) -> None:
        self.insert(0, item)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    # Our per-connection state in slots: in uvicorn's instance dict it took that past the
    # size CPython shares keys up to (30), and each connection got a 1.5 KB dict of its own.
    __slots__ = (
        "_timer",
        "_deadline",
        "_reading_head",
        "_reading_body",
        "_head_bytes",
        "_head_fields",
        "_lingering",
        "_lingered_bytes",
        "_linger_timer",
        "_socket",
    )
    header_timeout: float = DEFAULT_HEADER_TIMEOUT_S
    body_timeout: float = DEFAULT_BODY_TIMEOUT_S
    max_head_bytes: int = MAX_HEAD_BYTES
    answers: WallAnswers = MATRIX_ANSWERS
    linger: float = DEFAULT_LINGER_S
    linger_bytes: int = DEFAULT_LINGER_BYTES

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pipeline = _Pipeline()  # type: ignore[assignment]
        self._timer: asyncio.TimerHandle | None = None
        self._deadline: float | None = None  # of the head or body being received, if any
        self._reading_head = True
        self._reading_body = False
        self._head_bytes = 0
        self._head_fields = 0
        self._lingering = False
        self._lingered_bytes = 0
        self._linger_timer: asyncio.TimerHandle | None = None

    # Connection --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._socket = transport
        super().connection_made(cast(asyncio.Transport, _LingeringTransport(transport, self)))
        writable = self.flow._is_writable_event = _ListEvent()
        writable.set()  # as uvicorn's: writable until the transport says otherwise
        self._expect(self.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        if self._linger_timer is not None:
            self._linger_timer.cancel()
        super().connection_lost(exc)

    def _close_or_linger(self) -> None:
        cycle = self.cycle
        if (
            self._lingering
            or self.linger <= 0
            or not self._reading_body
            or cycle is None
            or not cycle.response_complete
            or self._socket.is_closing()
        ):
            self._socket.close()
            return
        # The app has answered (and wants the connection closed) while the request body is
        # still arriving: the answer goes out with a FIN, the rest of the body is dropped.
        self._linger_then_close()

    def _linger_then_close(self) -> None:
        if self.linger <= 0:
            self._socket.close()
            return
        self._lingering = True
        self._stop_timer()
        if self._socket.can_write_eof():
            self._socket.write_eof()
        self.flow.resume_reading()
        self._linger_timer = self.loop.call_later(self.linger, self._socket.close)

    def _stop_timer(self) -> None:
        self._deadline = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def data_received(self, data: bytes) -> None:
        if self._lingering:  # the rest of a request nobody reads
            self._lingered_bytes += len(data)
            if self._lingered_bytes > self.linger_bytes:
                self._socket.close()
            return
        was_reading_head = self._reading_head
        if self._reading_body:
            self._deadline = self.loop.time() + self.body_timeout
        super().data_received(data)
        if self._reading_head and was_reading_head and not self.transport.is_closing():
            # All of ``data`` belongs to an unfinished head. (A head that began inside this
            # read is counted from the next one: at most one read goes uncounted.)
            self._head_bytes += len(data)
            if self._head_bytes > self.max_head_bytes:
                self._refuse(self.answers.head_too_large)

    def handle_websocket_upgrade(self) -> None:
        # The connection leaves this protocol (the app closes it at once: Matrix has no
        # websockets); our timer must not fire on it later.
        self._stop_timer()
        super().handle_websocket_upgrade()

    def send_400_response(self, msg: str) -> None:
        # Called by uvicorn when llhttp refuses the bytes (or a callback of ours raised).
        self._refuse(self.answers.malformed)

    # Parser callbacks --------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading_head = True
        self._head_bytes = 0
        if self._deadline is None:  # else the first head counts from the connection
            self._expect(self.header_timeout)

    def on_headers_complete(self) -> None:
        self._reading_head = False
        self._reading_body = True  # until on_message_complete, right after if there is none
        self._head_fields = len(self.headers)
        url = self.url
        if url[:1] not in (b"/", b"*"):
            self._check_absolute_target(url)
        self._expect(self.body_timeout)
        earlier = self.cycle
        super().on_headers_complete()
        if self.cycle is not earlier:  # a new request: its task has not run, nothing waits
            self.cycle.message_event = _ListEvent()

    def on_message_complete(self) -> None:
        self._reading_body = False
        self._deadline = None
        # uvicorn appends a chunked body's trailer fields to the request's headers (possibly
        # before the app reads them): a client could add headers that no front proxy or
        # firewall saw as headers. Trailers are dropped.
        del self.headers[self._head_fields :]
        super().on_message_complete()

    def _check_absolute_target(self, url: bytes) -> None:
        try:
            target_host = httptools.parse_url(url).host or b""
        except httptools.HttpParserInvalidURLError:
            raise _TargetMismatch() from None
        if b":" in target_host and not target_host.startswith(b"["):
            target_host = b"[" + target_host + b"]"  # an IPv6 literal, as the Host header has it
        hosts = [value for name, value in self.headers if name == b"host"]
        if len(hosts) != 1 or _host_only(hosts[0]) != _host_only(target_host):
            self._refuse(self.answers.target_mismatch)
            # Stops the parser (uvicorn answers a parser error with send_400_response, which
            # finds the transport closing already and writes nothing more).
            raise _TargetMismatch()

    # Timeouts ----------------------------------------------------------------------------
    # One timer per connection, re-armed only when it fires before the current deadline:
    # requests on a kept-alive connection, and reads of a body, move a deadline instead of
    # scheduling and cancelling a timer each.

    def _expect(self, timeout: float) -> None:
        if timeout <= 0:
            self._deadline = None
            return
        self._deadline = self.loop.time() + timeout
        if self._timer is None:
            self._timer = self.loop.call_at(self._deadline, self._timer_fired)

    def _timer_fired(self) -> None:
        self._timer = None
        deadline = self._deadline
        if deadline is None:
            return  # nothing being received; the next head or body arms a timer again
        now = self.loop.time()
        if self._reading_body and self.flow.read_paused:
            # We stopped reading (the app has not taken the body so far): not the client's
            # delay. The body's clock restarts when reading does.
            deadline = self._deadline = now + self.body_timeout
        if now < deadline:
            self._timer = self.loop.call_at(deadline, self._timer_fired)
            return
        self._refuse(self.answers.head_timeout if self._reading_head else self.answers.body_timeout)

    def _refuse(self, response: bytes) -> None:
        """Answer ``response`` unless a response is under way on this connection (a status
        line would corrupt it), and close the connection."""
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is None or not cycle.response_started or cycle.response_complete:
            self.transport.write(response)
        if cycle is not None and not cycle.response_complete:
            # As connection_lost will: the app's request sees a disconnect, its sends go nowhere.
            cycle.disconnected = True
            cycle.message_event.set()
        if response is self.answers.head_too_large:
            # The client is likely still sending its head: let it see the answer.
            self._linger_then_close()
        else:
            self._socket.close()


def guarded_protocol(
    *,
    base: type[GuardedHttpToolsProtocol] = GuardedHttpToolsProtocol,
    answers: WallAnswers,
    header_timeout: float = DEFAULT_HEADER_TIMEOUT_S,
    body_timeout: float = DEFAULT_BODY_TIMEOUT_S,
    max_head_bytes: int = MAX_HEAD_BYTES,
    linger: float = DEFAULT_LINGER_S,
    linger_bytes: int = DEFAULT_LINGER_BYTES,
) -> type[GuardedHttpToolsProtocol]:
    """The protocol class for ``uvicorn.run(http=...)`` with these limits and answers
    (``base``: the gate itself or a subclass of it)."""
    return type(
        base.__name__,
        (base,),
        {
            "header_timeout": header_timeout,
            "body_timeout": body_timeout,
            "max_head_bytes": max_head_bytes,
            "answers": answers,
            "linger": linger,
            "linger_bytes": linger_bytes,
        },
    )
