"""API rate limit benchmark: what one rate-limit decision of the tenant API costs in steady
state (a credential seen in the last 5 s: one Redis ``EVAL`` of the GCRA script, no query).

Runs ``tenant_api.rate_limit.RateLimiter.take`` against a real Redis (``--redis-url``, in a
namespace of its own that it removes afterwards) ``--calls`` times from one sequential caller
and, with ``--concurrency`` callers at once, on distinct buckets; prints the median and p99
latency per decision and the decisions per second, and checks the answers (a bucket of burst B
served exactly B requests at once).

Usage (from the repository root)::

    PYTHONPATH=services .venv/bin/python benchmarks/api_rate_limit_bench.py \\
        --redis-url redis://127.0.0.1:6379/0 [--calls 2000] [--concurrency 20]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid

import redis


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis-url", default=os.environ.get("C3_REDIS_URL"), required=False)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=20)
    return parser.parse_args()


async def measure(args: argparse.Namespace) -> None:
    from platform_core.settings import get_settings
    from tenant_api.rate_limit import Quota, RateLimiter

    limiter = RateLimiter(get_settings())
    generous = Quota(per_minute=1_000_000, burst=1_000_000)

    small = Quota(per_minute=1, burst=5)
    served = [await limiter.take("bench:small", small) for _ in range(8)]
    assert [d is not None and d.allowed for d in served] == [True] * 5 + [False] * 3, served

    latencies = []
    for _ in range(args.calls):
        started = time.perf_counter()
        decision = await limiter.take("bench:sequential", generous)
        latencies.append(time.perf_counter() - started)
        assert decision is not None and decision.allowed
    ordered = sorted(latencies)
    print(
        f"sequential: {args.calls} decisions, median {statistics.median(ordered) * 1000:.3f} ms, "
        f"p99 {ordered[int(0.99 * (len(ordered) - 1))] * 1000:.3f} ms"
    )

    async def caller(n: int) -> None:
        for _ in range(args.calls // args.concurrency):
            decision = await limiter.take(f"bench:caller:{n}", generous)
            assert decision is not None and decision.allowed

    started = time.perf_counter()
    await asyncio.gather(*(caller(n) for n in range(args.concurrency)))
    elapsed = time.perf_counter() - started
    total = args.calls // args.concurrency * args.concurrency
    print(f"{args.concurrency} concurrent callers: {total / elapsed:.0f} decisions/s")


def main() -> None:
    args = parse_args()
    if not args.redis_url:
        raise SystemExit("give --redis-url (or C3_REDIS_URL)")
    namespace = f"c3bench{uuid.uuid4().hex[:8]}"
    os.environ.update({"C3_REDIS_URL": args.redis_url, "C3_REDIS_NAMESPACE": namespace})
    try:
        asyncio.run(measure(args))
    finally:
        client = redis.Redis.from_url(args.redis_url)
        for key in client.scan_iter(match=f"{namespace}:*", count=1000):
            client.delete(key)
        client.close()


if __name__ == "__main__":
    main()
