"""Streaming forwarder: one pooled aiohttp session to the homeservers, bodies streamed both ways.

aiohttp is used on this hop because it measured ~8x the throughput of httpx.AsyncClient here
(README, "Benchmarks"). The connector has no total connection cap: every
parked ``/sync`` long-poll holds one upstream connection, and a cap would let long-polls
starve unrelated requests (they would queue behind the parked ones).

A request body of up to 1 MiB (every API call but media uploads) is received whole before
anything goes upstream, as nginx does by default: a client that sends its body slowly, or not
at all, occupies neither a homeserver connection nor its tenant's concurrency (the request
takes its tenant slot only once its body is in, see ``limits``). A larger one with a declared
``Content-Length`` (checked against the limit before anything is sent) is streamed: spooling
it would make every upload wait on, and fill, the disk. A chunked body has no length to check,
so it is received in full first (in memory up to 1 MiB, then in a temporary file) and forwarded
with a ``Content-Length``: an oversized one is refused before any byte of it goes upstream, and
the homeserver never has to agree with us on where a chunked body ends. Matrix clients send
lengths; chunked uploads are rare.

Spool files live in ``C3_PROXY_SPOOL_DIR`` (the system temp directory when unset), and all of
one process's spools together hold at most ``C3_PROXY_SPOOL_BUDGET_BYTES``: a chunk that would
take them past it is not written, and its request is refused with 503 ``M_LIMIT_EXCEEDED`` and
``Retry-After`` instead — a full volume (a pod evicted for its ``emptyDir``) never. A request's
share goes back when its spool closes: done, refused, failed upstream or the client gone.

The homeserver's ``Server`` header (``Synapse/1.x (b=…)``) is not passed on: it tells anyone
which version, with which known holes, runs behind us.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qs

import aiohttp
from yarl import URL

from homeserver_proxy import errors
from homeserver_proxy.asgi import Message, Receive, Scope, Send

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"x-forwarded-for",
        b"x-forwarded-host",
        b"x-forwarded-proto",
        b"x-real-ip",
        b"forwarded",
        # We never hold a body back waiting for "100 Continue" from the homeserver (Twisted
        # does not send one); uvicorn already answered the client's Expect itself.
        b"expect",
    }
)
_RESPONSE_DROP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"transfer-encoding",
        b"trailer",
        b"upgrade",
        b"proxy-connection",
        # Software and version of the homeserver: nobody's business outside.
        b"server",
        b"x-powered-by",
    }
)

# A client can repeat a header under a name some frameworks read as the same one
# (X_Forwarded_For is HTTP_X_FORWARDED_FOR to CGI and WSGI): such names are dropped too.
log = logging.getLogger(__name__)

_HOP_BY_HOP_UNDERSCORED = frozenset(name.replace(b"-", b"_") for name in HOP_BY_HOP)
_SPOOL_IN_MEMORY = 1024 * 1024
DEFAULT_SPOOL_BUDGET_BYTES = 512 * 1024 * 1024
_SPOOL_READ = 256 * 1024

_SYNC = re.compile(r"^/_matrix/client/(?:r0|v3|unstable/[^/]+)/(?:sync|events)$")
_MEDIA_UPLOAD = re.compile(r"^/_matrix/(?:media/(?:r0|v3|v1)|client/v1/media)/upload")
_MAX_LONG_POLL_MS = 120_000
# An idle upstream connection is closed after this long (aiohttp looks as often). Long enough
# for a client's next poll or request (they follow at once); short enough that the thousands a
# crowd of ended long-polls leaves in the pool (~6 KB each, and a socket on the homeserver)
# are gone seconds later, not after a minute (heap.TRIM_SETTLE_S waits for them).
UPSTREAM_KEEPALIVE_S = 5.0


# One timeout object per kind of route, made once: aiohttp only reads them, and a new one per
# request was measurable garbage on the hot path (docs/benchmarks.md, "The hot path").
_DEFAULT_TIMEOUT = aiohttp.ClientTimeout(total=90, sock_connect=5)
_MEDIA_TIMEOUT = aiohttp.ClientTimeout(total=600, sock_connect=5, sock_read=60)


@functools.lru_cache(maxsize=512)
def _long_poll_timeout(wait_ms: int, since: bool) -> aiohttp.ClientTimeout:
    # An initial sync (no since token) can take minutes on a big account.
    return aiohttp.ClientTimeout(total=wait_ms / 1000 + (30 if since else 300), sock_connect=5)


def upstream_timeout(path: str, query: str) -> aiohttp.ClientTimeout:
    """Per-route timeouts: long-polls wait their own ``timeout`` plus a margin."""
    if _SYNC.match(path):
        values = parse_qs(query).get("timeout", [])
        try:
            wait_ms = min(max(int(values[0]), 0), _MAX_LONG_POLL_MS) if values else 0
        except ValueError:
            wait_ms = 0
        return _long_poll_timeout(wait_ms, "since=" in query)
    if _MEDIA_UPLOAD.match(path) or path.startswith(
        ("/_matrix/media/", "/_matrix/client/v1/media/")
    ):
        return _MEDIA_TIMEOUT
    return _DEFAULT_TIMEOUT


def is_long_poll(path: str) -> bool:
    return _SYNC.match(path) is not None


class ClientGone(Exception):
    """The client disconnected before the homeserver answered; nothing is left to send."""


async def _unless_client_leaves(
    exchange: Callable[[Send], Coroutine[Any, Any, ForwardResult]], send: Send, receive: Receive
) -> ForwardResult:
    """Run ``exchange(send)`` but cancel it when the client disconnects: a parked long-poll
    whose client left must not hold a homeserver connection until its timeout.

    ASGI tells of a disconnect only through ``receive``, so one small task waits on it; the
    exchange itself runs in the request's own task (which the watcher cancels), not in a
    third one: a parked long-poll holds two tasks, not three, and no ``asyncio.wait``. Once the
    answer's last byte is handed over, a disconnect is no longer the client leaving (uvicorn
    answers ``receive`` with one as soon as the response is complete): the exchange finishes
    and its result is metered."""
    request_task = asyncio.current_task()
    assert request_task is not None
    client_left = answered = False

    async def answering(message: Message) -> None:
        nonlocal answered
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            answered = True  # before: the server may report the disconnect while we send
        await send(message)

    async def disconnected() -> None:
        nonlocal client_left
        while (await receive())["type"] != "http.disconnect":
            pass
        if not answered:
            client_left = True
            request_task.cancel()

    watcher = asyncio.get_running_loop().create_task(disconnected())
    try:
        return await exchange(answering)
    except asyncio.CancelledError:
        # Ours (the client left, and nobody else cancelled the request): the exchange was
        # abandoned, nothing is left to send. Anyone else's: passed on.
        if client_left and request_task.uncancel() == 0:
            raise ClientGone() from None
        raise
    finally:
        watcher.cancel()


@dataclass
class ForwardResult:
    status: int
    bytes_in: int
    bytes_out: int
    # With ``capture``: the request body (when it came in one piece) and a successful
    # answer's complete body, for metering to read billable facts from.
    request_body: bytes | None = None
    response_body: bytes | None = None
    # From sending the request upstream to the answer's head (None: not measured).
    first_byte_s: float | None = None


class BodyTooLarge(Exception):
    pass


class SpoolBudget:
    """The disk bytes all in-flight spools of this process may hold together. The event loop
    is the only writer: no lock needed."""

    def __init__(self, limit: int, directory: Path | None = None) -> None:
        self.limit = limit
        self.directory = directory
        self.held = 0

    def take(self, size: int) -> bool:
        if self.held + size > self.limit:
            return False
        self.held += size
        return True

    def give_back(self, size: int) -> None:
        self.held -= size


class _Spool:
    """One request body's temporary file and the share of the budget it holds; closing it
    (idempotent) removes the file and returns the share."""

    def __init__(self, budget: SpoolBudget) -> None:
        self._budget = budget
        self._held = 0
        self.file = tempfile.TemporaryFile(dir=budget.directory)  # noqa: SIM115 — see close

    def write(self, data: bytes) -> None:
        if not self._budget.take(len(data)):
            log.warning(
                "refused a chunked request body: spooling it would pass the spool budget "
                "(C3_PROXY_SPOOL_BUDGET_BYTES=%d, %d held)",
                self._budget.limit,
                self._budget.held,
            )
            raise errors.spool_full()
        self._held += len(data)
        self.file.write(data)

    def close(self) -> None:
        self.file.close()
        self._budget.give_back(self._held)
        self._held = 0


@dataclass
class _ReceivedBody:
    size: int
    data: bytes = b""
    spool: _Spool | None = None  # set instead of ``data`` past _SPOOL_IN_MEMORY


async def _receive_all(
    first: bytes, receive: Receive, max_body: int, budget: SpoolBudget
) -> _ReceivedBody:
    """Receive a whole request body of unknown length, refusing it past ``max_body`` (413)
    or when spooling it would pass the process's spool budget (503)."""
    parts = [first]
    size = len(first)
    spool: _Spool | None = None
    try:
        while True:
            if size > max_body:
                raise errors.too_large(max_body)
            if spool is None and size > _SPOOL_IN_MEMORY:
                spool = _Spool(budget)
                spool.write(b"".join(parts))
                parts = []
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone()
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if spool is None:
                parts.append(chunk)
            elif size <= max_body:
                spool.write(chunk)
            if not message.get("more_body", False):
                if size > max_body:
                    raise errors.too_large(max_body)
                break
    except BaseException:
        if spool is not None:
            spool.close()
        raise
    if spool is None:
        return _ReceivedBody(size, data=b"".join(parts))
    spool.file.seek(0)
    return _ReceivedBody(size, spool=spool)


