"""Platform metrics in the Prometheus text format (0.0.4).

The reconcile loop's counters live in one Redis hash that every worker adds to (so they are
platform totals, and survive a worker restart), the usage consumer's in another; the API reads
them at scrape time together with gauges counted from the platform database. Writer (provisioner) and reader (API) share the
action names below.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from platform_core.redis import RedisKeys

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
class PlatformSnapshot:
    """Everything one scrape reports: reconcile counters and database counts."""

    reconcile: ReconcileStats
    tenants: Mapping[str, int]  # by status, every status present
    operations: Mapping[str, int]  # by state, every state present
    usage: UsageStats = field(default_factory=UsageStats)


class _SnapshotCollector(Collector):
    def __init__(self, snapshot: PlatformSnapshot) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        reconcile = self._snapshot.reconcile
        yield CounterMetricFamily(
            "c3_reconcile_runs", "Reconcile passes finished", value=reconcile.runs
        )
        actions = CounterMetricFamily(
            "c3_reconcile_actions",
            "Repairs and outcomes of reconcile passes, by action",
            labels=["action"],
        )
        # Every known action, zero included, so rate() works from the first scrape.
        for action in sorted({a.value for a in ReconcileAction} | set(reconcile.actions)):
            actions.add_metric([action], reconcile.actions.get(action, 0))
        yield actions
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
        usage = self._snapshot.usage
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
        yield _by_label("c3_tenants", "Tenants by status", "status", self._snapshot.tenants)
        yield _by_label(
            "c3_operations", "Lifecycle operations by state", "state", self._snapshot.operations
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
