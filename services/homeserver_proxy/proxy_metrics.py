"""The proxy's Prometheus metrics, served on a listener of their own (``C3_PROXY_METRICS_PORT``),
never on the public port that tenants' clients reach.

Cheap on the hot path: every labelled child is bound once, here, and a request picks its
children by index (route class, status class); no label dictionaries are built per request.
Labels are bounded by construction: four route classes, five status classes, a fixed list of
refusal reasons and upstream error kinds. No per-tenant label (thousands of tenants times every
histogram bucket would be too many series; per-tenant traffic is in the usage pipeline).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from enum import IntEnum
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


class RouteClass(IntEnum):
    """What a request is, for the metrics: long-poll sync, an event sent, media, the rest."""

    SYNC = 0
    SEND = 1
    MEDIA = 2
    OTHER = 3


ROUTE_CLASSES = tuple(c.name.lower() for c in RouteClass)
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")

# Why the proxy answered itself instead of forwarding (``errors.MatrixError.reason``).
REFUSAL_REASONS = (
    "rate_limited",  # 429: the tenant's or the client's token bucket is empty
    "concurrency",  # 503: too many of the tenant's (or client's) requests in flight
    "too_large",  # 413: body over the tenant's upload limit
    "unknown_tenant",  # no tenant by Host or /t/<slug>
    "not_served",  # path outside what the guard forwards (admin API, ...)
    "no_federation",  # server-server traffic for a tenant that does not federate
    "tenant_unavailable",  # suspended, deleting, ...
    "bad_request",  # malformed path, ambiguous framing
)
UPSTREAM_ERRORS = ("unavailable", "timeout")

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def route_class(path: str) -> RouteClass:
    """Classify a raw request path with substring tests only (a ``/t/<slug>`` prefix is fine)."""
    if path.endswith(("/sync", "/events")):
        return RouteClass.SYNC
    if "/send/" in path:
        return RouteClass.SEND
    if "/_matrix/media/" in path or "/client/v1/media/" in path:
        return RouteClass.MEDIA
    return RouteClass.OTHER


class ProxyMetrics:
    """Every proxy metric, its children bound in advance."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        requests = Counter(
            "c3_proxy_requests",
            "Requests answered by the proxy (forwarded or refused), by route class and status "
            "class",
            ["route", "status"],
            registry=self.registry,
        )
        latency = Histogram(
            "c3_proxy_request_duration_seconds",
            "Time from the request's head to the end of its answer, by route class (sync "
            "includes the long-poll wait)",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        ttfb = Histogram(
            "c3_proxy_upstream_first_byte_seconds",
            "Time from sending a request to the homeserver to its answer's head, by route class",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        upstream_errors = Counter(
            "c3_proxy_upstream_errors",
            "Forwarded requests the homeserver did not answer (unavailable, timeout)",
            ["route", "error"],
            registry=self.registry,
        )
        refused = Counter(
            "c3_proxy_refused",
            "Requests the proxy answered itself instead of forwarding, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.long_polls = Gauge(
            "c3_proxy_open_long_polls",
            "Long-polls (/sync, /events) parked at the homeservers right now",
            registry=self.registry,
        )
        self.batches_flushed = Counter(
            "c3_proxy_usage_batches_flushed",
            "Usage batches written to the usage stream",
            registry=self.registry,
        )
        self.batches_pending = Gauge(
            "c3_proxy_usage_batches_pending",
            "Usage batches waiting to be written (Redis unreachable)",
            registry=self.registry,
        )
        self._requests = [[requests.labels(r, s) for s in STATUS_CLASSES] for r in ROUTE_CLASSES]
        self._latency = [latency.labels(r) for r in ROUTE_CLASSES]
        self._ttfb = [ttfb.labels(r) for r in ROUTE_CLASSES]
        self._upstream_errors = {
            error: [upstream_errors.labels(r, error) for r in ROUTE_CLASSES]
            for error in UPSTREAM_ERRORS
        }
        self._refused = {reason: refused.labels(reason) for reason in REFUSAL_REASONS}

    def answered(self, route: RouteClass, status: int, seconds: float) -> None:
        self._requests[route][min(max(status // 100, 1), 5) - 1].inc()
        self._latency[route].observe(seconds)

    def first_byte(self, route: RouteClass, seconds: float) -> None:
        self._ttfb[route].observe(seconds)

    def refused(self, reason: str) -> None:
        child = self._refused.get(reason)
        if child is not None:
            child.inc()

    def upstream_error(self, route: RouteClass, error: str) -> None:
        children = self._upstream_errors.get(error)
        if children is not None:
            children[route].inc()

    def pending_batches_from(self, count: Callable[[], int]) -> None:
        """Read the pending batch count at scrape time."""
        self.batches_pending.set_function(lambda: float(count()))


class MetricsListener:
    """GET /metrics on ``host:port`` in a thread of its own (Prometheus' WSGI server)."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self._registry = registry
        self._address = (host, port)
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        host, port = self._address
        self._server, self._thread = start_http_server(port, addr=host, registry=self._registry)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
