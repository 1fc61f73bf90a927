"""The worker's metrics endpoint as Prometheus reads it, from a real Redis: operation attempts,
failures by step and durations that any worker process recorded, the queue depth, and the usage
consumer's lag (age of the oldest unapplied batch)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from c3.local_run import free_port
from platform_core.metrics import record_operation_attempt, step_label
from platform_core.redis import RedisKeys
from platform_core.worker_metrics import WorkerCollector

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def worker_redis(platform_env: dict[str, str]) -> Iterator[tuple[redis.Redis, RedisKeys]]:
    client = redis.Redis.from_url(platform_env["C3_REDIS_URL"])
    keys = RedisKeys(f"{platform_env['C3_REDIS_NAMESPACE']}-wm-{uuid.uuid4().hex[:6]}")
    yield client, keys
    for key in client.scan_iter(f"{keys.namespace}*"):
        client.delete(key)
    client.close()


def scrape(collector: WorkerCollector) -> Samples:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_attempts_failures_and_durations_from_every_process_add_up(
    worker_redis: tuple[redis.Redis, RedisKeys],
) -> None:
    client, keys = worker_redis
    # Two processes' attempts of the same kind land in the same hash.
    record_operation_attempt(client, keys, kind="provision", outcome="succeeded", duration_s=2.0)
    record_operation_attempt(
        client,
        keys,
        kind="provision",
        outcome="retried",
        duration_s=40.0,
        failed_after_step="database-ready",
    )
    record_operation_attempt(
        client,
        keys,
        kind="deprovision",
        outcome="failed",
        duration_s=0.2,
        failed_after_step="database-archived:/archive/t1-20261204.dump",
    )
    found = scrape(WorkerCollector(client, keys, [f"{keys.namespace}:queue"]))

    def value(name: str, **labels: str) -> float:
        return found[(name, frozenset(labels.items()))]

    assert value("c3_operation_attempts_total", kind="provision", outcome="succeeded") == 1
    assert value("c3_operation_attempts_total", kind="provision", outcome="retried") == 1
    assert value("c3_operation_failures_total", kind="provision", step="database-ready") == 1
    # A step's detail (a dump's file name) never becomes a label value.
    assert value("c3_operation_failures_total", kind="deprovision", step="database-archived") == 1
    assert value("c3_operation_duration_seconds_count", kind="provision") == 2
    assert value("c3_operation_duration_seconds_sum", kind="provision") == 42.0
    assert value("c3_operation_duration_seconds_bucket", kind="provision", le="2.5") == 1
    assert value("c3_operation_duration_seconds_bucket", kind="provision", le="60.0") == 2
    assert value("c3_operation_duration_seconds_bucket", kind="provision", le="+Inf") == 2
    assert step_label(None) == "start"


def test_queue_depth_and_usage_lag(worker_redis: tuple[redis.Redis, RedisKeys]) -> None:
    client, keys = worker_redis
    queue = f"{keys.namespace}:queue"
    collector_now = [0.0]
    collector = WorkerCollector(
        client, keys, [queue, queue + "\x06\x163"], clock=lambda: collector_now[0]
    )
    empty = scrape(collector)
    assert empty[("c3_usage_consumer_lag_seconds", frozenset())] == 0
    assert empty[("c3_worker_queue_depth", frozenset())] == 0

    client.rpush(queue, "task-1", "task-2")
    client.rpush(queue + "\x06\x163", "task-3")
    first = client.xadd(keys.usage_stream, {"batch_id": "b1", "payload": "{}"})
    client.xadd(keys.usage_stream, {"batch_id": "b2", "payload": "{}"})
    written_at = int(first.decode().split("-")[0]) / 1000
    collector_now[0] = written_at + 42.0
    found = scrape(collector)
    assert found[("c3_worker_queue_depth", frozenset())] == 3
    assert found[("c3_usage_pending_batches", frozenset())] == 2
    assert found[("c3_usage_consumer_lag_seconds", frozenset())] == pytest.approx(42.0)
    # The oldest batch applied (deleted): the lag is the next one's age.
    client.xdel(keys.usage_stream, first)
    assert scrape(collector)[("c3_usage_consumer_lag_seconds", frozenset())] < 42.0 + 1


def test_an_unreachable_redis_is_a_metric_not_an_error() -> None:
    client = redis.Redis(port=free_port(), socket_connect_timeout=1)
    found = scrape(WorkerCollector(client, RedisKeys("nowhere"), ["nowhere:queue"]))
    assert found == {("c3_worker_metrics_up", frozenset()): 0.0}
