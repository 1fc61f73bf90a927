"""Reconcile counters kept in Redis by the workers, and the Prometheus text they become."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from platform_core.metrics import (
    PlatformSnapshot,
    ReconcileAction,
    ReconcileStats,
    exposition,
    record_reconcile_run,
)
from platform_core.redis import RedisKeys


@pytest.fixture
def keys(platform_env: dict[str, str]) -> Iterator[tuple[redis.Redis, RedisKeys]]:
    client = redis.Redis.from_url(platform_env["C3_REDIS_URL"])
    keys = RedisKeys(f"{platform_env['C3_REDIS_NAMESPACE']}-metrics-{uuid.uuid4().hex[:6]}")
    yield client, keys
    client.delete(keys.reconcile_metrics)
    client.close()


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, parsed by Prometheus' own parser."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text.decode())
        for sample in family.samples
    }


def test_runs_from_several_workers_add_up(keys: tuple[redis.Redis, RedisKeys]) -> None:
    client, k = keys
    record_reconcile_run(
        client,
        k,
        {ReconcileAction.HOMESERVER_RESTARTED: 2, ReconcileAction.SKIPPED_BUSY: 1},
        finished_at=1_700_000_000.5,
        duration_s=0.25,
    )
    record_reconcile_run(  # another worker, a quiet pass
        client, k, {}, finished_at=1_700_000_030.0, duration_s=0.125
    )
    stats = ReconcileStats.from_redis(client.hgetall(k.reconcile_metrics))
    assert stats.runs == 2
    assert stats.actions == {"homeserver.restarted": 2, "reconcile.skipped_busy": 1}
    assert stats.last_run_at == 1_700_000_030.0
    assert stats.last_duration_s == 0.125


def test_a_scrape_shows_every_series_in_the_prometheus_text_format() -> None:
    snapshot = PlatformSnapshot(
        reconcile=ReconcileStats(
            runs=7,
            actions={"homeserver.restarted": 3},
            last_run_at=1_700_000_000.0,
            last_duration_s=1.5,
        ),
        tenants={"active": 4, "suspended": 1},
        operations={"running": 2, "failed": 0},
    )
    found = samples(exposition(snapshot))
    assert found[("c3_reconcile_runs_total", ())] == 7
    assert found[("c3_reconcile_actions_total", (("action", "homeserver.restarted"),))] == 3
    # Actions that never happened are there at zero, so rate() and alerts work from the start.
    for action in ReconcileAction:
        assert ("c3_reconcile_actions_total", (("action", action),)) in found
    assert found[("c3_reconcile_actions_total", (("action", "route.withdrawn"),))] == 0
    assert found[("c3_reconcile_last_run_timestamp_seconds", ())] == 1_700_000_000.0
    assert found[("c3_reconcile_duration_seconds", ())] == 1.5
    assert found[("c3_tenants", (("status", "active"),))] == 4
    assert found[("c3_tenants", (("status", "suspended"),))] == 1
    assert found[("c3_operations", (("state", "running"),))] == 2
    assert found[("c3_operations", (("state", "failed"),))] == 0


def test_before_any_run_there_is_no_last_run_time() -> None:
    text = exposition(PlatformSnapshot(ReconcileStats(), tenants={}, operations={}))
    found = samples(text)
    assert found[("c3_reconcile_runs_total", ())] == 0
    # Absent rather than 0 (1970): "never" must not look like "long ago" to an alert.
    assert not any(name == "c3_reconcile_last_run_timestamp_seconds" for name, _ in found)
