"""Sign-in stall benchmark: does a flood of failing sign-ins slow the tenant API for everyone
else? (argon2 password checks must run off the event loop, at most C3_PASSWORD_HASH_CONCURRENCY
at once.)

One run starts the platform (``c3 up`` through ``benchmarks/harness.py``) with the per-address
failure budget and the anonymous request rate limit lifted (``--address-budget``; otherwise
the flood would be throttled to 429s after a few attempts and measure nothing), then measures ``GET /healthz`` latency from one
sequential client for ``--duration`` seconds:

1. with nothing else going on (baseline);
2. while ``--flooders`` concurrent clients loop ``POST /v1/auth/token`` for emails that do not
   exist (each attempt one argon2 verification; each email new, so no account lockout).

It prints median and p99 healthz latency per phase, the sign-in attempts per second and their
status codes, and writes JSON to ``benchmarks/results/signin-stall-<UTC stamp>.json``.

Usage (from the repository root)::

    .venv/bin/python benchmarks/signin_stall_bench.py [--flooders 8] [--duration 10]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.harness import running_platform, stop_on_sigterm, write_results  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flooders", type=int, default=8, help="concurrent sign-in loops")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per phase")
    parser.add_argument(
        "--address-budget", type=int, default=10**9, help="C3_AUTH_ADDRESS_MAX_FAILURES"
    )
    parser.add_argument(
        "--hash-concurrency", type=int, default=2, help="C3_PASSWORD_HASH_CONCURRENCY"
    )
    parser.add_argument("--keep-data", action="store_true", help="keep the data directory")
    return parser.parse_args()


async def probe_healthz(client: httpx.AsyncClient, until: float) -> list[float]:
    latencies = []
    while time.monotonic() < until:
        started = time.perf_counter()
        response = await client.get("/healthz")
        latencies.append((time.perf_counter() - started) * 1000)
        response.raise_for_status()
    return latencies


async def flood(client: httpx.AsyncClient, until: float, statuses: Counter[int]) -> None:
    while time.monotonic() < until:
        response = await client.post(
            "/v1/auth/token",
            data={
                "grant_type": "password",
                "username": f"nobody-{uuid.uuid4().hex}@example.com",
                "password": "not the password",
            },
        )
        statuses[response.status_code] += 1


def summary(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "requests": len(ordered),
        "p50_ms": round(statistics.median(ordered), 2),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 2),
    }


async def measure(api_url: str, args: argparse.Namespace) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=args.flooders + 4)
    async with httpx.AsyncClient(base_url=api_url, timeout=60, limits=limits) as client:
        await probe_healthz(client, time.monotonic() + 1)  # warm-up
        baseline = await probe_healthz(client, time.monotonic() + args.duration)
        statuses: Counter[int] = Counter()
        until = time.monotonic() + args.duration
        flooders = [
            asyncio.create_task(flood(client, until, statuses)) for _ in range(args.flooders)
        ]
        flooded = await probe_healthz(client, until)
        await asyncio.gather(*flooders)
    return {
        "baseline": summary(baseline),
        "during_flood": summary(flooded),
        "signin_attempts_per_s": round(sum(statuses.values()) / args.duration, 1),
        "signin_statuses": {str(k): v for k, v in sorted(statuses.items())},
    }


def main() -> None:
    args = parse_args()
    stop_on_sigterm()
    overrides = {
        "C3_AUTH_ADDRESS_MAX_FAILURES": str(args.address_budget),
        # The flood comes from one address without a credential: lift that rate limit too.
        "C3_API_ANONYMOUS_RATE_PER_MINUTE": "1000000",
        "C3_API_ANONYMOUS_RATE_BURST": "1000000",
        "C3_PASSWORD_HASH_CONCURRENCY": str(args.hash_concurrency),
    }
    data_dir = Path(tempfile.mkdtemp(prefix="c3-signin-bench-"))
    started_at = datetime.now(UTC).isoformat()
    with running_platform(overrides, data_dir, keep_data=args.keep_data) as running:
        measured = asyncio.run(measure(running.api_url, args))
    report = {
        "started_at": started_at,
        "settings": {
            "flooders": args.flooders,
            "duration_s": args.duration,
            "address_budget": args.address_budget,
            "hash_concurrency": args.hash_concurrency,
        },
        **measured,
    }
    print(
        f"healthz baseline:     p50 {measured['baseline']['p50_ms']} ms, p99 {measured['baseline']['p99_ms']} ms"
    )
    print(
        f"healthz during flood: p50 {measured['during_flood']['p50_ms']} ms, "
        f"p99 {measured['during_flood']['p99_ms']} ms "
        f"({args.flooders} sign-in loops, {measured['signin_attempts_per_s']} attempts/s, "
        f"statuses {measured['signin_statuses']})"
    )
    out = write_results("signin-stall", report)
    print(f"written to {out.relative_to(REPO_ROOT)}")


if __name__ == "__main__":
    main()
