"""The proxy's fast lane: plain client requests relayed at the protocol level, the ASGI app for
everything else (issue 16, "A hot path that costs a third"; measured in docs/benchmarks.md).

Profiled, ~57 % of the proxy's CPU per request was the aiohttp client and ~20 % uvicorn's ASGI
response path: Python-level operations of two general HTTP stacks, not parsing or syscalls. So
``RelayProtocol`` (the ``http=`` protocol of ``c3 proxy``, a subclass of the gate in
``platform_core.http_wall``) reads each request head itself and, when the request is a plain
one, relays it without a task, an ASGI scope's messages or an aiohttp request:

- **Which requests.** HTTP/1.1 ``GET``/``PUT``/``POST``/``DELETE``/``OPTIONS``, body and all
  in hand (the common case: a client writes a small request at once), whose head is
  strictly well formed (regular expressions over the request line and the header lines:
  tokens for names, no control bytes, CRLF line ends, no obs-fold), with exactly one valid ``Host``, at most one
  decimal ``Content-Length`` of at most 1 MiB, no ``Transfer-Encoding``, ``Expect`` or
  ``Upgrade``, an origin-form target without ``#`` (``%``-encoded room ids, as SDKs send
  them, are in: like the app, the lane decides on the raw path and sends it on as it came),
  for a tenant in the route table's
  memory that is active and awake, whose path the guard forwards (``Verdict.FORWARD``), and
  which is neither a login (its answer is rewritten), a single sign-on start, nor a request
  that external participants' confinement looks at. That is nearly every request of a client
  that is signed in: sync, send, state, keys, receipts, typing, read markers (not profile
  lookups or media downloads, which confinement looks at in Redis first).
- **Everything else goes to the ASGI app exactly as before** (``ProxyApp`` on uvicorn, aiohttp
  upstream): the bytes of the request, from its first, are handed to the uvicorn protocol this
  class is, which parses them with llhttp and refuses or serves them as it always did: requests
  whose body is not all in with their head (uploads over 1 MiB, chunked or slow bodies: the
  app admits them before their body, or refuses a declared length over the limit without
  reading it), federation, well-knowns, logins, SSO,
  sleeping tenants (held while one wake is asked for), tenants not yet in memory, malformed
  paths, websockets, HTTP/1.0. Once that request is answered and the connection is idle again,
  the next one is looked at here again.
- **The same guards, limits and meters**, called as the app calls them: the route table, the
  guard's ``classify``, ``TenantLimiter.admit`` and the tenant slot, the waker's last-seen,
  ``ExchangeMeter.record`` with the same facts (``metering.Outcome``), the proxy's metrics,
  the request id, ``X-Forwarded-*`` and the hop-by-hop filter of ``forwarding``, the homeserver's
  ``Server`` header dropped. A refusal (429, 503) is the same Matrix error, answered here.
- **Upstream**: a pool of kept-alive HTTP/1.1 connections per homeserver (idle ones closed
  after ``forwarding.UPSTREAM_KEEPALIVE_S``), one request at a time each; the request head and
  body go in one write. An answer that arrives whole in one read (a homeserver's usual JSON
  answer, by ``Content-Length`` or in chunks) is read by ``_whole_answer`` and goes to the
  client in one write with a ``Content-Length``; any other is parsed by llhttp
  (``httptools.HttpResponseParser``) and written to the client as it arrives (one write per
  upstream read; a chunked answer re-chunked), with backpressure both ways. A billable answer
  (``Kind.captures_response``) is held whole for metering, as before. A connection the
  homeserver refused asks the waker to heal, as before.
- **Per request, only what differs** (measured in docs/benchmarks.md): what a method and path
  decide (``_Plan``: the guard's verdict, login, confinement, billing kind, timeout, metrics
  class) is kept per short path; a connection's last header lines are kept with what was made
  of them (``_Headers``), reused when the next request repeats them byte for byte; a
  homeserver's answer heads are kept with what they become in our answer.
- **Long-polls**: a parked ``/sync`` is two sockets, two protocol objects and this exchange —
  no task. A client that hangs up closes its homeserver connection at once; any other request
  whose client left is finished (and metered: the homeserver did the work) without an answer.
- **Timeouts**: the head, body and keep-alive timeouts of the gate, and the upstream timeouts of
  ``forwarding.upstream_timeout`` (a 504 if nothing was answered yet).

aiohttp stays the client of the ASGI path and of the proxy's own calls (``whoami``, ``/health``).
``C3_PROXY_RELAY=false`` turns the fast lane off (every request through the ASGI app).
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time
from collections.abc import Sequence
from typing import Any, Literal, Protocol
from urllib.parse import unquote_to_bytes

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE

from homeserver_proxy import billable, errors
from homeserver_proxy.access_log import access_line
from homeserver_proxy.billable import Kind
from homeserver_proxy.client_address import Network, client_address
from homeserver_proxy.client_urls import is_login, starts_sso
from homeserver_proxy.confinement import _confinable
from homeserver_proxy.forwarding import (
    _RESPONSE_DROP,
    _SPOOL_IN_MEMORY,
    UPSTREAM_KEEPALIVE_S,
    is_long_poll,
    passed_upstream,
    upstream_timeout,
)
from homeserver_proxy.guard import Verdict, classify
from homeserver_proxy.identity import header_token, query_token
from homeserver_proxy.limits import Budget, TenantLimiter
from homeserver_proxy.metering import ExchangeMeter
from homeserver_proxy.proxy_metrics import ProxyMetrics, RouteClass, route_class
from homeserver_proxy.routing import RouteTable, normalize_host, split_slug_prefix, valid_host
from homeserver_proxy.wake import Waker
from platform_core.http_wall import GuardedHttpToolsProtocol
from platform_core.logging import SANE_REQUEST_ID as _SANE_REQUEST_ID
from platform_core.logging import new_request_id, request_context
from platform_core.routes import Route, host_field, slug_field
from platform_core.settings import Settings


class ProxyApp(Protocol):
    """What the lane uses of ``homeserver_proxy.app.ProxyApp`` (which imports this module)."""

    settings: Settings
    metering: bool
    routes: RouteTable
    limiter: TenantLimiter
    wake: Waker
    metrics: ProxyMetrics
    exchange_meter: ExchangeMeter
    relay_pool: UpstreamPool
    public_scheme: bytes
    _trusted_proxies: Sequence[Network]

    def _count_error(self, route: RouteClass, exc: errors.MatrixError) -> None: ...


log = logging.getLogger(__name__)

# A request line the fast lane takes (with its CRLF): its target visible characters but "#" (a
# fragment is the app's to refuse); then the header lines of a head (without its final CRLF
# CRLF): a token, a colon and a value of visible characters, spaces and tabs, each line after a
# CRLF.
_REQUEST_LINE = re.compile(rb"(GET|PUT|POST|DELETE|OPTIONS) (/[!\"$-~]*) HTTP/1\.1\r\n")
_HEADER_LINES = re.compile(rb"(?:\r\n[!#$%&'*+.^_`|~0-9A-Za-z-]+:[\t -~\x80-\xff]*)*")
_CONNECT_TIMEOUT_S = 5.0
_DNS_TTL_S = 10.0
_CLOSE = b"close"
# Paths whose lane decisions are kept (``_plan_of``): as the guard's verdict cache, short ones.
_PLANNED_PATH_BYTES = 256
_MAX_PLANS = 4096


class _Handover(Exception):
    """This request is for the ASGI app."""


class _Headers:
    """The header lines of a request head, parsed. A client sends the same lines again and
    again on one connection (its token, agent, host): the last block a connection sent is
    kept with what was made of it, and a request that repeats it byte for byte reuses that."""

    __slots__ = (
        "block",
        "headers",
        "host",
        "length",
        "close",
        "request_id",
        "upstream",
        "token",
        "user",
    )

    def __init__(self, block: bytes) -> None:
        self.block = block
        self.headers: list[tuple[bytes, bytes]] = []
        self.host = b""
        self.length = 0
        self.close = False
        self.request_id: bytes | None = None
        self.upstream = b""  # the lines passed upstream as they are (``passed_upstream``)
        self.token: str | None | Literal[False] = False  # ``identity.header_token``
        # (tenant id, user) of ``token`` once metering knew it: not looked up per request.
        self.user: tuple[str, str] | None = None


def _parse_headers(block: bytes) -> _Headers:
    """The headers of a head's lines (CRLF before each), or ``_Handover`` for what the fast
    lane leaves to the ASGI app (and its stricter or more general checks)."""
    if _HEADER_LINES.fullmatch(block) is None:
        raise _Handover
    parsed = _Headers(block)
    headers = parsed.headers
    seen: list[bytes] = []  # the names of the framing headers, once each they appear
    for line in block.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.lower()
        value = value.strip(b" \t")
        if name in _SPECIAL:
            seen.append(name)
            if _take_special(parsed, name, value):
                continue
        headers.append((name, value))
    hosts, lengths = seen.count(b"host"), seen.count(b"content-length")
    if hosts != 1 or lengths > 1 or not valid_host(parsed.host):
        raise _Handover
    if parsed.length > _SPOOL_IN_MEMORY:
        raise _Handover  # streamed by the forwarder
    parsed.token = header_token(headers)
    parsed.upstream = b"".join(
        [b"%s: %s\r\n" % header for header in headers if passed_upstream(header[0])]
    )
    return parsed


_SPECIAL = frozenset(
    {
        b"host",
        b"content-length",
        b"connection",
        b"transfer-encoding",
        b"expect",
        b"upgrade",
        b"x-request-id",
    }
)


def _take_special(parsed: _Headers, name: bytes, value: bytes) -> bool:
    """Note a framing header (or raise ``_Handover``); True when it is not to be passed on as
    it is (``Connection``, the request id: the lane sends its own)."""
    if name == b"host":
        parsed.host = value
    elif name == b"content-length":
        if not value.isdigit():
            raise _Handover
        parsed.length = int(value)
    elif name == b"connection":
        option = value.lower()
        if option == _CLOSE:
            parsed.close = True
        elif option != b"keep-alive":
            raise _Handover  # upgrade, or a list of options
        return True
    elif name == b"x-request-id":
        parsed.request_id = value
        return True
    else:  # Transfer-Encoding, Expect, Upgrade
        raise _Handover
    return False


class _Plan:
    """What the lane makes of a request's method and path alone: the same for every request
    to that path, so kept for short paths (``_plan_of``)."""

    __slots__ = (
        "method",
        "raw_path",
        "decoded_path",
        "path",
        "upstream_path",
        "field",
        "long_poll",
        "kind",
        "capture",
        "timeout",
        "metrics_route",
        "first_byte_route",
    )

    def __init__(self, method: str, full_path: str, path: str, field: str | None) -> None:
        self.method = method
        self.raw_path = full_path.encode("ascii")
        # The client's path as uvicorn gives it to the app in ``scope["path"]`` (room ids come
        # %-encoded): ``unquote``, which for an ASCII path is this at half the cost.
        self.decoded_path = (
            unquote_to_bytes(full_path).decode("utf-8", "replace")
            if "%" in full_path
            else full_path
        )
        self.path = path  # at the homeserver (without a /t/<slug> prefix)
        self.upstream_path = path.encode()
        self.field = field  # the route's field by slug, or None: by the Host header
        self.long_poll = is_long_poll(path)
        self.kind = billable.kind_of(method, path)
        self.capture = self.kind.captures_response
        # A long-poll's timeout depends on its query (its own wait), any other's on the path.
        self.timeout = 0.0 if self.long_poll else (upstream_timeout(path, "").total or 90.0)
        self.metrics_route = route_class(self.decoded_path)  # as the app's (prefix and all)
        self.first_byte_route = route_class(path)

    def with_id(self, raw_path: bytes, last: bytes, cuts: tuple[int, int]) -> _Plan:
        """This plan for another last segment (``_plan_of``): the raw paths less their last
        ``cuts[0]`` characters and the decoded one less its last ``cuts[1]`` end with ``last``
        instead (decoded: ``_decoded_id``); nothing else changes."""
        plan = _Plan.__new__(_Plan)
        plan.method = self.method
        plan.raw_path = raw_path
        raw_cut, decoded_cut = cuts
        tail = last.decode("ascii")
        plan.decoded_path = self.decoded_path[:-decoded_cut] + _decoded_id(tail)
        plan.path = self.path[:-raw_cut] + tail
        plan.upstream_path = self.upstream_path[:-raw_cut] + last
        plan.field = self.field
        plan.long_poll = self.long_poll
        plan.kind = self.kind
        plan.capture = self.capture
        plan.timeout = self.timeout
        plan.metrics_route = self.metrics_route
        plan.first_byte_route = self.first_byte_route
        return plan


_plans: dict[tuple[str, bytes], _Plan | None] = {}  # None: a path the app serves
# Every send, every read receipt and every to-device message has a path of its own (its
# transaction id, the event id it marks read), whose last segment decides nothing in its plan
# but its paths: such a plan is made once per method and path less that segment (the room and
# the event or receipt type; the to-device type), kept here with how long its segment was (raw,
# decoded), and copied for each request after. (A redaction's path names the event it redacts
# before its transaction id, so its head is new every time: nothing to copy.)
_by_room: dict[tuple[str, bytes], tuple[_Plan, tuple[int, int]]] = {}
# A last segment that is its own canonical form but for a leading "$" (an event id, which SDKs
# send as %24): then no "%", ";", "\", control byte, or leading dot, and not empty
# (``test_relay`` holds a plan made this way equal to one made in full).
_PLAIN_ID = re.compile(rb"(?:%24|\$)?[0-9A-Za-z_~-][0-9A-Za-z._~-]*")
_SENDS = (Kind.SEND, Kind.SEND_CALL_INVITE)
_PUT_POST = ("PUT", "POST")
_RECEIPT = re.compile(r"/_matrix/client/(?:r0|v3|unstable)/rooms/[^/]*/receipt/[^/]*/[^/]*")
_TO_DEVICE = re.compile(r"/_matrix/client/(?:r0|v3|unstable)/sendToDevice/[^/]*/[^/]*")


def _decoded_id(last: str) -> str:
    """A last segment ``_PLAIN_ID`` takes, decoded: its only escape can be a leading ``%24``."""
    return "$" + last[3:] if last.startswith("%24") else last


def _plan_of(method: str, raw_path: bytes) -> _Plan | None:
    """The plan of a request, or None for one the app serves: the proxy's health, a path the
    guard does not forward, a login, a single sign-on start, or one that confinement looks at."""
    key = (method, raw_path)
    if key in _plans:
        return _plans[key]
    head, _, last = raw_path.rpartition(b"/")
    plain = method in _PUT_POST and _PLAIN_ID.fullmatch(last) is not None
    if plain:
        room_key = (method, head)
        if room_key in _by_room:
            template, cuts = _by_room[room_key]
            return template.with_id(raw_path, last, cuts)
    plan = _make_plan(method, raw_path)
    if len(raw_path) <= _PLANNED_PATH_BYTES:
        if (
            plain
            and plan is not None
            and (
                plan.kind in _SENDS
                or (method == "POST" and _RECEIPT.fullmatch(plan.path))
                or (method == "PUT" and _TO_DEVICE.fullmatch(plan.path))
            )
        ):
            if len(_by_room) >= _MAX_PLANS:
                _by_room.clear()  # rooms come and go
            cuts = (len(last), len(_decoded_id(last.decode("ascii"))))
            _by_room[(method, head)] = (plan, cuts)
            return plan
        if len(_plans) >= _MAX_PLANS:
            _plans.clear()  # unique paths (room, txn and event ids) come and go
        _plans[key] = plan
    return plan


def _make_plan(method: str, raw_path: bytes) -> _Plan | None:
    full_path = raw_path.decode("ascii")
    prefixed = split_slug_prefix(full_path)
    if prefixed is not None:
        slug, path = prefixed
        field: str | None = slug_field(slug)
    else:
        path, field = full_path, None
    if (
        path == "/_c3/health"
        or classify(path) is not Verdict.FORWARD
        or is_login(method, path)
        or (field is not None and starts_sso(method, path))
        or _confinable(method, path) is not None
    ):
        return None
    return _Plan(method, full_path, path, field)


def _scope(client: RelayProtocol, plan: _Plan, query: bytes, headers: _Headers) -> dict[str, Any]:
    """The ASGI scope the app would have had for a relayed request: made only for what reads
    one (the access log, ``X-Forwarded-For`` behind trusted proxies), not per request."""
    return {
        "type": "http",
        "method": plan.method,
        "path": plan.decoded_path,
        "raw_path": plan.raw_path,
        "query_string": query,
        "headers": headers.headers,
        "client": client.client,
        "http_version": "1.1",
    }


def _status_line(status: int) -> bytes:
    return STATUS_LINE[status] if status in STATUS_LINE else b"HTTP/1.1 %d \r\n" % status


def _answer_line(name: bytes, value: bytes) -> bytes:
    """Our line for a homeserver's answer header (``name`` in lower case) other than its
    framing, or b"" to drop it: hop-by-hop ones, its ``Server``, its request id (ours goes)."""
    if name in _RESPONSE_DROP or name == b"x-request-id":
        return b""
    return b"%s: %s\r\n" % (name, value)


def _error_response(exc: errors.MatrixError, request_id: bytes, close: bool) -> bytes:
    """``exc`` as ``errors.MatrixError.send`` answers it, with the request id, in bytes."""
    headers, body = exc.answer()
    head = [STATUS_LINE[exc.status]]
    head.extend(b"%s: %s\r\n" % header for header in headers)
    head.append(b"x-request-id: " + request_id + b"\r\n")
    if close:
        head.append(b"connection: close\r\n")
    head.append(b"\r\n")
    head.append(body)
    return b"".join(head)


_STATUS = re.compile(rb"HTTP/1\.1 ([2-5][0-9][0-9]) [\t -~\x80-\xff]*")
_ANSWER_LINE = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+:[\t -~\x80-\xff]*")
_HEX_DIGITS = b"0123456789abcdefABCDEF"
_CHUNKED = -2  # what a ``Transfer-Encoding: chunked`` line is to ``_whole_answer``
_MAX_ANSWER_HEADS = 4096
# A homeserver's answer head -> (status, our head's lines joined, length or ``_CHUNKED``), or
# None.
_answer_heads: dict[bytes, tuple[int, bytes, int] | None] = {}


def _whole_answer(data: bytes, upstream: _Upstream) -> tuple[int, bytes, bytes] | None:
    """(status, our head's lines, body) when ``data`` is exactly one whole answer framed by
    its ``Content-Length`` or in chunks, with a body (not 204 or 304), that leaves its
    connection open: a homeserver's usual answer, in one read. None for anything else, which
    llhttp parses.

    Our lines (joined, each with its CRLF) are the homeserver's, names in lower case, less
    hop-by-hop ones, its ``Server`` and its request id, as ``answer_head`` makes them. Heads
    repeat from answer to answer (they differ in ``Date``, once a second, and in some
    lengths): what each made is kept in a bounded table, and ``upstream`` keeps its last head
    with it. An answer that starts with that head (compared: its first blank line is where
    the last one's was) is read without looking for its end, slicing it out or hashing it:
    ~2,500 instructions of a Synapse answer's 600-byte head, counted by callgrind."""
    last = upstream.last_head
    if last and data.startswith(last):
        known = upstream.last_known
        at = len(last)
    else:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            return None
        at = end + 4
        head = data[:end]
        try:
            known = _answer_heads[head]
        except KeyError:  # a new head: about once a second per kind of answer
            known = _read_answer_head(head)
            if len(_answer_heads) >= _MAX_ANSWER_HEADS:
                _answer_heads.clear()
            _answer_heads[head] = known
        upstream.last_head = data[:at]
        upstream.last_known = known
    if known is None:
        return None
    status, lines, length = known
    if length == _CHUNKED:
        body = _whole_chunks(data, at)
        return None if body is None else (status, lines, body)
    if len(data) != at + length:
        return None
    return status, lines, data[at:]


def _read_answer_head(head: bytes) -> tuple[int, bytes, int] | None:
    """What ``_whole_answer`` keeps of an answer head: its status, our lines and its length
    (or ``_CHUNKED``); None for a head whose answer is llhttp's to read."""
    line_end = head.find(b"\r\n")
    status_line = _STATUS.fullmatch(head, 0, line_end if line_end >= 0 else len(head))
    if status_line is None or line_end < 0:
        return None
    status = int(status_line.group(1))
    if status == 204 or status == 304:
        return None
    lines = [_status_line(status)]
    length = -1  # until a Content-Length or chunked framing is seen
    for line in head[line_end + 2 :].split(b"\r\n"):
        ours = _our_line(line)
        if isinstance(ours, bytes):
            if ours:
                lines.append(ours)
        elif ours is None or length != -1:
            return None
        else:
            length = ours
    return None if length == -1 else (status, b"".join(lines), length)


def _whole_chunks(data: bytes, at: int) -> bytes | None:
    """The body of a chunked answer that ends exactly where ``data`` does (no extensions or
    trailers), else None. Synapse sends its JSON answers chunked, mostly one chunk and the
    last in one write: they go on with a ``Content-Length``, as a held answer does."""
    pieces: list[bytes] = []
    while True:
        # The last chunk, and nothing after it: compared, not parsed (``find``, ``translate``
        # and ``int`` cost ~2,500 instructions, counted by callgrind).
        if len(data) - at == 5 and data[at:] == b"0\r\n\r\n":
            return b"".join(pieces)
        line_end = data.find(b"\r\n", at, at + 10)
        digits = data[at:line_end]
        # 1 to 8 hex digits and nothing else (``int`` alone would take "+", "_" or "0x").
        if line_end <= at or digits.translate(None, _HEX_DIGITS):
            return None
        size = int(digits, 16)
        at = line_end + 2
        if size == 0:  # a last chunk with trailers, or with more after it: llhttp's to read
            return None
        if not pieces and len(data) == at + size + 7 and data.endswith(b"\r\n0\r\n\r\n"):
            return data[at : at + size]  # one chunk and the last: no list, no join (~2,000)
        if data[at + size : at + size + 2] != b"\r\n":
            return None
        pieces.append(data[at : at + size])
        at += size + 2


def _our_line(line: bytes) -> bytes | int | None:
    """What a homeserver's header line is in our answer: the line (b"" to drop it), the
    ``Content-Length`` value, ``_CHUNKED``, or None when the answer is not for
    ``_whole_answer`` (a malformed line, another transfer coding, ``Connection: close``)."""
    if _ANSWER_LINE.fullmatch(line) is None:
        return None
    name, _, value = line.partition(b":")
    name = name.lower()
    value = value.strip(b" \t")
    if name == b"content-length":
        return int(value) if value.isdigit() else None
    if name == b"connection":
        return b"" if value.lower() == b"keep-alive" else None
    if name == b"transfer-encoding":
        return _CHUNKED if value.lower() == b"chunked" else None
    return _answer_line(name, value)


class _Upstream(asyncio.Protocol):
    """One kept-alive connection to a homeserver; carries one exchange at a time."""

    __slots__ = (
        "pool",
        "key",
        "transport",
        "parser",
        "exchange",
        "idle_since",
        "_headers",
        "_parsing",
        "last_head",
        "last_known",
    )

    def __init__(self, pool: UpstreamPool, key: tuple[str, int]) -> None:
        self.pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: _Exchange | None = None
        self.idle_since = 0.0
        self._headers: list[tuple[bytes, bytes]] = []
        self._parsing = False  # llhttp is inside an answer
        # The head of the last answer read here (to its blank line) and what it is to
        # ``_whole_answer``.
        self.last_head = b""
        self.last_known: tuple[int, bytes, int] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool.forget(self)
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            exchange.upstream_lost()

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        if not self._parsing and exchange is not None:
            whole = _whole_answer(data, self)
            if whole is not None:  # the common case, without llhttp's callbacks
                self.exchange = None
                status, lines, body = whole
                exchange.answer_whole(status, lines, body)
                return
        self._parsing = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            exchange, self.exchange = self.exchange, None
            assert self.transport is not None
            self.transport.close()
            if exchange is not None:
                exchange.upstream_lost()
            return
        exchange = self.exchange
        if exchange is not None:
            exchange.flush()

    def pause_writing(self) -> None:  # a request body bigger than the socket buffer
        pass

    def resume_writing(self) -> None:
        pass

    # llhttp callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        headers, self._headers = self._headers, []
        if self.exchange is not None:
            self.exchange.answer_head(self.parser.get_status_code(), headers)

    def on_body(self, body: bytes) -> None:
        if self.exchange is not None:
            self.exchange.answer_body(body)

    def on_message_complete(self) -> None:
        self._parsing = False
        self._headers = []  # trailers (llhttp reports them as headers): dropped, as the app does
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            exchange.answer_complete(reusable=self.parser.should_keep_alive())


class UpstreamPool:
    """Idle kept-alive connections per homeserver (host, port), newest first out."""

    def __init__(self) -> None:
        self._idle: dict[tuple[str, int], list[_Upstream]] = {}
        self._keys: dict[str, tuple[str, int]] = {}
        self._addresses: dict[str, tuple[float, str]] = {}  # host -> (until, address)
        self._sweeper: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Exchanges under way, for their upstream timeouts: looked at once a second instead of
        # a timer made and cancelled per request (they are 90 s or more, a second either way).
        self.in_flight: set[_Exchange] = set()
        self._watcher: asyncio.TimerHandle | None = None

    def checkout(self, exchange: _Exchange) -> tuple[tuple[str, int], _Upstream | None]:
        """The (host, port) of ``exchange``'s homeserver and an idle connection to it (None:
        connect one); ``exchange`` is watched for its deadline from now on. One call per
        request, for what were three (measured: benchmarks/proxy_instructions_bench.py)."""
        upstream = exchange.route.upstream
        key = self._keys.get(upstream)
        if key is None:
            host, _, port = upstream.removeprefix("http://").rstrip("/").rpartition(":")
            key = self._keys[upstream] = (host.strip("[]"), int(port))
        self.in_flight.add(exchange)
        if self._watcher is None:
            loop = self._loop = self._loop or asyncio.get_running_loop()
            self._watcher = loop.call_later(1.0, self._time_out_overdue)
        idle = self._idle.get(key)
        while idle:
            connection = idle.pop()
            transport = connection.transport
            if transport is not None and not transport.is_closing():
                return key, connection
        return key, None

    async def resolve(self, loop: asyncio.AbstractEventLoop, key: tuple[str, int]) -> str:
        """The address to connect to for ``key``'s host (a Service name on Kubernetes), looked
        up with the loop's resolver as aiohttp does, and kept ``_DNS_TTL_S`` (aiohttp's default)."""
        host = key[0]
        now = time.monotonic()
        known = self._addresses.get(host)
        if known is not None and known[0] > now:
            return known[1]
        infos = await loop.getaddrinfo(host, key[1], type=socket.SOCK_STREAM)
        address = str(infos[0][4][0])
        self._addresses[host] = (now + _DNS_TTL_S, address)
        return address

    def forget_address(self, host: str) -> None:
        self._addresses.pop(host, None)

    def give_back(self, connection: _Upstream, now: float) -> None:
        connection.idle_since = now
        idle = self._idle.get(connection.key)
        if idle is None:  # not ``setdefault``: it would make a list per call
            idle = self._idle[connection.key] = []
        idle.append(connection)
        if self._sweeper is None:
            loop = self._loop = self._loop or asyncio.get_running_loop()
            self._sweeper = loop.call_later(1.0, self._sweep)

    def forget(self, connection: _Upstream) -> None:
        idle = self._idle.get(connection.key)
        if idle and connection in idle:
            idle.remove(connection)

    def _sweep(self) -> None:
        """Close connections idle for longer than ``UPSTREAM_KEEPALIVE_S``."""
        self._sweeper = None
        cutoff = time.monotonic() - UPSTREAM_KEEPALIVE_S
        left = 0
        for key, idle in list(self._idle.items()):
            keep = []
            for connection in idle:
                if connection.idle_since < cutoff:
                    if connection.transport is not None:
                        connection.transport.close()
                else:
                    keep.append(connection)
            if keep:
                self._idle[key] = keep
                left += len(keep)
            else:
                del self._idle[key]
        if left and self._loop is not None:
            self._sweeper = self._loop.call_later(1.0, self._sweep)

    def _time_out_overdue(self) -> None:
        self._watcher = None
        now = time.monotonic()
        for exchange in [each for each in self.in_flight if each.deadline <= now]:
            exchange.timed_out()
        if self.in_flight and self._loop is not None:
            self._watcher = self._loop.call_later(1.0, self._time_out_overdue)

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None
        for idle in self._idle.values():
            for connection in idle:
                if connection.transport is not None:
                    connection.transport.close()
        self._idle.clear()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None


class _Exchange:
    """One relayed request: upstream and back, then metered and counted."""

    __slots__ = (
        "client",
        "app",
        "route",
        "query",
        "path",
        "kind",
        "budgets",
        "long_poll",
        "request_id",
        "body",
        "close",
        "began",
        "sent_at",
        "first_byte_s",
        "upstream",
        "status",
        "out",
        "capture",
        "held",
        "chunked",
        "answered",
        "bytes_out",
        "deadline",
        "client_gone",
        "no_body",
        "until_close",
        "finished",
        "plan",
        "headers",
        "bytes_in",
        "request_body",
        "response_body",
    )

    def __init__(
        self,
        client: RelayProtocol,
        app: ProxyApp,
        route: Route,
        query: bytes,
        plan: _Plan,
        close: bool,
        headers: _Headers,
        request_id: bytes,
        body: bytes,
        kind: Kind,
        began: float,
    ) -> None:
        """Made once per request: with positional arguments only (a class called with keywords
        gets them as a dict: 8,400 instructions against ~2,100, counted with callgrind,
        benchmarks/proxy_instructions_bench.py). It is its own result for metering
        (``_answered``), and the limiter's ``take`` makes no ``Admission``."""
        self.client = client
        self.app = app
        self.route = route
        self.query = query
        self.plan = plan
        self.path = plan.path  # at the homeserver (without a /t/<slug> prefix)
        self.request_id = request_id
        self.body = body
        self.close = close
        self.headers = headers  # the request's header lines, parsed (token, its user)
        self.began = began
        self.kind = kind
        self.capture = plan.capture and kind is plan.kind  # (kind is OTHER when unmetered)
        # What metering reads (``metering.Outcome``): the body in, and with ``capture`` the
        # bodies themselves (the answer's once it is complete and successful).
        self.bytes_in = len(body)
        self.request_body = body if self.capture else None
        self.response_body: bytes | None = None
        self.upstream: _Upstream | None = None
        self.status = 0
        self.out: list[bytes] = []
        self.held: list[bytes] | None = None
        self.chunked = False
        self.answered = False  # the answer's head went to the client
        self.bytes_out = 0
        self.deadline = 0.0
        self.client_gone = False
        self.no_body = False
        self.until_close = False
        self.finished = False
        self.first_byte_s: float | None = None
        # The tenant's and the client's budgets the limiter took from (``TenantLimiter.take``).
        self.budgets: tuple[Budget, Budget, int] | None = None
        self.long_poll = False

    # Upstream's answer ------------------------------------------------------------------

    def answer_head(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.first_byte_s = time.perf_counter() - self.sent_at
        self.status = status
        length: bytes | None = None
        coded = False  # chunked upstream: else, without a length, the answer ends at its close
        out = [_status_line(status)]
        for name, value in headers:
            lower = name.lower()
            if lower == b"content-length":
                length = value
            elif lower == b"transfer-encoding":
                coded = True
            elif line := _answer_line(lower, value):
                out.append(line)
        out.append(b"x-request-id: " + self.request_id + b"\r\n")
        self.no_body = status in (204, 304) or 100 <= status < 200
        self.until_close = length is None and not coded and not self.no_body
        if self.capture and 200 <= status < 300 and not self.no_body:
            self.held = []  # the whole body, for metering; its length once it is complete
        elif length is not None:
            out.append(b"content-length: " + length + b"\r\n")
        elif not self.no_body:
            self.chunked = True
            out.append(b"transfer-encoding: chunked\r\n")
        if self.close:
            out.append(b"connection: close\r\n")
        if self.held is None:
            out.append(b"\r\n")
        self.out = out

    def answer_whole(self, status: int, lines: bytes, body: bytes) -> None:
        """A whole answer with a body (``_whole_answer``): to the client in one write, its
        upstream connection back to the pool, metered as ``answer_complete`` meters."""
        self.first_byte_s = time.perf_counter() - self.sent_at
        self.status = status
        upstream, self.upstream = self.upstream, None  # back to the pool (_release_upstream)
        if upstream is not None:
            upstream.pool.give_back(upstream, time.monotonic())
        self.bytes_out = length = len(body)
        self.answered = True
        if not self.client_gone:
            self.client.write(
                b"".join(
                    (
                        lines,
                        b"x-request-id: %s\r\ncontent-length: %d\r\n" % (self.request_id, length),
                        b"connection: close\r\n\r\n" if self.close else b"\r\n",
                        body,
                    )
                )
            )
        self._answered(body if self.capture and 200 <= status < 300 else None)

    def answer_body(self, body: bytes) -> None:
        if self.held is not None:
            self.held.append(body)
            return
        self.bytes_out += len(body)
        if self.chunked:
            self.out.append(b"%x\r\n" % len(body))
            self.out.append(body)
            self.out.append(b"\r\n")
        else:
            self.out.append(body)

    def flush(self) -> None:
        """Write what the last upstream read made of the answer (the held body waits)."""
        if self.out and self.held is None:
            out, self.out = self.out, []
            self.answered = True
            if not self.client_gone:
                self.client.write(b"".join(out))

    def answer_complete(self, *, reusable: bool) -> None:
        self._release_upstream(reusable=reusable)
        response_body: bytes | None = None
        if self.held is not None:
            response_body = b"".join(self.held)
            self.held = None
            self.bytes_out = len(response_body)
            self.out.append(b"content-length: %d\r\n\r\n" % len(response_body))
            self.out.append(response_body)
        elif self.chunked:
            self.out.append(b"0\r\n\r\n")
        self.flush()
        self._answered(response_body)

    def _release_upstream(self, *, reusable: bool) -> None:
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            if reusable:
                upstream.pool.give_back(upstream, time.monotonic())
            elif upstream.transport is not None:
                upstream.transport.close()

    def _answered(self, response_body: bytes | None) -> None:
        """Finish an answered exchange, metered (``response_body``: the held one, if any). The
        exchange is its own result for metering (``metering.Outcome``, as a ``ForwardResult``
        is): no result object made per request (~3,000 instructions)."""
        self.response_body = response_body
        self._finish(True)

    def upstream_lost(self) -> None:
        """The homeserver's connection ended before its answer did."""
        self.upstream = None
        if self.finished:
            return
        if self.until_close:  # an answer without a length or chunks ends with its connection
            self.answer_complete(reusable=False)
            return
        if self.answered:  # cut short: the client can tell only by the connection closing
            self._finish(False, close=True)
            return
        self._fail(errors.upstream_unavailable())

    # Starting -----------------------------------------------------------------------------

    def start(self, head: bytes) -> None:
        """Send ``head`` + body upstream on a pooled connection, or on a new one."""
        pool = self.app.relay_pool
        timeout = self.plan.timeout
        if not timeout:  # a long-poll: its own wait and a margin
            query = self.query.decode("latin-1")
            timeout = upstream_timeout(self.path, query).total or 90.0
        self.deadline = time.monotonic() + timeout
        key, connection = pool.checkout(self)
        if connection is not None:
            self._send(connection, head)
            return
        task = self.client.loop.create_task(self._connect(pool, key, head))
        task.add_done_callback(_retrieve)

    async def _connect(self, pool: UpstreamPool, key: tuple[str, int], head: bytes) -> None:
        loop = self.client.loop
        try:
            async with asyncio.timeout(_CONNECT_TIMEOUT_S):
                address = await pool.resolve(loop, key)
                _, connection = await loop.create_connection(
                    lambda: _Upstream(pool, key), address, key[1]
                )
        except TimeoutError:
            if not self.finished:
                self._fail(errors.upstream_timeout())
            return
        except OSError:
            pool.forget_address(key[0])  # looked up again next time (a pod may have moved)
            if not self.finished:
                # Nothing went upstream: the waker heals a homeserver that refuses connections.
                self._fail(self.app.wake.after_failure(self.route, errors.upstream_refused()))
            return
        if self.finished:
            connection.transport.close()  # type: ignore[union-attr]
            return
        self._send(connection, head)

    def _send(self, connection: _Upstream, head: bytes) -> None:
        connection.exchange = self
        self.upstream = connection
        self.sent_at = time.perf_counter()
        assert connection.transport is not None
        connection.transport.write(head + self.body if self.body else head)
        if self.client.writing_paused:
            connection.transport.pause_reading()

    # Ending -------------------------------------------------------------------------------

    def timed_out(self) -> None:
        if self.finished:
            return
        self._drop_upstream()
        if self.answered:
            self._finish(False, close=True)
        else:
            self._fail(errors.upstream_timeout())

    def _drop_upstream(self) -> None:
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            upstream.exchange = None
            if upstream.transport is not None:
                upstream.transport.close()

    def _fail(self, exc: errors.MatrixError) -> None:
        """Answer ``exc`` (nothing was answered yet), counted as the app counts it."""
        self._drop_upstream()
        self.app._count_error(self.plan.metrics_route, exc)
        self.status = exc.status
        if not self.client_gone:
            self.client.write(_error_response(exc, self.request_id, self.close))
        self._finish(False)

    def client_left(self) -> None:
        """The client hung up: a long-poll lets go of its homeserver connection at once (and is
        not metered, as before); anything else is finished without an answer."""
        self.client_gone = True
        if self.long_poll and not self.finished:
            self._drop_upstream()
            self._finish(False, gone=True)

    def resume_upstream(self, reading: bool) -> None:
        upstream = self.upstream
        if upstream is not None and upstream.transport is not None:
            if reading:
                upstream.transport.resume_reading()
            else:
                upstream.transport.pause_reading()

    def _meter(self, app: ProxyApp) -> None:
        """Meter the exchange. A connection's header lines carry the same token request after
        request: its user, once metering knows it, is kept with them for this tenant."""
        headers, tenant = self.headers, self.route.tenant_id
        token = headers.token
        if token is False:  # no Authorization header: the query may hold one
            query = self.query
            token = query_token(query) if query else None
            app.exchange_meter.record_with_token(self.route, token, self.path, self.kind, self)
            return
        known = headers.user
        user = app.exchange_meter.record_with_token(
            self.route,
            token,
            self.path,
            self.kind,
            self,
            user=known[1] if known is not None and known[0] == tenant else None,
        )
        if user is not None and token is not None:
            headers.user = (tenant, user)

    def _finish(self, answered: bool, *, close: bool = False, gone: bool = False) -> None:
        """End the exchange; ``answered``: its answer came from the homeserver whole (then
        it is metered, and its time to first byte counted)."""
        if self.finished:
            return
        self.finished = True
        app = self.app
        app.relay_pool.in_flight.discard(self)
        budgets = self.budgets
        if budgets is not None and not self.long_poll:  # a long-poll holds no slots
            app.limiter.give_back(budgets[0], budgets[1])
        if self.long_poll:
            app.metrics.long_poll_closed()
        if answered:  # refused, failed or cut short: no first byte counted, not metered
            if self.first_byte_s is not None:
                app.metrics.first_byte(self.plan.first_byte_route, self.first_byte_s)
            if app.metering:
                self._meter(app)
        elapsed = time.perf_counter() - self.began
        if self.status and not gone:
            app.metrics.answered(self.plan.metrics_route, self.status, elapsed)
        if app.settings.proxy_access_log:  # the line carries the request id and the tenant
            with request_context(self.request_id.decode("latin-1"), self.route.tenant_id):
                scope = _scope(self.client, self.plan, self.query, self.headers)
                access_line(scope, self.status if not gone else 0, elapsed)
        self.client.exchange_done(self, close=close or self.close)


def _retrieve(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("relay connect failed", exc_info=task.exception())


class RelayProtocol(GuardedHttpToolsProtocol):
    """The gate's protocol with the fast lane in front (module docstring)."""

    __slots__ = (
        "_relaying",
        "_buffer",
        "_exchange",
        "_idle",
        "_proxy",
        "writing_paused",
        "_closing_after",
        "_in_next",
        "_peer",
        "_headers",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The proxy's app (not another one, nor one wrapped in middleware), unless turned off.
        app = self.app
        self._proxy: ProxyApp | None = (
            app if hasattr(app, "relay_pool") and app.settings.proxy_relay else None
        )
        self._relaying = self._proxy is not None
        self._buffer = b""
        self._exchange: _Exchange | None = None
        self._idle = False
        self.writing_paused = False
        self._closing_after = False
        self._in_next = False
        self._peer: str | None = None  # the client's address, when no proxy is trusted
        self._headers: _Headers | None = None  # of this connection's last request

    # Connection -------------------------------------------------------------------------

    def connection_lost(self, exc: Exception | None) -> None:
        exchange, self._exchange = self._exchange, None
        if exchange is not None:
            exchange.client_left()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._relaying:
            super().data_received(data)
            return
        if self._lingering:
            super().data_received(data)
            return
        if self._idle:
            self._idle = False
            self._reading_head = True
            self._arm(self.header_timeout)
        self._buffer = self._buffer + data if self._buffer else data
        if self._exchange is None:
            self._next()
        elif len(self._buffer) > self.max_head_bytes:
            self._socket.pause_reading()  # pipelined: read on once this answer is out

    def _next(self) -> None:
        """Take the next complete requests from the buffer: relay each, or hand the connection
        to uvicorn from the first byte of one the lane does not take."""
        if self._in_next:
            return  # an exchange ended while its request was being started: the loop goes on
        self._in_next = True
        try:
            while self._buffer and self._exchange is None and self._relaying:
                if self._socket.is_closing():
                    return
                buffer = self._buffer
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    if len(buffer) > self.max_head_bytes or buffer.count(b"\n") != buffer.count(
                        b"\r\n"
                    ):
                        self._hand_over()  # uvicorn answers 431, or 400 for a bare LF
                    elif not self._reading_head:
                        self._reading_head = True
                        self._arm(self.header_timeout)
                    return
                try:
                    request_line, headers = self._head(buffer, end)
                except _Handover:
                    self._hand_over()
                    return
                total = end + 4 + headers.length
                if len(buffer) < total:
                    # The body is still arriving: the app admits such a request first (the
                    # client's slot, or 503 at once) and refuses a declared length over the
                    # limit before reading it, as its wall tests require.
                    self._hand_over()
                    return
                self._reading_head = self._reading_body = False
                self._deadline = None
                self._buffer = buffer[total:]
                method, target = request_line.groups()  # one call, not two ``group``s
                try:
                    self._relay(method, target, headers, buffer[end + 4 : total])
                except _Handover:
                    self._buffer = buffer
                    self._hand_over()
                    return
            if not self._buffer and self._exchange is None and self._relaying:
                self._go_idle()
        finally:
            self._in_next = False

    def _head(self, buffer: bytes, end: int) -> tuple[re.Match[bytes], _Headers]:
        """The request line and headers of the head ending at ``end``, or ``_Handover``."""
        # The request line and its CRLF, at most the whole head (then it has no header lines).
        request_line = _REQUEST_LINE.match(buffer, 0, end + 2)
        if request_line is None:
            raise _Handover
        block = buffer[request_line.end() - 2 : end]
        headers = self._headers
        if headers is None or headers.block != block:
            headers = self._headers = _parse_headers(block)
        return request_line, headers

    def _hand_over(self) -> None:
        """The rest of this connection's bytes (from the current request's first) to uvicorn's
        protocol, which this object is too; relaying resumes when it is idle again."""
        self._relaying = False
        data, self._buffer = self._buffer, b""
        self._deadline = None
        self._reading_head = True
        self._head_bytes = 0
        super().data_received(data)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if (
            self._proxy is not None
            and not self._relaying
            and not self.pipeline
            and not self._reading_head
            and not self._reading_body
            and not self.transport.is_closing()
        ):
            # uvicorn's request is answered and no byte of another has come: back to the lane.
            self._unset_keepalive_if_required()
            self._relaying = True
            self._go_idle()

    def _go_idle(self) -> None:
        self._idle = True
        self._reading_head = False
        self._arm(self.timeout_keep_alive)

    def _arm(self, timeout: float) -> None:
        """Deadline in ``timeout`` s; the one timer fires at least every head timeout, so that
        moving a deadline nearer never needs a timer of its own."""
        now = self.loop.time()
        self._deadline = now + timeout
        if self._timer is None:
            self._timer = self.loop.call_at(
                now + min(timeout, self.header_timeout), self._timer_fired
            )

    def _timer_fired(self) -> None:
        if not self._relaying:
            super()._timer_fired()
            return
        self._timer = None
        deadline = self._deadline
        if deadline is None:
            return
        now = self.loop.time()
        if now < deadline:
            self._timer = self.loop.call_at(
                min(deadline, now + self.header_timeout), self._timer_fired
            )
            return
        if self._idle:
            self._socket.close()  # kept alive long enough, as uvicorn's timeout_keep_alive
        elif self._exchange is None:
            self._socket.write(
                self.answers.head_timeout if self._reading_head else self.answers.body_timeout
            )
            self._socket.close()

    def shutdown(self) -> None:
        if not self._relaying:
            super().shutdown()
        elif self._exchange is None:
            self._socket.close()
        else:
            self._closing_after = True

    def pause_writing(self) -> None:
        super().pause_writing()
        self.writing_paused = True
        if self._exchange is not None:
            self._exchange.resume_upstream(False)

    def resume_writing(self) -> None:
        super().resume_writing()
        self.writing_paused = False
        if self._exchange is not None:
            self._exchange.resume_upstream(True)

    # The exchange -----------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        socket = self._socket
        if not socket.is_closing():  # closed by us a moment before its connection_lost
            socket.write(data)

    def exchange_done(self, exchange: _Exchange, *, close: bool) -> None:
        if self._exchange is not exchange:
            return  # the client had left
        self._exchange = None
        self.server_state.total_requests += 1
        if close or self._closing_after or self._socket.is_closing():
            self._socket.close()
            return
        self._socket.resume_reading()
        self._next()

    def _relay(self, method_bytes: bytes, target: bytes, headers: _Headers, body: bytes) -> None:
        """Relay a request or raise ``_Handover`` before anything is done for it."""
        app = self._proxy
        assert app is not None
        began = time.perf_counter()
        method = _METHODS[method_bytes]
        raw_path, _, query = target.partition(b"?")
        plan = _plan_of(method, raw_path)
        if plan is None:
            raise _Handover
        field = plan.field
        if field is None:
            field = host_field(normalize_host(headers.host.decode("latin-1")))
        route = app.routes.get_cached(field)
        if route is None or route.status != "active" or not app.wake.awake(route):
            raise _Handover
        given = headers.request_id
        request_id = (
            given if given is not None and _SANE_REQUEST_ID.fullmatch(given) else new_request_id()
        )
        if app._trusted_proxies:  # then X-Forwarded-For, per request, may name the client
            client = client_address(_scope(self, plan, query, headers), app._trusted_proxies)
        else:
            client = self._peer or client_address(_scope(self, plan, query, headers), ())
            self._peer = client
        long_poll = plan.long_poll
        kind = plan.kind if app.metering else _OTHER
        exchange = _Exchange(
            self, app, route, query, plan, headers.close, headers, request_id, body, kind, began
        )
        self._exchange = exchange
        try:
            if len(body) > route.max_upload_bytes:
                raise errors.too_large(route.max_upload_bytes)
            # Its body is in: the tenant slot is taken with the admission.
            exchange.budgets = app.limiter.take(route, client, long_poll, True)
            exchange.long_poll = long_poll
            if long_poll:
                app.metrics.long_poll_opened()
        except errors.MatrixError as exc:
            exchange._fail(exc)
            return
        app.metrics.relayed += 1
        # Named and ordered as the ASGI path sends them (forwarding._upstream_headers); joined,
        # not %-formatted (a format is parsed anew each time).
        host = headers.host
        exchange.start(
            b"".join(
                (
                    method_bytes,
                    b" ",
                    plan.upstream_path,
                    b"?" if query else b"",
                    query,
                    b" HTTP/1.1\r\n",
                    headers.upstream,  # the client's lines less hop-by-hop and forwarding ones
                    b"x-request-id: ",
                    request_id,
                    b"\r\nX-Forwarded-For: ",
                    client.encode(),
                    b"\r\nX-Forwarded-Proto: ",
                    app.public_scheme,
                    b"\r\nHost: ",
                    host,
                    b"\r\nX-Forwarded-Host: ",
                    host,
                    b"\r\n\r\n",
                )
            )
        )


_METHODS = {name.encode(): name for name in ("GET", "PUT", "POST", "DELETE", "OPTIONS")}
_OTHER = Kind.OTHER  # not ``Kind.OTHER`` per request: see metering._SEND