async def _read_file(file: IO[bytes]) -> AsyncIterator[bytes]:
    while chunk := file.read(_SPOOL_READ):
        yield chunk


def passed_upstream(name: bytes) -> bool:
    """Whether a client's request header (its lower-cased name) goes on to the homeserver: not
    hop-by-hop or forwarding headers, in any spelling (the forwarder's and the fast lane's)."""
    return name not in HOP_BY_HOP and not (b"_" in name and name in _HOP_BY_HOP_UNDERSCORED)


def _public_url_headers(scope: Scope, public_scheme: str | None) -> list[tuple[str, str]]:
    """The homeserver sees the scheme and Host the client used, not its own loopback address:
    Synapse rebuilds the requested URL from ``Host`` and ``X-Forwarded-Proto`` (with
    ``x_forwarded`` on its listener) and sends SSO sign-ins whose URL is not under its
    ``public_baseurl`` there first; with the upstream's address that redirect never ends. The
    Host was checked by the app (one, well-formed) and, unless ``/t/<slug>`` routed the
    request, resolved to this tenant; ``X-Forwarded-Host`` says the same for other readers."""
    headers = [("X-Forwarded-Proto", public_scheme or scope.get("scheme", "http"))]
    for name, value in scope["headers"]:
        if name == b"host":
            host = value.decode("latin-1")
            headers += [("Host", host), ("X-Forwarded-Host", host)]
            break
    return headers


