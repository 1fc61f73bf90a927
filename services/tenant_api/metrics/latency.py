"""API request latency by route template, for Prometheus (served with the rest of ``/metrics``).

The route label is the matched route's template (``/v1/tenants/{tenant_id}``), never the raw
path, so the series stay bounded by the number of routes; a request no route matched is
``unmatched``. The API runs as one process per replica (``c3 api``): an in-process registry.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")

REGISTRY = CollectorRegistry()
REQUEST_DURATION = Histogram(
    "c3_api_request_duration_seconds",
    "Time the API took to answer, by method, route template and status class",
    ["method", "route", "status"],
    buckets=_BUCKETS,
    registry=REGISTRY,
)


def exposition() -> bytes:
    return generate_latest(REGISTRY)


def _route_template(scope: dict[str, Any]) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


class LatencyMiddleware:
    """Times every HTTP request from its head to the end of its answer."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = 500

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        finally:
            status_class = _STATUS_CLASSES[min(max(status // 100, 1), 5) - 1]
            REQUEST_DURATION.labels(scope["method"], _route_template(scope), status_class).observe(
                time.perf_counter() - began
            )
