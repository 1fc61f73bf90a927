"""Platform metrics in the Prometheus text format (0.0.4).

The workers' counters live in Redis hashes that every worker process adds to: the reconcile
loop's, the usage consumer's and the lifecycle operations' (attempts, failures, a duration
histogram). They are platform totals, survive a worker restart, and are the same whichever
process (a Celery prefork child, another replica) did the work — which is why Celery's several
processes need no ``prometheus_client`` multiprocess directory: a scrape reads Redis. The API's
``/metrics`` reads them with gauges counted from the platform database; the worker's own
listener (``worker_metrics``) reads them with the queue depth and the usage consumer's lag.
Writers (provisioner, usage consumer) and readers share the names below.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from platform_core.redis import RedisKeys
from platform_core.routes import Route

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ReconcileAction(StrEnum):
    """What one reconcile pass can do to a tenant: a metric label and an audit action each."""

    HOMESERVER_RESTARTED = "homeserver.restarted"
    HOMESERVER_STOPPED = "homeserver.stopped"
    HOMESERVER_RECONFIGURED = "homeserver.reconfigured"  # config drifted: re-rendered, restarted
    # Its deployment was changed by someone else (a deleted Service, an edited ConfigMap, ...):
    # applied again.
    HOMESERVER_REPAIRED = "homeserver.repaired"
    ROUTE_PUBLISHED = "route.published"
    ROUTE_WITHDRAWN = "route.withdrawn"
    OPERATION_REQUEUED = "operation.requeued"
    ARCHIVE_PURGED = "archive.purged"
    FAILED = "reconcile.failed"
    SKIPPED_BUSY = "reconcile.skipped_busy"


_RUNS = "runs"
_ACTION = "action:"
_LAST_RUN_AT = "last_run_at"
_LAST_DURATION = "last_duration_s"


def record_reconcile_run(
    client: redis.Redis,
    keys: RedisKeys,
    actions: Mapping[str, int],
    *,
    finished_at: float,
    duration_s: float,
) -> None:
    """Add one finished pass (its action counts, when it ended, how long it took)."""
    pipe = client.pipeline(transaction=True)
    pipe.hincrby(keys.reconcile_metrics, _RUNS, 1)
    for action, count in actions.items():
        if count:
            pipe.hincrby(keys.reconcile_metrics, f"{_ACTION}{action}", count)
    pipe.hset(
        keys.reconcile_metrics,
        mapping={_LAST_RUN_AT: repr(finished_at), _LAST_DURATION: repr(duration_s)},
    )
    pipe.execute()


_DEAD_LETTERED = "dead_lettered"
_DEAD_LETTER_DROPPED = "dead_letter_dropped"


def park_dead_letters(
    client: redis.Redis, keys: RedisKeys, entries: list[dict[bytes, bytes]], *, max_len: int
) -> int:
    """Append unparseable usage entries to the dead-letter stream, keep only its newest
    ``max_len`` entries (exact trimming: the stream never grows past the bound) and count both
    the parked and the dropped ones; returns how many old entries were dropped."""
    if not entries:
        return 0
    pipe = client.pipeline(transaction=True)
    for fields in entries:
        pipe.xadd(keys.usage_dead, fields)  # type: ignore[arg-type]
    pipe.xtrim(keys.usage_dead, maxlen=max_len, approximate=False)
    pipe.hincrby(keys.usage_metrics, _DEAD_LETTERED, len(entries))
    dropped = int(pipe.execute()[len(entries)])
    if dropped:
        client.hincrby(keys.usage_metrics, _DEAD_LETTER_DROPPED, dropped)
    return dropped


# Per attempt of a lifecycle operation: what it led to (``attempts``) and how long it ran.
OPERATION_OUTCOMES = ("succeeded", "retried", "failed", "superseded")
OPERATION_DURATION_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
_SEP = "|"


def step_label(step: str | None) -> str:
    """A recorded step as a label: its name without what follows ``:`` (a dump's file name),
    so the label set stays the fixed set of step names; ``start`` before the first step."""
    return step.split(":", 1)[0] if step else "start"


def record_operation_attempt(
    client: redis.Redis,
    keys: RedisKeys,
    *,
    kind: str,
    outcome: str,
    duration_s: float,
    failed_after_step: str | None = None,
) -> None:
    """Add one finished attempt of an operation of ``kind``: its outcome (one of
    ``OPERATION_OUTCOMES``), its duration and, for a failed attempt (``retried``, ``failed``),
    the last step it had completed."""
    key = keys.operation_metrics
    pipe = client.pipeline(transaction=True)
    pipe.hincrby(key, _SEP.join(("attempts", kind, outcome)), 1)
    if outcome in ("retried", "failed"):
        pipe.hincrby(key, _SEP.join(("failures", kind, step_label(failed_after_step))), 1)
    for bound in OPERATION_DURATION_BUCKETS:
        if duration_s <= bound:
            pipe.hincrby(key, _SEP.join(("bucket", kind, repr(bound))), 1)
    pipe.hincrby(key, _SEP.join(("count", kind)), 1)
    pipe.hincrbyfloat(key, _SEP.join(("sum", kind)), duration_s)
    pipe.execute()


@dataclass(frozen=True)
class OperationStats:
    """The operation hash, parsed: counters by (kind, outcome) and (kind, step), and one
    duration histogram per kind."""

    attempts: dict[tuple[str, str], int] = field(default_factory=dict)
    failures: dict[tuple[str, str], int] = field(default_factory=dict)
    buckets: dict[str, dict[float, int]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    sums: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_redis(cls, raw: Mapping[bytes | str, bytes | str]) -> OperationStats:
        stats = cls()
        for k, v in raw.items():
            parts = _text(k).split(_SEP)
            value = _text(v)
            if parts[0] == "attempts" and len(parts) == 3:
                stats.attempts[(parts[1], parts[2])] = int(value)
            elif parts[0] == "failures" and len(parts) == 3:
                stats.failures[(parts[1], parts[2])] = int(value)
            elif parts[0] == "bucket" and len(parts) == 3:
                stats.buckets.setdefault(parts[1], {})[float(parts[2])] = int(value)
            elif parts[0] == "count" and len(parts) == 2:
                stats.counts[parts[1]] = int(value)
            elif parts[0] == "sum" and len(parts) == 2:
                stats.sums[parts[1]] = float(value)
        return stats


def labelled_counter(
    name: str, documentation: str, labels: list[str], counts: Iterable[tuple[list[str], float]]
) -> CounterMetricFamily:
    """A counter family with one sample per set of label values (``([kind, outcome], 3)``)."""
    family = CounterMetricFamily(name, documentation, labels=labels)
    for values, count in counts:
        family.add_metric(values, count)
    return family


def operation_families(
    stats: OperationStats,
) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
    yield labelled_counter(
        "c3_operation_attempts",
        "Finished attempts of lifecycle operations, by kind and outcome",
        ["kind", "outcome"],
        (([kind, outcome], count) for (kind, outcome), count in sorted(stats.attempts.items())),
    )
    yield labelled_counter(
        "c3_operation_failures",
        "Failed attempts of lifecycle operations, by kind and the last step they completed",
        ["kind", "step"],
        (([kind, step], count) for (kind, step), count in sorted(stats.failures.items())),
    )
    duration = HistogramMetricFamily(
        "c3_operation_duration_seconds",
        "How long one attempt of a lifecycle operation ran, by kind",
        labels=["kind"],
    )
    for kind, count in sorted(stats.counts.items()):
        found = stats.buckets.get(kind, {})
        buckets = [(repr(b), found.get(b, 0)) for b in OPERATION_DURATION_BUCKETS]
        duration.add_metric([kind], [*buckets, ("+Inf", count)], stats.sums.get(kind, 0.0))
    yield duration


@dataclass(frozen=True)
class UsageStats:
    dead_lettered: int = 0  # unparseable usage entries parked in <ns>:usage:dead
    dead_letter_dropped: int = 0  # parked entries trimmed off to keep the stream bounded

    @classmethod
    def from_redis(cls, raw: Mapping[bytes | str, bytes | str]) -> UsageStats:
        values = {_text(k): int(_text(v)) for k, v in raw.items()}
        return cls(
            dead_lettered=values.get(_DEAD_LETTERED, 0),
            dead_letter_dropped=values.get(_DEAD_LETTER_DROPPED, 0),
        )


@dataclass(frozen=True)
class ReconcileStats:
    runs: int = 0
    actions: dict[str, int] = field(default_factory=dict)
    last_run_at: float | None = None  # Unix time; None: never ran
    last_duration_s: float | None = None

    @classmethod
    def from_redis(cls, raw: Mapping[bytes | str, bytes | str]) -> ReconcileStats:
        """From the hash as ``HGETALL`` returns it (bytes, or str from a decoding client)."""
        values = {_text(k): _text(v) for k, v in raw.items()}
        actions = {k[len(_ACTION) :]: int(v) for k, v in values.items() if k.startswith(_ACTION)}
        last_run = values.get(_LAST_RUN_AT)
        duration = values.get(_LAST_DURATION)
        return cls(
            runs=int(values.get(_RUNS, 0)),
            actions=actions,
            last_run_at=float(last_run) if last_run is not None else None,
            last_duration_s=float(duration) if duration is not None else None,
        )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@dataclass(frozen=True)
class SleepStats:
    """Sleep passes' and wakes' outcomes (provisioner.hibernation), ``sleep:<outcome>`` and
    ``wake:<outcome>`` counters in Redis."""

    sleep: Mapping[str, int] = field(default_factory=dict)
    wake: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def from_redis(cls, raw: Mapping[bytes | str, bytes | str]) -> SleepStats:
        sleep: dict[str, int] = {}
        wake: dict[str, int] = {}
        for key, value in raw.items():
            kind, _, outcome = _text(key).partition(":")
            if kind == "sleep":
                sleep[outcome] = int(_text(value))
            elif kind == "wake":
                wake[outcome] = int(_text(value))
        return cls(sleep, wake)


def sleep_families(stats: SleepStats) -> Iterator[CounterMetricFamily]:
    # The outcomes provisioner.hibernation counts (every one reported, zero included).
    sleep_outcomes = ("slept", "kept_awake_due_work", "woke_meanwhile", "skipped_busy", "failed")
    wake_outcomes = (
        "wake_tasks",
        "woken",
        "healed",
        "already_awake",
        "not_active",
        "busy",
        "failed",
    )
    yield labelled_counter(
        "c3_homeserver_sleeps",
        "Sleep pass outcomes per idle homeserver (slept, kept awake because work was due, ...)",
        ["outcome"],
        (([o], stats.sleep.get(o, 0)) for o in sorted({*sleep_outcomes, *stats.sleep})),
    )
    yield labelled_counter(
        "c3_homeserver_wakes",
        "Wake tasks (asked by proxies and the maintenance window) by outcome; wake_tasks "
        "counts every task",
        ["outcome"],
        (([o], stats.wake.get(o, 0)) for o in sorted({*wake_outcomes, *stats.wake})),
    )


@dataclass(frozen=True)
class PlatformSnapshot:
    """Everything one scrape reports: reconcile counters and database counts."""

    reconcile: ReconcileStats
    tenants: Mapping[str, int]  # by status, every status present
    operations: Mapping[str, int]  # by state, every state present
    usage: UsageStats = field(default_factory=UsageStats)
    # Homeservers by state: awake, asleep (active tenants), stopped (suspended tenants).
    homeservers: Mapping[str, int] = field(default_factory=dict)
    sleep: SleepStats = field(default_factory=SleepStats)


class _SnapshotCollector(Collector):
    def __init__(self, snapshot: PlatformSnapshot) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        yield from reconcile_families(self._snapshot.reconcile)
        yield from usage_families(self._snapshot.usage)
        yield _by_label("c3_tenants", "Tenants by status", "status", self._snapshot.tenants)
        yield _by_label(
            "c3_operations", "Lifecycle operations by state", "state", self._snapshot.operations
        )
        yield _by_label(
            "c3_homeservers",
            "Homeservers by state: awake or asleep (active tenants), stopped (suspended)",
            "state",
            self._snapshot.homeservers,
        )
        yield from sleep_families(self._snapshot.sleep)


def reconcile_families(
    reconcile: ReconcileStats,
) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
    yield CounterMetricFamily(
        "c3_reconcile_runs", "Reconcile passes finished", value=reconcile.runs
    )
    # Every known action, zero included, so rate() works from the first scrape.
    known = sorted({a.value for a in ReconcileAction} | set(reconcile.actions))
    yield labelled_counter(
        "c3_reconcile_actions",
        "Repairs and outcomes of reconcile passes, by action",
        ["action"],
        (([action], reconcile.actions.get(action, 0)) for action in known),
    )
    if reconcile.last_run_at is not None:
        yield GaugeMetricFamily(
            "c3_reconcile_last_run_timestamp_seconds",
            "When the last reconcile pass finished (Unix time)",
            value=reconcile.last_run_at,
        )
    if reconcile.last_duration_s is not None:
        yield GaugeMetricFamily(
            "c3_reconcile_duration_seconds",
            "How long the last reconcile pass took",
            value=reconcile.last_duration_s,
        )


def usage_families(usage: UsageStats) -> Iterator[CounterMetricFamily]:
    yield CounterMetricFamily(
        "c3_usage_dead_lettered",
        "Usage entries the consumer could not parse, parked in the dead-letter stream",
        value=usage.dead_lettered,
    )
    yield CounterMetricFamily(
        "c3_usage_dead_letter_dropped",
        "Parked usage entries dropped (oldest first) to keep the dead-letter stream within "
        "C3_USAGE_DEAD_LETTER_MAX",
        value=usage.dead_letter_dropped,
    )


def _by_label(
    name: str, documentation: str, label: str, counts: Mapping[str, int]
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=[label])
    for value, count in sorted(counts.items()):
        family.add_metric([value], count)
    return family


def exposition(snapshot: PlatformSnapshot) -> bytes:
    """The snapshot in the Prometheus text format (``CONTENT_TYPE``)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(snapshot))
    return generate_latest(registry)


# Synapse's own metrics --------------------------------------------------------------------


def synapse_metrics_address(upstream: str, fixed_port: int | None) -> str:
    """``host:port`` of the metrics listener of the homeserver at ``upstream`` (a route's
    base URL): ``fixed_port`` on the same host (C3_SYNAPSE_METRICS_PORT, where every
    homeserver has an address of its own), else the client port + 1 (the local backend)."""
    parts = urlsplit(upstream)
    port = fixed_port if fixed_port is not None else (parts.port or 80) + 1
    host = parts.hostname or ""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def homeserver_targets(routes: Iterable[Route], fixed_port: int | None) -> list[dict[str, Any]]:
    """Prometheus HTTP service discovery (``http_sd_configs``): one target group per active
    tenant, labelled with the tenant's slug, id and server name."""
    seen: dict[str, Route] = {}
    for route in routes:
        if route.status == "active":
            seen.setdefault(route.tenant_id, route)
    return [
        {
            "targets": [synapse_metrics_address(route.upstream, fixed_port)],
            "labels": {
                "tenant": route.slug,
                "tenant_id": route.tenant_id,
                "server_name": route.server_name,
            },
        }
        for route in sorted(seen.values(), key=lambda r: r.slug)
    ]
