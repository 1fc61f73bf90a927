"""Sending one webhook message: resolve the endpoint's host once, leave out internal addresses
in production mode (SSRF), and connect only to addresses that were checked (no second lookup a
DNS rebinding could answer differently), the next one when a connection fails."""

from __future__ import annotations

import functools
import ipaddress
import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import httpx

from platform_core.outbound import (
    IPAddress,
    IPNetwork,
    OutboundRefused,
    check_addresses,
    literal_address,
)
from platform_core.settings import Mode, Settings

USER_AGENT = "C3-Webhooks/1.0"
# At most this many addresses of a name are tried per attempt: each may take the whole
# timeout to refuse, and the attempt must end within the delivery's lease.
MAX_ADDRESSES = 3


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One verifying TLS context per process: building one loads the CA bundle (~20 ms idle,
    ~175 ms on a loaded machine), which dominated a delivery when done per send."""
    return ssl.create_default_context()


@dataclass(frozen=True)
class SendResult:
    status_code: int | None  # None: no HTTP answer (refused, unreachable, timed out)
    latency_ms: int
    error: str | None
    retry_after_s: float | None = None

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def allowed_networks(settings: Settings) -> Sequence[IPNetwork] | None:
    """None: every address may be reached (local mode); else the allow-list of production."""
    if settings.mode is not Mode.PRODUCTION:
        return None
    return tuple(settings.webhook_allowed_networks)


def check_url(url: str, settings: Settings) -> None:
    """At endpoint creation: refuse a URL whose host is or resolves to an internal address
    (production mode). A name that does not resolve yet passes; it is checked at delivery."""
    allowed = allowed_networks(settings)
    if allowed is None:
        return
    host = urlsplit(url).hostname or ""
    literal = literal_address(host)
    if literal is not None:
        _refuse_internal(host, [literal], allowed)
        return
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return
    _refuse_internal(host, [_address(info) for info in infos], allowed)


def _refuse_internal(host: str, addresses: list[IPAddress], allowed: Sequence[IPNetwork]) -> None:
    try:
        check_addresses(host, addresses, allowed)
    except OutboundRefused as exc:
        # outbound's wording speaks of homeservers; a webhook's refusal says what it is.
        raise OutboundRefused(
            str(exc).replace(
                "homeservers are not allowed", "webhooks are not delivered to internal networks"
            )
        ) from None


def _address(info: tuple[object, ...]) -> IPAddress:
    sockaddr = info[4]
    assert isinstance(sockaddr, tuple)
    return ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])


def resolve_checked(host: str, port: int, settings: Settings) -> list[IPAddress]:
    """The addresses the message may go to, in the resolver's order: every address of the
    name is checked, and in production mode the internal ones (outside the allow-list) are
    left out; none left is a refusal, worded after the first refused address."""
    literal = literal_address(host)
    if literal is not None:
        addresses = [literal]
    else:
        try:
            infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
        except (OSError, UnicodeError) as exc:
            raise OutboundRefused(f"{host} does not resolve: {exc}") from None
        addresses = list(dict.fromkeys(_address(info) for info in infos))
    allowed = allowed_networks(settings)
    if allowed is None:
        return addresses
    usable: list[IPAddress] = []
    refused: OutboundRefused | None = None
    for address in addresses:
        try:
            _refuse_internal(host, [address], allowed)
        except OutboundRefused as exc:
            refused = refused or exc
            continue
        usable.append(address)
    if not usable:
        assert refused is not None
        raise refused
    return usable


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: the schedule's own delay applies


def send(url: str, headers: dict[str, str], body: bytes, settings: Settings) -> SendResult:
    """POST ``body`` to ``url`` at its checked address; never raises for the endpoint's
    trouble (it is the attempt's result)."""
    started = time.monotonic()

    def result(code: int | None, error: str | None, retry_after: float | None = None) -> SendResult:
        latency = int((time.monotonic() - started) * 1000)
        return SendResult(code, latency, error, retry_after)

    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        addresses = resolve_checked(host, port, settings)
    except OutboundRefused as exc:
        return result(None, str(exc)[:500])
    host_header = parts.netloc.rsplit("@", 1)[-1]
    request_headers = {
        **headers,
        "host": host_header,
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }
    # TLS is verified against the endpoint's name (SNI and certificate), not the address.
    extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
    unreachable: list[str] = []
    with httpx.Client(
        timeout=settings.webhook_timeout_s, follow_redirects=False, verify=_tls_context()
    ) as client:
        for address in addresses[:MAX_ADDRESSES]:
            shown = f"[{address}]" if address.version == 6 else str(address)
            netloc = f"{shown}:{parts.port}" if parts.port else shown
            pinned = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
            request = client.build_request(
                "POST", pinned, headers=request_headers, content=body, extensions=extensions
            )
            try:
                response = client.send(request)
                response.read()
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                # Nothing was sent to this address: the next one of the name is tried, as
                # a browser would (a receiver behind several addresses with one down).
                unreachable.append(f"{address}: {type(exc).__name__}: {exc}")
                continue
            except httpx.TimeoutException:
                return result(None, f"no answer within {settings.webhook_timeout_s:g}s")
            except httpx.HTTPError as exc:
                return result(None, f"{type(exc).__name__}: {exc}"[:500])
            error = None if 200 <= response.status_code < 300 else f"HTTP {response.status_code}"
            return result(response.status_code, error, _retry_after(response))
    return result(None, ("could not connect to " + "; ".join(unreachable))[:500])
