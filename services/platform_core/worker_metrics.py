"""The worker's Prometheus endpoint (``C3_WORKER_METRICS_PORT``): everything is read from Redis
at scrape time, so it is right whichever Celery process (or replica) did the work.

- lifecycle operations: attempts by kind and outcome, failures by kind and step, a duration
  histogram by kind (written by ``provisioner.runner`` through ``platform_core.metrics``);
- the task queue's depth (tasks waiting in the broker);
- reconcile passes and actions, and the usage consumer's dead-letter counters (the hashes the
  API's ``/metrics`` reads too);
- the usage consumer's lag: the age of the oldest batch in the usage stream (the consumer
  deletes a batch from the stream once it is applied, so the oldest entry left is the oldest
  one not applied yet), and how many batches wait.

Every value is a platform total: when several worker replicas serve this endpoint, aggregate
with ``max`` (not ``sum``) across instances.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

import redis
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from platform_core.metrics import (
    OperationStats,
    ReconcileStats,
    UsageStats,
    operation_families,
    reconcile_families,
    usage_families,
)
from platform_core.redis import RedisKeys, keys_for
from platform_core.settings import Settings

log = logging.getLogger(__name__)

# Kombu's Redis transport keeps a queue as one list per priority step (0, 3, 6, 9), the
# non-zero ones suffixed with "\x06\x16" and the step.
_PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")


def task_queue_keys(settings: Settings) -> list[str]:
    """The Redis lists holding the default task queue (Celery's config in platform_core.celery)."""
    queue = f"{settings.redis_namespace}:celery:{settings.redis_namespace}.default"
    return [queue + suffix for suffix in _PRIORITY_SUFFIXES]


class WorkerCollector(Collector):
    def __init__(
        self,
        client: redis.Redis,
        keys: RedisKeys,
        queue_keys: list[str],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = client
        self._keys = keys
        self._queue_keys = queue_keys
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        keys = self._keys
        try:
            pipe = self._redis.pipeline(transaction=False)
            pipe.hgetall(keys.operation_metrics)
            pipe.hgetall(keys.reconcile_metrics)
            pipe.hgetall(keys.usage_metrics)
            for queue in self._queue_keys:
                pipe.llen(queue)
            pipe.xlen(keys.usage_stream)
            pipe.xrange(keys.usage_stream, count=1)
            found = pipe.execute()
        except (redis.RedisError, OSError) as exc:
            log.warning("worker metrics: Redis unreachable (%s)", type(exc).__name__)
            yield GaugeMetricFamily(
                "c3_worker_metrics_up", "1 when the worker metrics could be read", value=0
            )
            return
        operations, reconcile, usage = found[0], found[1], found[2]
        depths = found[3 : 3 + len(self._queue_keys)]
        stream_length, oldest = found[-2], found[-1]
        yield GaugeMetricFamily(
            "c3_worker_metrics_up", "1 when the worker metrics could be read", value=1
        )
        yield from operation_families(OperationStats.from_redis(operations))
        yield from reconcile_families(ReconcileStats.from_redis(reconcile))
        yield from usage_families(UsageStats.from_redis(usage))
        yield GaugeMetricFamily(
            "c3_worker_queue_depth",
            "Tasks waiting in the broker for a worker",
            value=sum(int(depth) for depth in depths),
        )
        yield GaugeMetricFamily(
            "c3_usage_pending_batches",
            "Usage batches in the usage stream not applied yet",
            value=int(stream_length),
        )
        yield GaugeMetricFamily(
            "c3_usage_consumer_lag_seconds",
            "Age of the oldest usage batch not applied yet (0 when none waits)",
            value=self._lag(oldest),
        )

    def _lag(self, oldest: list[tuple[bytes, object]]) -> float:
        if not oldest:
            return 0.0
        entry_id = oldest[0][0]
        text = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
        written_ms = int(text.split("-", 1)[0])  # a stream id starts with its write time
        return max(0.0, self._clock() - written_ms / 1000)


def worker_registry(settings: Settings, client: redis.Redis | None = None) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(
        WorkerCollector(
            client or redis.Redis.from_url(settings.require_redis_url()),
            keys_for(settings),
            task_queue_keys(settings),
        )
    )
    return registry
