"""What the proxy's metrics cost per request: ``homeserver_proxy.proxy_metrics.ProxyMetrics``
(plain numbers, read at scrape time) against the obvious alternative, prometheus_client's
``Counter``/``Histogram`` with children bound in advance, timed alternately in one process so
both see the same machine load. Also the time one scrape takes.

Per request the proxy classifies the path, counts the answer and its latency, and (forwarded
requests) the homeserver's time to first byte: that is what one iteration does.

Usage (from the repository root)::

    PYTHONPATH=services .venv/bin/python benchmarks/proxy_metrics_bench.py [--requests 200000]
"""

from __future__ import annotations

import argparse
import statistics
import time
import timeit

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from homeserver_proxy.proxy_metrics import (
    _LATENCY_BUCKETS,
    ROUTE_CLASSES,
    STATUS_CLASSES,
    ProxyMetrics,
    route_class,
)

PATH = "/_matrix/client/v3/rooms/!abc:acme.c3.test/send/m.room.message/tx123"


class LabelledChildren:
    """The alternative: prometheus_client metric objects, children bound once."""

    def __init__(self) -> None:
        registry = CollectorRegistry()
        requests = Counter("r", "r", ["route", "status"], registry=registry)
        latency = Histogram("l", "l", ["route"], buckets=_LATENCY_BUCKETS, registry=registry)
        ttfb = Histogram("t", "t", ["route"], buckets=_LATENCY_BUCKETS, registry=registry)
        self.requests = [[requests.labels(r, s) for s in STATUS_CLASSES] for r in ROUTE_CLASSES]
        self.latency = [latency.labels(r) for r in ROUTE_CLASSES]
        self.ttfb = [ttfb.labels(r) for r in ROUTE_CLASSES]

    def answered(self, route: int, status: int, seconds: float) -> None:
        self.requests[route][min(max(status // 100, 1), 5) - 1].inc()
        self.latency[route].observe(seconds)

    def first_byte(self, route: int, seconds: float) -> None:
        self.ttfb[route].observe(seconds)


def per_request_us(metrics: ProxyMetrics | LabelledChildren, n: int) -> float:
    def one() -> None:
        began = time.perf_counter()
        route = route_class(PATH)
        metrics.first_byte(route, 0.001)
        metrics.answered(route, 200, time.perf_counter() - began)

    return timeit.timeit(one, number=n) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    ours, theirs = ProxyMetrics(), LabelledChildren()
    ours_us, theirs_us = [], []
    for _ in range(args.rounds):
        ours_us.append(per_request_us(ours, args.requests))
        theirs_us.append(per_request_us(theirs, args.requests))
    scrape_ms = timeit.timeit(lambda: generate_latest(ours.registry), number=200) / 200 * 1e3
    with open("/proc/loadavg") as loadavg:
        load = loadavg.read().split()[0]
    print(f"metrics per request, median of {args.rounds} x {args.requests} (1-min load {load}):")
    print(f"  ProxyMetrics (plain numbers)          {statistics.median(ours_us):6.2f} us")
    print(f"  prometheus_client labelled children   {statistics.median(theirs_us):6.2f} us")
    print(f"one scrape of the proxy's metrics       {scrape_ms:6.2f} ms")


if __name__ == "__main__":
    main()
