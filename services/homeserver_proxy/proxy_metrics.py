"""The proxy's Prometheus metrics, served on a listener of their own (``C3_PROXY_METRICS_PORT``),
never on the public port that tenants' clients reach.

Cheap on the hot path: the counters are plain numbers laid out once, here, and a request picks
its own by index (route class, status class): no label dictionaries, no locks, no metric
objects per request. They become Prometheus families only when scraped.
Labels are bounded by construction: four route classes, five status classes, a fixed list of
refusal reasons and upstream error kinds. No per-tenant label (thousands of tenants times every
histogram bucket would be too many series; per-tenant traffic is in the usage pipeline).
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Callable, Iterator
from enum import IntEnum
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from homeserver_proxy.forwarding import is_long_poll
from homeserver_proxy.routing import split_slug_prefix
from platform_core.metrics import labelled_counter


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
    "spool_full",  # 503: chunked bodies already hold this proxy's spool budget
    "confined",  # 403: an external context participant reaching past its context
)
UPSTREAM_ERRORS = ("unavailable", "timeout")

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def route_class(path: str) -> RouteClass:
    """Classify a request path (a ``/t/<slug>`` prefix is fine): a sync is a long-poll by its
    whole path (not by its end: a send's txn id or a receipt's event id may be "sync"), the
    rest by substrings."""
    prefixed = split_slug_prefix(path)
    if is_long_poll(path if prefixed is None else prefixed[1]):
        return RouteClass.SYNC
    if "/send/" in path:
        return RouteClass.SEND
    if "/_matrix/media/" in path or "/client/v1/media/" in path:
        return RouteClass.MEDIA
    return RouteClass.OTHER


class _Histogram:
    """Observations counted per bucket (not cumulative) with their sum: one ``bisect`` and two
    additions per observation, cumulated only when scraped. ``ProxyMetrics.answered`` and
    ``first_byte`` add them in place (a method here would be one more call per request)."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(_LATENCY_BUCKETS) + 1)  # the last: above every bound
        self.total = 0.0

    def cumulative(self) -> tuple[list[tuple[str, float]], float]:
        counts, running = list(self.counts), 0
        buckets: list[tuple[str, float]] = []
        for bound, count in zip((*map(repr, _LATENCY_BUCKETS), "+Inf"), counts, strict=True):
            running += count
            buckets.append((bound, running))
        return buckets, self.total


class ProxyMetrics(Collector):
    """Every proxy metric as plain numbers, laid out in advance and read at scrape time.

    Only the proxy's event loop thread writes them (no locks on the hot path); the metrics
    listener's thread reads them, which the GIL keeps safe for single numbers."""

    def __init__(self) -> None:
        self._requests = [[0] * len(STATUS_CLASSES) for _ in ROUTE_CLASSES]
        self._latency = [_Histogram() for _ in ROUTE_CLASSES]
        self._first_byte = [_Histogram() for _ in ROUTE_CLASSES]
        self._upstream_errors = {error: [0] * len(ROUTE_CLASSES) for error in UPSTREAM_ERRORS}
        self._refused = dict.fromkeys(REFUSAL_REASONS, 0)
        self._long_polls = 0
        self._batches_flushed = 0
        # Requests the fast lane (relay) forwarded itself; the rest went through the ASGI app.
        self.relayed = 0
        self._pending_batches: Callable[[], int] = lambda: 0
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    # Hot path ---------------------------------------------------------------------------

    # These two run for every request: the histograms added to in place, no min/max calls.
    def answered(self, route: RouteClass, status: int, seconds: float) -> None:
        index = status // 100 - 1
        self._requests[route][index if 0 <= index <= 4 else (0 if index < 0 else 4)] += 1
        histogram = self._latency[route]
        histogram.counts[bisect_left(_LATENCY_BUCKETS, seconds)] += 1
        histogram.total += seconds

    def first_byte(self, route: RouteClass, seconds: float) -> None:
        histogram = self._first_byte[route]
        histogram.counts[bisect_left(_LATENCY_BUCKETS, seconds)] += 1
        histogram.total += seconds

    def refused(self, reason: str) -> None:
        if reason in self._refused:
            self._refused[reason] += 1

    def upstream_error(self, route: RouteClass, error: str) -> None:
        counts = self._upstream_errors.get(error)
        if counts is not None:
            counts[route] += 1

    def long_poll_opened(self) -> None:
        self._long_polls += 1

    def long_poll_closed(self) -> None:
        self._long_polls -= 1

    @property
    def open_long_polls(self) -> int:
        return self._long_polls

    def batch_flushed(self) -> None:
        self._batches_flushed += 1

    def pending_batches_from(self, count: Callable[[], int]) -> None:
        """Read the pending batch count at scrape time."""
        self._pending_batches = count

    # Scrape -----------------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        yield labelled_counter(
            "c3_proxy_requests",
            "Requests answered by the proxy (forwarded or refused), by route class and status "
            "class",
            ["route", "status"],
            (
                ([route, status], count)
                for route, counts in zip(ROUTE_CLASSES, self._requests, strict=True)
                for status, count in zip(STATUS_CLASSES, counts, strict=True)
            ),
        )
        yield _histogram(
            "c3_proxy_request_duration_seconds",
            "Time from the request's head to the end of its answer, by route class (sync "
            "includes the long-poll wait)",
            self._latency,
        )
        yield _histogram(
            "c3_proxy_upstream_first_byte_seconds",
            "Time from sending a request to the homeserver to its answer's head, by route class",
            self._first_byte,
        )
        yield labelled_counter(
            "c3_proxy_upstream_errors",
            "Forwarded requests the homeserver did not answer (unavailable, timeout)",
            ["route", "error"],
            (
                ([route, error], count)
                for error, counts in self._upstream_errors.items()
                for route, count in zip(ROUTE_CLASSES, counts, strict=True)
            ),
        )
        yield labelled_counter(
            "c3_proxy_refused",
            "Requests the proxy answered itself instead of forwarding, by reason",
            ["reason"],
            (([reason], count) for reason, count in self._refused.items()),
        )
        yield GaugeMetricFamily(
            "c3_proxy_open_long_polls",
            "Long-polls (/sync, /events) parked at the homeservers right now",
            value=self._long_polls,
        )
        yield CounterMetricFamily(
            "c3_proxy_fast_lane_requests",
            "Requests forwarded by the proxy's fast lane (the rest went through its ASGI app)",
            value=self.relayed,
        )
        yield CounterMetricFamily(
            "c3_proxy_usage_batches_flushed",
            "Usage batches written to the usage stream",
            value=self._batches_flushed,
        )
        yield GaugeMetricFamily(
            "c3_proxy_usage_batches_pending",
            "Usage batches waiting to be written (Redis unreachable)",
            value=self._pending_batches(),
        )


def _histogram(name: str, documentation: str, by_route: list[_Histogram]) -> Metric:
    family = HistogramMetricFamily(name, documentation, labels=["route"])
    for route, histogram in zip(ROUTE_CLASSES, by_route, strict=True):
        buckets, total = histogram.cumulative()
        family.add_metric([route], buckets, total)
    return family


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
