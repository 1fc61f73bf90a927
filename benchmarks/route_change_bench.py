"""What one route change costs a proxy, at many tenants: the whole-table reload every change
caused before (reading and parsing every route) against the incremental update (HMGET of the
changed fields), in the proxy's own ``RouteTable`` against a real Redis.

Publishes ``--tenants`` routes (two hash fields each: host and slug) under a namespace of its
own, starts a ``RouteTable`` (watching the change channel, as in ``c3 proxy``), then makes
``--changes`` route changes one at a time — a tenant falling asleep or waking, as the sleep pass
and the wake task publish them — each way:

- ``whole``: the hash is written and ``"*"`` published, as publishers did before (and older ones
  still do during a rolling upgrade): the table reloads everything, exactly the code path every
  change took before;
- ``incremental``: ``publish_route`` as today (the message names the changed fields).

For each change it measures this process's CPU time (``time.process_time``) and the wall time
from the PUBLISH until the table holds the new route; the publishing itself is not counted. It
prints the median, p90 and max of both. Its keys are deleted at the end.

```sh
C3_REDIS_URL=redis://127.0.0.1:6379/0 .venv/bin/python benchmarks/route_change_bench.py
.venv/bin/python benchmarks/route_change_bench.py --tenants 1000 --changes 50
```
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import random
import statistics
import time
import uuid

import redis
import redis.asyncio as aioredis

from homeserver_proxy.routing import RouteTable
from platform_core.redis import RedisKeys
from platform_core.routes import Route, host_field, publish_route


def _route(i: int) -> Route:
    return Route(
        tenant_id=str(uuid.uuid4()),
        slug=f"bench{i}",
        server_name=f"bench{i}.c3.test",
        upstream=f"http://10.0.{i // 250}.{i % 250}:8008",
        status="active",
        max_upload_bytes=50 * 1024 * 1024,
    )


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _run(url: str, tenants: int, changes: int) -> None:
    keys = RedisKeys(f"c3bench-routes-{uuid.uuid4().hex[:8]}")
    writer = redis.Redis.from_url(url)
    reader = aioredis.from_url(url)
    routes = [_route(i) for i in range(tenants)]
    pipe = writer.pipeline(transaction=False)
    for route in routes:
        payload = route.to_json()
        pipe.hset(keys.routes, mapping={field: payload for field in route.fields()})
    pipe.execute()
    table = RouteTable(reader, keys, refresh_interval=3600)  # no safety-net reload meanwhile
    applied = asyncio.Event()
    counts = {"load": 0, "update": 0}
    original_load = table.load
    # Run against an older checkout (PYTHONPATH=<it>/services) for the numbers from before
    # incremental updates: it has no ``update``, only the whole mode is measured then.
    original_update = getattr(table, "update", None)

    async def load() -> None:
        await original_load()
        counts["load"] += 1
        applied.set()

    async def update(fields: set[str]) -> None:
        assert original_update is not None
        await original_update(fields)
        counts["update"] += 1
        applied.set()

    table.load = load  # type: ignore[method-assign]
    table.update = update  # type: ignore[method-assign]
    await table.start()
    try:
        # Settled: the watcher's own load once subscribed (and older code's one more on the
        # subscribe reply) are over.
        await asyncio.sleep(2)
        print(
            f"{tenants} tenants ({2 * tenants} route fields), {changes} changes each way, "
            f"pid {os.getpid()}",
            flush=True,
        )
        rng = random.Random(16)
        modes = ("whole", "incremental") if original_update is not None else ("whole",)
        for mode in modes * 2:
            cpu: list[float] = []
            wall: list[float] = []
            before = dict(counts)
            for _ in range(changes):
                i = rng.randrange(tenants)
                routes[i] = dataclasses.replace(routes[i], asleep=not routes[i].asleep)
                applied.clear()
                if mode == "whole":
                    pipe = writer.pipeline()
                    for field in routes[i].fields():
                        pipe.hset(keys.routes, field, routes[i].to_json())
                    pipe.publish(keys.routes_changed, "*")
                    pipe.execute()
                else:
                    publish_route(writer, keys, routes[i])
                cpu_0, wall_0 = time.process_time(), time.perf_counter()
                while table.get_cached(host_field(routes[i].server_name)) != routes[i]:
                    await applied.wait()
                    applied.clear()
                cpu.append(time.process_time() - cpu_0)
                wall.append(time.perf_counter() - wall_0)
            made = {k: counts[k] - before[k] for k in counts}
            print(
                f"{mode:>11}: CPU per change median {statistics.median(cpu) * 1e3:8.3f} ms, "
                f"p90 {_percentile(cpu, 0.9) * 1e3:8.3f} ms, max {max(cpu) * 1e3:8.3f} ms | "
                f"change visible after median {statistics.median(wall) * 1e3:8.3f} ms, "
                f"max {max(wall) * 1e3:8.3f} ms | whole loads {made['load']}, "
                f"updates {made['update']}",
                flush=True,
            )
        # A whole load (start-up, resubscription, the safety net) and the longest the event
        # loop could not serve a request meanwhile.
        longest = 0.0
        ticking = True

        async def ticker() -> None:
            nonlocal longest
            last = time.perf_counter()
            while ticking:
                await asyncio.sleep(0.001)
                now = time.perf_counter()
                longest = max(longest, now - last)
                last = now

        tick = asyncio.create_task(ticker())
        await asyncio.sleep(0.01)
        cpu_0, wall_0 = time.process_time(), time.perf_counter()
        await original_load()
        cpu_1, wall_1 = time.process_time(), time.perf_counter()
        ticking = False
        await tick
        print(
            f"  whole load: {(cpu_1 - cpu_0) * 1e3:.0f} ms CPU, {(wall_1 - wall_0) * 1e3:.0f} ms "
            f"wall; longest event-loop stall meanwhile {longest * 1e3:.0f} ms"
        )
    finally:
        await table.stop()
        writer.delete(keys.routes)
        writer.close()
        await reader.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", type=int, default=10_000)
    parser.add_argument("--changes", type=int, default=30)
    parser.add_argument(
        "--redis-url", default=os.environ.get("C3_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    args = parser.parse_args()
    asyncio.run(_run(args.redis_url, args.tenants, args.changes))


if __name__ == "__main__":
    main()
