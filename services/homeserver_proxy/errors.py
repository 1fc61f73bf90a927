"""Matrix-shaped error responses: ``{"errcode": "M_…", "error": "…"}``."""

from __future__ import annotations

import json
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
    ) -> None:
        super().__init__(error)
        self.status = status
        self.errcode = errcode
        self.error = error
        self.headers = headers or []
        self.extra = extra or {}

    async def send(self, send: Send) -> None:
        await send_json(
            send,
            self.status,
            {"errcode": self.errcode, "error": self.error, **self.extra},
            extra_headers=self.headers,
        )


async def send_json(
    send: Send,
    status: int,
    payload: dict[str, Any],
    *,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    body = json.dumps(payload).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        (b"access-control-allow-origin", b"*"),
        *(extra_headers or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def unknown_tenant_host() -> MatrixError:
    return MatrixError(421, "M_UNRECOGNIZED", "No homeserver is served for this host")


def unknown_tenant_slug() -> MatrixError:
    return MatrixError(404, "M_NOT_FOUND", "No homeserver is served at this path")


def not_served() -> MatrixError:
    return MatrixError(404, "M_UNRECOGNIZED", "Unrecognized request")


def bad_path() -> MatrixError:
    return MatrixError(400, "M_UNRECOGNIZED", "Malformed request path")


def tenant_unavailable(status: str) -> MatrixError:
    return MatrixError(403, "M_FORBIDDEN", f"This homeserver is not available (tenant is {status})")


def upstream_unavailable() -> MatrixError:
    return MatrixError(
        502,
        "M_UNKNOWN",
        "The homeserver is not reachable right now; retry shortly",
        headers=[(b"retry-after", b"2")],
    )


def upstream_timeout() -> MatrixError:
    return MatrixError(504, "M_UNKNOWN", "The homeserver did not answer in time")


def too_large(limit: int) -> MatrixError:
    return MatrixError(
        413, "M_TOO_LARGE", f"Request body exceeds this homeserver's limit of {limit} bytes"
    )
