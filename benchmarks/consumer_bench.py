"""Usage consumer benchmark: how fast ``drain_usage_stream`` applies proxy usage batches to the
ledger, on real PostgreSQL and Redis.

One run:

1. creates a fresh database ``c3_bench_<random>`` (through ``--database-url``, the admin URL),
   migrates it (``platform_core.migrate.upgrade``) and creates ``--tenants`` active tenants on
   the default plan;
2. builds ``--batches`` version-2 batches with ``homeserver_proxy.metering.UsageMeter`` itself
   (one meter, drained once per simulated second, as the flusher does): per batch
   ``--events-per-batch`` billable events spread over the tenants (messages with unique event
   ids, a few calls, uploads and monthly active users), each with the request that carried it,
   plus a few non-billable requests per tenant; and XADDs them, each with a unique
   ``batch_id``, a ``source`` and the payload JSON exactly as ``UsageFlusher`` writes them, to
   the usage stream of a fresh Redis namespace ``c3bench-<random>``;
3. points the platform settings (``C3_DATABASE_URL``, ``C3_REDIS_URL``, ``C3_REDIS_NAMESPACE``)
   at them and times ``drain_usage_stream`` (called until the stream is empty);
4. checks the ledger: every batch recorded once, the ``messages`` counters summing to the number
   of distinct message ids sent, and the other meters to what was sent (exit 1 otherwise);
5. prints the rates and writes JSON to ``benchmarks/results/consumer-<UTC stamp>.json`` (with
   ``--profile`` the profile next to it, ``consumer-<UTC stamp>.pstats``);
6. drops the database and deletes the Redis keys, whatever happened (unless ``--keep``).

Usage (from the repository root)::

    .venv/bin/python benchmarks/consumer_bench.py [--batches 2000] [--events-per-batch 50]
"""

from __future__ import annotations

import argparse
import base64
import cProfile
import io
import json
import os
import platform as host_platform
import pstats
import random
import secrets
import signal
import socket
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import redis
from psycopg import sql
from sqlalchemy.engine import make_url

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.harness import write_results  # noqa: E402

TARGET_EVENTS_PER_S = 20_000
XADD_CHUNK = 200
# Shares of the billable events; the rest are messages.
CALL_SHARE = 0.02
UPLOAD_SHARE = 0.03
ACTIVE_USER_SHARE = 0.05
SYNC_REQUESTS_PER_TENANT = 5  # non-billable requests per tenant and batch (sync, reads)


@dataclass
class Sent:
    """What the generated batches carry, to check the ledger against."""

    batches: int = 0
    events: int = 0
    usage_rows: int = 0
    payload_bytes: int = 0
    message_ids: set[str] = field(default_factory=set)
    totals: Counter[str] = field(default_factory=Counter)  # per meter, as the ledger sums it
    # Per (tenant id, meter, UTC hour start in epoch seconds), from the payloads: each event's
    # natural id counted once, in the hour of its timestamp.
    cells: Counter[tuple[str, str, int]] = field(default_factory=Counter)
    natural_ids: set[tuple[str, str, str]] = field(default_factory=set)


# Database and Redis --------------------------------------------------------------------


def _plain_url(url: str) -> str:
    """``url`` without a SQLAlchemy driver suffix, as psycopg takes it."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def create_database(admin_url: str, name: str) -> str:
    """Create database ``name`` on the server of ``admin_url``; return its URL."""
    with psycopg.connect(_plain_url(admin_url), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return make_url(_plain_url(admin_url)).set(database=name).render_as_string(hide_password=False)


def drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(_plain_url(admin_url), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def delete_namespace(client: redis.Redis, namespace: str) -> int:
    keys = list(client.scan_iter(match=f"{namespace}:*", count=1000))
    return int(client.delete(*keys)) if keys else 0


def create_tenants(count: int) -> list[tuple[str, str]]:
    """``count`` active tenants on the default plan; returns (id, server name) pairs."""
    from sqlalchemy import select

    from platform_core.db import task_session
    from platform_core.models import Plan, Tenant, TenantStatus

    tenants = []
    with task_session() as session:
        plan = session.scalars(select(Plan).where(Plan.is_default.is_(True))).one()
        for n in range(count):
            slug = f"bench{n}-{secrets.token_hex(3)}"
            tenant = Tenant(
                slug=slug,
                display_name=slug,
                server_name=f"{slug}.c3.bench",
                status=TenantStatus.ACTIVE,
                plan_id=plan.id,
            )
            session.add(tenant)
            session.flush()
            tenants.append((str(tenant.id), tenant.server_name))
    return tenants


# Batches -------------------------------------------------------------------------------


class SimulatedClock:
    """The proxy's clock: the benchmark moves it one second per flush."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def _event_id(rng: random.Random) -> str:
    """A Synapse-like event id: ``$`` and 43 URL-safe base64 characters."""
    return "$" + base64.urlsafe_b64encode(rng.randbytes(32)).decode().rstrip("=")