def _upstream_headers(
    scope: Scope, client_address: str, public_scheme: str | None
) -> tuple[list[tuple[str, str]], int | None]:
    """The headers that go upstream, and the declared Content-Length (None if none): the
    client's, less hop-by-hop and forwarding headers (in any spelling), plus ours."""
    headers: list[tuple[str, str]] = []
    declared_length: int | None = None
    for name, value in scope["headers"]:
        if not passed_upstream(name):
            continue
        if name == b"content-length":
            try:
                declared_length = int(value)
            except ValueError:
                raise errors.bad_framing("Invalid Content-Length") from None
        headers.append((name.decode("latin-1"), value.decode("latin-1")))
    headers.append(("X-Forwarded-For", client_address))
    headers.extend(_public_url_headers(scope, public_scheme))
    return headers, declared_length


@dataclass
class _OutgoingBody:
    data: bytes | AsyncIterator[bytes]
    spooled: _Spool | None = None  # the temporary file ``data`` reads, closed by ``close``
    length: int | None = None  # a Content-Length to send (a chunked body received whole)

    def close(self) -> None:
        if self.spooled is not None:
            self.spooled.close()


@dataclass
class _UpstreamRequest:
    method: str
    url: URL
    headers: list[tuple[str, str]]
    body: bytes | AsyncIterator[bytes]
    has_body: bool
    timeout: aiohttp.ClientTimeout


