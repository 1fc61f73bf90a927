"""GET /metrics: what a Prometheus scraper sees, and who may scrape."""

from __future__ import annotations

import httpx
import redis
from prometheus_client.parser import text_string_to_metric_families

from platform_core.metrics import ReconcileAction, park_dead_letters, record_reconcile_run
from platform_core.redis import keys_for
from platform_core.settings import get_settings
from tests.helpers.api import assert_problem, bearer, new_tenant


async def scrape(api: httpx.AsyncClient, **kwargs: object) -> dict[tuple[str, str], float]:
    response = await api.get("/metrics", **kwargs)  # type: ignore[arg-type]
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return {
        (sample.name, ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


async def test_a_scrape_follows_tenants_and_reconcile_passes(api: httpx.AsyncClient) -> None:
    before = await scrape(api)
    await new_tenant(api)  # no worker here: it stays provisioning
    settings = get_settings()
    client = redis.Redis.from_url(settings.require_redis_url())
    try:
        record_reconcile_run(
            client,
            keys_for(settings),
            {ReconcileAction.HOMESERVER_RESTARTED: 1},
            finished_at=1_800_000_000.0,
            duration_s=0.5,
        )
    finally:
        client.close()
    after = await scrape(api)
    assert (
        after[("c3_tenants", "status=provisioning")]
        == before[("c3_tenants", "status=provisioning")] + 1
    )
    assert after[("c3_operations", "state=pending")] >= 1
    assert after[("c3_reconcile_runs_total", "")] == before[("c3_reconcile_runs_total", "")] + 1
    restarted = ("c3_reconcile_actions_total", "action=homeserver.restarted")
    assert after[restarted] == before[restarted] + 1
    assert after[("c3_reconcile_last_run_timestamp_seconds", "")] == 1_800_000_000.0


async def test_a_metrics_only_key_scrapes_and_reads_nothing_else(api: httpx.AsyncClient) -> None:
    created = await api.post(
        "/v1/api-keys", json={"name": "prometheus", "scopes": ["metrics:read"]}
    )
    assert created.status_code == 201, created.text
    scraper = bearer(created.json()["key"])
    assert ("c3_reconcile_runs_total", "") in await scrape(api, headers=scraper)
    assert_problem(await api.get("/v1/tenants", headers=scraper), 403, "tenants:read")


async def test_metrics_are_for_the_platform_not_for_a_tenant(api: httpx.AsyncClient) -> None:
    tenant = await new_tenant(api)
    refused = await api.post(
        "/v1/api-keys",
        json={"name": "x", "scopes": ["metrics:read"], "tenant_id": tenant["id"]},
    )
    assert_problem(refused, 422, "metrics:read")
    anonymous = await api.get("/metrics", headers={"Authorization": ""})
    assert anonymous.status_code == 401
    assert anonymous.headers["content-type"] == "application/problem+json"


async def test_a_scrape_counts_dead_lettered_and_dropped_usage_entries(
    api: httpx.AsyncClient,
) -> None:
    before = await scrape(api)
    settings = get_settings()
    client = redis.Redis.from_url(settings.require_redis_url())
    try:
        keys = keys_for(settings)
        client.delete(keys.usage_dead)
        park_dead_letters(client, keys, [{b"payload": b"{oops"}] * 3, max_len=2)
    finally:
        client.close()
    after = await scrape(api)
    for name, more in (
        ("c3_usage_dead_lettered_total", 3),
        ("c3_usage_dead_letter_dropped_total", 1),
    ):
        assert after[(name, "")] == before[(name, "")] + more
