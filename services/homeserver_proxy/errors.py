"""Matrix-shaped error responses: ``{"errcode": "M_…", "error": "…"}``."""

from __future__ import annotations

import json
import math
from typing import Any

from homeserver_proxy.asgi import Send


class MatrixError(Exception):
    def __init__(
        self,
        status: int,
        errcode: str,
        error: str,
        *,
        headers: list[tuple[bytes, bytes]] | None = None,
        extra: dict[str, Any] | None = None,
        reason: str = "",
    ) -> None:
        super().__init__(error)
        # Why the proxy answered itself, for its metrics (``proxy_metrics.REFUSAL_REASONS``;
        # ``upstream_*``: the homeserver did not answer).
        self.reason = reason
        self.status = status
        self.errcode = errcode
        self.error = error
        self.headers = headers or []
        self.extra = extra or {}

    def answer(self) -> tuple[list[tuple[bytes, bytes]], bytes]:
        """The headers and body this error is answered with (by ``send``, and by the fast lane
        in ``relay``, which writes them itself)."""
        payload = {"errcode": self.errcode, "error": self.error, **self.extra}
        return json_answer(payload, extra_headers=self.headers)

    async def send(self, send: Send) -> None:
        headers, body = self.answer()
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})


def json_answer(
    payload: dict[str, Any], *, extra_headers: list[tuple[bytes, bytes]] | None = None
) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """The headers and body of a JSON answer of the proxy's own."""
    body = json.dumps(payload).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        (b"access-control-allow-origin", b"*"),
        *(extra_headers or []),
    ]
    return headers, body


async def send_json(
    send: Send,
    status: int,
    payload: dict[str, Any],
    *,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers, body = json_answer(payload, extra_headers=extra_headers)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def send_redirect(send: Send, location: bytes) -> None:
    """302 to ``location`` (a browser navigation the proxy sends elsewhere)."""
    await send(
        {
            "type": "http.response.start",
            "status": 302,
            "headers": [
                (b"location", location),
                (b"content-length", b"0"),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def unknown_tenant_host() -> MatrixError:
    return MatrixError(
        421, "M_UNRECOGNIZED", "No homeserver is served for this host", reason="unknown_tenant"
    )


def unknown_tenant_slug() -> MatrixError:
    return MatrixError(
        404, "M_NOT_FOUND", "No homeserver is served at this path", reason="unknown_tenant"
    )


def not_served() -> MatrixError:
    return MatrixError(404, "M_UNRECOGNIZED", "Unrecognized request", reason="not_served")


def does_not_federate(*, well_known: bool = False) -> MatrixError:
    """Server-server requests (and server discovery) for a tenant that does not federate."""
    if well_known:
        return MatrixError(
            404, "M_NOT_FOUND", "This homeserver does not federate", reason="no_federation"
        )
    return MatrixError(
        404, "M_UNRECOGNIZED", "This homeserver does not federate", reason="no_federation"
    )


def bad_path() -> MatrixError:
    return MatrixError(400, "M_UNRECOGNIZED", "Malformed request path", reason="bad_request")


def tenant_unavailable(status: str) -> MatrixError:
    return MatrixError(
        403,
        "M_FORBIDDEN",
        f"This homeserver is not available (tenant is {status})",
        reason="tenant_unavailable",
    )


def upstream_unavailable() -> MatrixError:
    return MatrixError(
        502,
        "M_UNKNOWN",
        "The homeserver is not reachable right now; retry shortly",
        headers=[(b"retry-after", b"2")],
        reason="upstream_unavailable",
    )


class UpstreamRefused(MatrixError):
    """The homeserver refused the connection: nothing was sent, it is not running (killed, or
    put to sleep before this proxy saw its route say so). ``homeserver_proxy.wake`` heals it."""


def upstream_refused() -> MatrixError:
    return UpstreamRefused(
        502,
        "M_UNKNOWN",
        "The homeserver is not reachable right now; retry shortly",
        headers=[(b"retry-after", b"2")],
        reason="upstream_unavailable",
    )


def homeserver_starting(retry_after_s: int) -> MatrixError:
    """A sleeping homeserver did not wake in time, or a stopped one is being restarted: 503
    (the service is coming back), never a hang."""
    return MatrixError(
        503,
        "M_UNKNOWN",
        "The homeserver is starting; retry shortly",
        headers=[(b"retry-after", str(retry_after_s).encode())],
        extra={"retry_after_ms": retry_after_s * 1000},
        reason="upstream_unavailable",
    )


def upstream_timeout() -> MatrixError:
    return MatrixError(
        504, "M_UNKNOWN", "The homeserver did not answer in time", reason="upstream_timeout"
    )


def too_large(limit: int) -> MatrixError:
    # Closing: the rest of a body we refuse is not worth receiving (and reading it to keep the
    # connection would let a client make us drain gigabytes).
    return MatrixError(
        413,
        "M_TOO_LARGE",
        f"Request body exceeds this homeserver's limit of {limit} bytes",
        headers=[(b"connection", b"close")],
        reason="too_large",
    )


def rate_limited(retry_after_ms: int) -> MatrixError:
    return MatrixError(
        429,
        "M_LIMIT_EXCEEDED",
        "Too many requests for this homeserver; retry later",
        headers=[(b"retry-after", str(max(1, math.ceil(retry_after_ms / 1000))).encode())],
        extra={"retry_after_ms": retry_after_ms},
        reason="rate_limited",
    )


def too_many_in_flight() -> MatrixError:
    # 503, not 429: the tenant is within its request rate, but this instance already works on
    # as many of its requests as the plan allows; retrying a moment later is expected to work.
    return MatrixError(
        503,
        "M_LIMIT_EXCEEDED",
        "Too many requests in progress for this homeserver; retry shortly",
        headers=[(b"retry-after", b"1")],
        extra={"retry_after_ms": 1000},
        reason="concurrency",
    )


def spool_full() -> MatrixError:
    # 503 and closing: the proxy's spool space for bodies without a length is taken by other
    # requests for now (nothing the client did wrong), and the rest of this body is not read.
    return MatrixError(
        503,
        "M_LIMIT_EXCEEDED",
        "The server is receiving too many large requests right now; retry shortly "
        "(sending a Content-Length lets an upload stream instead of waiting for space)",
        headers=[(b"retry-after", b"5"), (b"connection", b"close")],
        extra={"retry_after_ms": 5000},
        reason="spool_full",
    )


def bad_framing(why: str) -> MatrixError:
    """The request's framing or Host is ambiguous: refused, and the connection closed (what
    follows on it cannot be trusted to be where a server would read the next request)."""
    return MatrixError(
        400,
        "M_UNRECOGNIZED",
        why,
        headers=[(b"connection", b"close")],
        reason="bad_request",
    )
