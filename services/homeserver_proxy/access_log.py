"""The proxy's access log (``C3_PROXY_ACCESS_LOG``): one line per request, written by the ASGI
app and by the fast lane alike."""

from __future__ import annotations

import logging

from homeserver_proxy.asgi import Scope

access_log = logging.getLogger("homeserver_proxy.access")


def access_line(scope: Scope, status: int, seconds: float) -> None:
    """One line per request (C3_PROXY_ACCESS_LOG). The path only: a query may hold an
    ``access_token`` or a registration token, so it is never logged."""
    raw = scope.get("raw_path") or scope["path"].encode()
    path = raw.split(b"?", 1)[0].decode("ascii", "backslashreplace")
    access_log.info("%s %s %d %.1fms", scope.get("method"), path, status, seconds * 1000)