class Forwarder:
    def __init__(
        self, *, public_scheme: str | None = None, spool_budget: SpoolBudget | None = None
    ) -> None:
        self._session: aiohttp.ClientSession | None = None
        # The scheme clients use (C3_PROXY_PUBLIC_URL's; TLS may end in front of us).
        self._public_scheme = public_scheme
        self.spool_budget = spool_budget or SpoolBudget(DEFAULT_SPOOL_BUDGET_BYTES)

    async def start(self) -> None:
        directory = self.spool_budget.directory
        if directory is not None and not (directory.is_dir() and os.access(directory, os.W_OK)):
            raise RuntimeError(
                f"C3_PROXY_SPOOL_DIR={directory} is not a writable directory (mount the "
                "proxy's spool volume there, or leave it unset for the system temp directory)"
            )
        connector = aiohttp.TCPConnector(
            limit=0,
            limit_per_host=0,
            keepalive_timeout=UPSTREAM_KEEPALIVE_S,
            enable_cleanup_closed=True,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        """The pooled session to the homeservers (for the proxy's own calls to them)."""
        assert self._session is not None, "Forwarder.start() was not awaited"
        return self._session

    async def forward(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        *,
        upstream: str,
        path: str,
        max_body: int,
        client_address: str,
        before_upstream: Callable[[], None] | None = None,
        capture: bool = False,
        rewrite: Callable[[bytes], bytes | None] | None = None,
    ) -> ForwardResult:
        """Forward one request. ``client_address`` goes upstream as the only X-Forwarded-For;
        ``before_upstream`` is called right before anything goes upstream, once the body is in
        (a large upload's once its head is), and may raise a refusal. ``rewrite`` may replace a
        successful answer's (small, complete) body: it gets the body and returns the one to send
        instead, or None to send it unchanged."""
        session = self.session
        query = scope.get("query_string", b"").decode("latin-1")
        headers, declared_length = _upstream_headers(scope, client_address, self._public_scheme)
        if declared_length is not None and declared_length > max_body:
            raise errors.too_large(max_body)
        counter = [0]  # request body bytes received
        body = await self._request_body(receive, declared_length, max_body, counter)
        if body.length is not None:
            headers.append(("Content-Length", str(body.length)))
        try:
            if before_upstream is not None:
                before_upstream()
            request = _UpstreamRequest(
                method=scope["method"],
                url=URL(upstream + path + ("?" + query if query else ""), encoded=True),
                headers=headers,
                body=body.data,
                has_body=body.data != b"" or bool(declared_length),
                timeout=upstream_timeout(path, query),
            )
            if is_long_poll(path):
                return await _unless_client_leaves(
                    functools.partial(
                        self._exchange,
                        session,
                        request,
                        capture=capture,
                        counter=counter,
                        rewrite=rewrite,
                    ),
                    send,
                    receive,
                )
            return await self._exchange(session, request, send, capture, counter, rewrite)
        except BodyTooLarge:
            raise errors.too_large(max_body) from None
        except TimeoutError:
            raise errors.upstream_timeout() from None
        except aiohttp.ClientConnectorError:  # refused: nothing went upstream (wake.py heals)
            raise errors.upstream_refused() from None
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError):
            raise errors.upstream_unavailable() from None
        finally:
            body.close()

    async def _request_body(
        self, receive: Receive, declared_length: int | None, max_body: int, counter: list[int]
    ) -> _OutgoingBody:
        """The request body as it goes upstream: received whole if it is small or has no
        declared length (spooled to disk past 1 MiB), streamed if it is a large upload."""
        first = await receive()
        if first["type"] == "http.disconnect":
            raise ClientGone()
        first_chunk: bytes = first.get("body", b"")
        if not first.get("more_body", False):
            counter[0] = len(first_chunk)
            if counter[0] > max_body:
                raise errors.too_large(max_body)
            return _OutgoingBody(first_chunk)
        if declared_length is not None and declared_length > _SPOOL_IN_MEMORY:
            # A large upload is streamed: received whole first, every upload would wait on
            # (and fill) the disk. It takes its tenant slot from its head on.
            return _OutgoingBody(self._stream_body(first_chunk, receive, counter, max_body))
        # The whole body before the homeserver sees any of it.
        received = await _receive_all(first_chunk, receive, max_body, self.spool_budget)
        counter[0] = received.size
        if received.spool is None:
            return _OutgoingBody(received.data)
        return _OutgoingBody(
            _read_file(received.spool.file),
            spooled=received.spool,
            length=received.size if declared_length is None else None,
        )

    async def _exchange(
        self,
        session: aiohttp.ClientSession,
        request: _UpstreamRequest,
        send: Send,
        capture: bool,
        counter: list[int],
        rewrite: Callable[[bytes], bytes | None] | None,
    ) -> ForwardResult:
        """Send the request upstream and relay the answer to the client."""
        sent_at = time.perf_counter()
        async with session.request(
            request.method,
            request.url,
            headers=request.headers,
            data=request.body if request.has_body else None,
            allow_redirects=False,
            timeout=request.timeout,
        ) as response:
            first_byte_s = time.perf_counter() - sent_at
            result = await self._relay(response, send, request.method, capture, counter, rewrite)
            result.first_byte_s = first_byte_s
            if capture and isinstance(request.body, bytes):
                result.request_body = request.body
            return result

    async def _stream_body(
        self, first: bytes, receive: Receive, counter: list[int], max_body: int
    ) -> AsyncIterator[bytes]:
        chunk = first
        more = True
        while True:
            counter[0] += len(chunk)
            if counter[0] > max_body:
                raise BodyTooLarge()
            if chunk:
                yield chunk
            if not more:
                return
            message = await receive()
            if message["type"] == "http.disconnect":
                raise asyncio.CancelledError("client went away while sending its body")
            chunk = message.get("body", b"")
            more = message.get("more_body", False)

    async def _relay(
        self,
        response: aiohttp.ClientResponse,
        send: Send,
        method: str,
        capture: bool,
        counter: list[int],
        rewrite: Callable[[bytes], bytes | None] | None = None,
    ) -> ForwardResult:
        status = response.status
        out_headers = [
            (name.lower(), value)
            for name, value in response.raw_headers
            if name.lower() not in _RESPONSE_DROP
        ]
        content = response.content
        if method == "HEAD" or status in (204, 304):
            await send({"type": "http.response.start", "status": status, "headers": out_headers})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return ForwardResult(status, counter[0], 0)

        capture = capture and 200 <= status < 300
        if not 200 <= status < 300:
            rewrite = None
        first = await content.readany()
        if (capture or rewrite is not None) and not content.at_eof():
            # A small JSON answer (event_id, content_uri, user_id): metering needs all of it.
            first += await content.read()
        if rewrite is not None and (rewritten := rewrite(first)) is not None:
            first = rewritten
        if content.at_eof():
            # The whole body is here (most Matrix answers): one write with an exact length
            # instead of a chunked stream.
            headers = [h for h in out_headers if h[0] != b"content-length"]
            headers.append((b"content-length", str(len(first)).encode()))
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": first, "more_body": False})
            return ForwardResult(
                status, counter[0], len(first), response_body=first if capture else None
            )

        await send({"type": "http.response.start", "status": status, "headers": out_headers})
        await send({"type": "http.response.body", "body": first, "more_body": True})
        sent = len(first)
        async for chunk in content.iter_any():
            sent += len(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return ForwardResult(status, counter[0], sent)