def build_batches(
    tenants: list[tuple[str, str]], batches: int, events_per_batch: int, seed: int
) -> tuple[list[dict[str, str]], Sent]:
    """Stream entries as ``UsageFlusher`` writes them, from a real ``UsageMeter``."""
    from homeserver_proxy.metering import UsageMeter
    from platform_core.models import Meter

    rng = random.Random(seed)
    clock = SimulatedClock(time.time() - batches)  # one flush a second, ending now
    meter = UsageMeter(clock=clock)
    source = f"proxy:{socket.gethostname()}:{os.getpid()}"
    sent = Sent()
    entries = []
    users = 0
    slot = 0
    for _ in range(batches):
        for _ in range(events_per_batch):
            tenant, server = tenants[slot % len(tenants)]
            slot += 1
            draw = rng.random()
            if draw < CALL_SHARE:  # a MatrixRTC membership joining a call
                meter.record_request(tenant, 420, 60)
                meter.record_event(tenant, Meter.CALLS, _event_id(rng))
                sent.totals[Meter.CALLS] += 1
            elif draw < CALL_SHARE + UPLOAD_SHARE:
                size = rng.randint(20_000, 5_000_000)
                meter.record_request(tenant, size, 70)
                uri = f"mxc://{server}/{base64.urlsafe_b64encode(rng.randbytes(18)).decode()}"
                meter.record_event(tenant, Meter.MEDIA_BYTES, uri, size)
                sent.totals[Meter.MEDIA_BYTES] += size
            elif draw < CALL_SHARE + UPLOAD_SHARE + ACTIVE_USER_SHARE:
                users += 1
                meter.record_request(tenant, 0, 800)
                meter.record_active_user(tenant, f"@user{users}:{server}")
                sent.totals[Meter.ACTIVE_USERS] += 1
            else:
                event_id = _event_id(rng)
                meter.record_request(tenant, 230, 60)
                meter.record_event(tenant, Meter.MESSAGES, event_id)
                sent.message_ids.add(event_id)
        for tenant, _ in tenants:
            for _ in range(SYNC_REQUESTS_PER_TENANT):
                meter.record_request(tenant, 0, rng.randint(100, 20_000))
        clock.now += 1.0
        payload = meter.drain()
        assert payload is not None
        usage: list[list[Any]] = payload["usage"]  # type: ignore[assignment]
        events: list[list[Any]] = payload["events"]  # type: ignore[assignment]
        for tenant, hour, name, quantity in usage:
            sent.totals[name] += quantity
            sent.cells[(tenant, name, hour)] += quantity
        for tenant, name, natural_id, quantity, ts in events:
            if (tenant, name, natural_id) not in sent.natural_ids:
                sent.natural_ids.add((tenant, name, natural_id))
                sent.cells[(tenant, name, int(ts) // 3600 * 3600)] += quantity
        body = json.dumps(payload, separators=(",", ":"))  # as UsageFlusher._take_batch
        entries.append({"batch_id": uuid.uuid4().hex, "source": source, "payload": body})
        sent.batches += 1
        sent.events += len(events)
        sent.usage_rows += len(usage)
        sent.payload_bytes += len(body)
    sent.totals[Meter.MESSAGES] = len(sent.message_ids)
    return entries, sent


def publish(client: redis.Redis, stream: str, entries: list[dict[str, str]]) -> None:
    for start in range(0, len(entries), XADD_CHUNK):
        pipe = client.pipeline(transaction=False)
        for entry in entries[start : start + XADD_CHUNK]:
            pipe.xadd(stream, entry)  # type: ignore[arg-type]
        pipe.execute()


# Measuring and checking ----------------------------------------------------------------


def drain(client: redis.Redis, keys: Any, batches: int) -> tuple[float, int, Counter[str]]:
    """Call ``drain_usage_stream`` until the stream is empty; return (seconds, calls, counts)."""
    from tenant_api.usage.tasks import drain_usage_stream

    consumer = f"bench:{socket.gethostname()}:{os.getpid()}"
    report: Counter[str] = Counter()
    calls = 0
    started = time.perf_counter()
    while True:
        counts = drain_usage_stream(client, keys, consumer)
        calls += 1
        report.update(counts)
        if client.xlen(keys.usage_stream) == 0:
            break
        if not any(counts.values()):
            raise RuntimeError(f"the consumer made no progress; report so far {dict(report)}")
    elapsed = time.perf_counter() - started
    if report["applied"] != batches or report["malformed"] or report["duplicates"]:
        raise RuntimeError(f"expected {batches} batches applied, the consumer reports {report}")
    return elapsed, calls, report


def verify(sent: Sent) -> dict[str, Any]:
    """Compare the ledger with what was sent, in total per meter and per (tenant, meter, UTC
    hour); raise if anything differs."""
    from sqlalchemy import func, select

    from platform_core.db import task_session
    from platform_core.models import BillableEvent, UsageBatch, UsageCounter

    with task_session() as session:
        batches = session.scalar(select(func.count()).select_from(UsageBatch))
        events = session.scalar(select(func.count()).select_from(BillableEvent))
        rows = session.execute(
            select(
                UsageCounter.tenant_id,
                UsageCounter.meter,
                UsageCounter.period_start,
                UsageCounter.quantity,
            )
        ).all()
    ledger: Counter[str] = Counter()
    cells: Counter[tuple[str, str, int]] = Counter()
    for tenant_id, meter, period_start, quantity in rows:
        ledger[meter] += quantity
        cells[(str(tenant_id), meter, int(period_start.timestamp()))] += quantity
    checks = {
        "usage_batches": (batches, sent.batches),
        "billable_events": (events, sent.events),
        **{
            f"counter {meter}": (ledger.get(meter, 0), total)
            for meter, total in sent.totals.items()
        },
    }
    wrong = [
        f"  {name}: ledger {got}, sent {want}"
        for name, (got, want) in checks.items()
        if got != want
    ]
    off = sorted(key for key in cells.keys() | sent.cells.keys() if cells[key] != sent.cells[key])
    if off:
        wrong.append(f"  {len(off)} hourly counters (tenant, meter, UTC hour) differ, e.g.:")
        wrong += [
            f"    {t} {m} {datetime.fromtimestamp(h, UTC):%Y-%m-%d %H:%M:%S}Z: "
            f"ledger {cells[(t, m, h)]}, sent {sent.cells[(t, m, h)]}"
            for t, m, h in off[:6]
        ]
    if wrong:
        raise RuntimeError("the ledger does not match what was sent:\n" + "\n".join(wrong))
    verified = {name: got for name, (got, _) in checks.items()}
    verified["hourly counters"] = len(cells)
    return verified


def profile_summary(profiler: cProfile.Profile, path: Path) -> str:
    profiler.dump_stats(path)
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).strip_dirs()
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(40)
    return out.getvalue()


# Main ----------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=2000, help="batches to apply (2000)")
    parser.add_argument(
        "--events-per-batch", type=int, default=50, help="billable events per batch (50)"
    )
    parser.add_argument("--tenants", type=int, default=10, help="tenants (10)")
    parser.add_argument(
        "--database-url",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="admin URL of the PostgreSQL server the benchmark database is created on",
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--seed", type=int, default=1, help="random seed of the batches (1)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="run the consumer under cProfile (slower); print and save the profile",
    )
    parser.add_argument("--keep", action="store_true", help="keep the database and the Redis keys")
    args = parser.parse_args()
    if args.batches < 1 or args.events_per_batch < 0 or args.tenants < 1:
        parser.error("--batches and --tenants must be >= 1, --events-per-batch >= 0")
    return args


def exit_on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM ends the run like Ctrl-C does: through the ``finally`` that cleans up."""
    sys.exit(128 + signum)


def render(report: dict[str, Any]) -> str:
    r, s = report["result"], report["settings"]
    header = (
        f"{'batches':>8}  {'events/batch':>12}  {'tenants':>7}  {'seconds':>7}  "
        f"{'batches/s':>9}  {'events/s':>9}  {'usage rows/s':>12}  {'ms/batch':>8}"
    )
    row = (
        f"{s['batches']:>8}  {r['events_per_batch']:>12.1f}  {s['tenants']:>7}  "
        f"{r['seconds']:>7.2f}  {r['batches_per_s']:>9.0f}  {r['events_per_s']:>9.0f}  "
        f"{r['usage_rows_per_s']:>12.0f}  {r['ms_per_batch']:>8.2f}"
    )
    met = r["events_per_s"] >= TARGET_EVENTS_PER_S
    return "\n".join(
        [
            header,
            "-" * len(header),
            row,
            "",
            f"target: >= {TARGET_EVENTS_PER_S:,} billable events/s: "
            + ("met" if met else "MISSED")
            + (" (under cProfile: rates are not comparable)" if s["profile"] else ""),
            f"{r['events']} billable events and {r['usage_rows']} usage rows in {s['batches']} "
            f"batches ({r['payload_bytes'] / s['batches']:.0f} bytes of JSON each), "
            f"{r['drain_calls']} drain_usage_stream call(s)",
            "ledger verified: "
            + ", ".join(f"{name} {value}" for name, value in report["verified"].items()),
            f"PostgreSQL {report['machine']['postgres']}, Redis {report['machine']['redis']}; "
            f"1-min load average before the run {report['machine']['loadavg_1m_before']:.2f} "
            f"on {report['machine']['cpus']} CPUs",
        ]
    )


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    load_before = os.getloadavg()[0]
    started_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    suffix = secrets.token_hex(4)
    db_name = f"c3_bench_{suffix}"
    namespace = f"c3bench-{suffix}"
    client = redis.Redis.from_url(args.redis_url)
    db_url = create_database(args.database_url, db_name)
    print(f"database {db_name}, redis namespace {namespace}", flush=True)
    engine_used = False
    try:
        # Before platform_core reads them: settings and engines are cached on first use.
        os.environ["C3_DATABASE_URL"] = db_url
        os.environ["C3_REDIS_URL"] = args.redis_url
        os.environ["C3_REDIS_NAMESPACE"] = namespace
        from platform_core import db
        from platform_core.migrate import upgrade
        from platform_core.redis import RedisKeys
        from platform_core.settings import get_settings

        get_settings.cache_clear()
        db.sync_engine.cache_clear()
        db._sync_sessionmaker.cache_clear()
        engine_used = True

        upgrade(db_url)
        tenants = create_tenants(args.tenants)
        keys = RedisKeys(namespace)
        entries, sent = build_batches(tenants, args.batches, args.events_per_batch, args.seed)
        publish(client, keys.usage_stream, entries)
        del entries
        print(
            f"{sent.batches} batches ({sent.events} billable events, {sent.usage_rows} usage "
            f"rows) in {keys.usage_stream}; draining ...",
            flush=True,
        )
        profiler = cProfile.Profile() if args.profile else None
        if profiler is not None:
            profiler.enable()
        seconds, calls, counts = drain(client, keys, args.batches)
        if profiler is not None:
            profiler.disable()
        verified = verify(sent)
        with db.sync_engine().connect() as conn:
            postgres_version = conn.exec_driver_sql("SHOW server_version").scalar()
        report = {
            "started_at": started_at,
            "settings": {
                "batches": args.batches,
                "events_per_batch": args.events_per_batch,
                "tenants": args.tenants,
                "seed": args.seed,
                "profile": args.profile,
                "target_events_per_s": TARGET_EVENTS_PER_S,
            },
            "machine": {
                "cpus": os.cpu_count(),
                "platform": host_platform.platform(),
                "loadavg_1m_before": load_before,
                "postgres": postgres_version,
                "redis": client.info("server")["redis_version"],
            },
            "result": {
                "seconds": seconds,
                "drain_calls": calls,
                "consumer_report": dict(counts),
                "events": sent.events,
                "usage_rows": sent.usage_rows,
                "payload_bytes": sent.payload_bytes,
                "events_per_batch": sent.events / sent.batches,
                "batches_per_s": sent.batches / seconds,
                "events_per_s": sent.events / seconds,
                "usage_rows_per_s": sent.usage_rows / seconds,
                "ms_per_batch": seconds / sent.batches * 1000,
            },
            "verified": verified,
            "sent_totals": dict(sent.totals),
        }
        print("\n" + render(report))
        path = write_results("consumer", report)
        if profiler is not None:
            profile_path = path.with_suffix(".pstats")
            print("\n" + profile_summary(profiler, profile_path))
            print(f"profile written to {profile_path.relative_to(REPO_ROOT)}")
        print(f"\nresults written to {path.relative_to(REPO_ROOT)}")
        return 0
    finally:
        if engine_used:
            from platform_core import db

            db.sync_engine().dispose()
        if args.keep:
            print(f"kept: database {db_url}, redis keys {namespace}:*", flush=True)
        else:
            deleted = delete_namespace(client, namespace)
            drop_database(args.database_url, db_name)
            print(f"dropped database {db_name}, deleted {deleted} redis key(s)", flush=True)


if __name__ == "__main__":
    sys.exit(main())
