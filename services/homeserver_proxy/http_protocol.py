"""The proxy's HTTP/1.1 server protocol: uvicorn's httptools protocol plus what only the
connection can see.

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
- the parser's refusals answered as Matrix errors, as every other refusal of the proxy.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

DEFAULT_HEADER_TIMEOUT_S = 10.0
DEFAULT_BODY_TIMEOUT_S = 60.0  # between two reads of a body, as nginx's client_body_timeout
MAX_HEAD_BYTES = 64 * 1024


def _matrix_error(status: int, errcode: str, error: str) -> bytes:
    body = json.dumps({"errcode": errcode, "error": error}).encode()
    return b"".join(
        [
            STATUS_LINE[status],
            b"content-type: application/json\r\n",
            b"content-length: " + str(len(body)).encode() + b"\r\n",
            b"connection: close\r\n",
            b"\r\n",
            body,
        ]
    )


_MALFORMED = _matrix_error(400, "M_UNRECOGNIZED", "Malformed HTTP request")
_TARGET_MISMATCH = _matrix_error(
    400, "M_UNRECOGNIZED", "The request target names another host than the Host header"
)
_HEAD_TIMEOUT = _matrix_error(408, "M_UNKNOWN", "Request head not received in time")
_BODY_TIMEOUT = _matrix_error(408, "M_UNKNOWN", "Request body not received in time")
_HEAD_TOO_LARGE = _matrix_error(431, "M_UNKNOWN", "Request head too large")


class _TargetMismatch(Exception):
    pass


def _host_only(authority: bytes) -> bytes:
    host = authority.strip().lower()
    if host.startswith(b"["):
        return host[: host.find(b"]") + 1]
    return host.rsplit(b":", 1)[0].rstrip(b".")


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    header_timeout: float = DEFAULT_HEADER_TIMEOUT_S
    body_timeout: float = DEFAULT_BODY_TIMEOUT_S
    max_head_bytes: int = MAX_HEAD_BYTES

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._timer: asyncio.TimerHandle | None = None
        self._deadline: float | None = None  # of the head or body being received, if any
        self._reading_head = True
        self._reading_body = False
        self._head_bytes = 0
        self._head_fields = 0

    # Connection --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._expect(self.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        super().connection_lost(exc)

    def _stop_timer(self) -> None:
        self._deadline = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def data_received(self, data: bytes) -> None:
        was_reading_head = self._reading_head
        if self._reading_body:
            self._deadline = self.loop.time() + self.body_timeout
        super().data_received(data)
        if self._reading_head and was_reading_head and not self.transport.is_closing():
            # All of ``data`` belongs to an unfinished head. (A head that began inside this
            # read is counted from the next one: at most one read goes uncounted.)
            self._head_bytes += len(data)
            if self._head_bytes > self.max_head_bytes:
                self._refuse(_HEAD_TOO_LARGE)

    def handle_websocket_upgrade(self) -> None:
        # The connection leaves this protocol (the app closes it at once: Matrix has no
        # websockets); our timer must not fire on it later.
        self._stop_timer()
        super().handle_websocket_upgrade()

    def send_400_response(self, msg: str) -> None:
        # Called by uvicorn when llhttp refuses the bytes (or a callback of ours raised).
        self._refuse(_MALFORMED)

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
        super().on_headers_complete()

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
            self._refuse(_TARGET_MISMATCH)
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
        self._refuse(_HEAD_TIMEOUT if self._reading_head else _BODY_TIMEOUT)

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
        self.transport.close()


def guarded_protocol(
    *,
    header_timeout: float = DEFAULT_HEADER_TIMEOUT_S,
    body_timeout: float = DEFAULT_BODY_TIMEOUT_S,
    max_head_bytes: int = MAX_HEAD_BYTES,
) -> type[GuardedHttpToolsProtocol]:
    """The protocol class for ``uvicorn.run(http=...)`` with these limits."""
    return type(
        "GuardedHttpToolsProtocol",
        (GuardedHttpToolsProtocol,),
        {
            "header_timeout": header_timeout,
            "body_timeout": body_timeout,
            "max_head_bytes": max_head_bytes,
        },
    )
