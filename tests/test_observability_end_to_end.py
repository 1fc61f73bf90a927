"""Metrics as an operator's Prometheus sees them, after real traffic through a running platform
(`c3 up`, real Synapse, matrix-nio): the proxy's counters match what a client sent, the worker
reports the provisioning it did, the API times its routes, every tenant's Synapse serves its own
metrics to the platform but not through the proxy, and every query in the shipped dashboards
and alert rules names a metric the platform exports."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import nio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from c3.local_run import free_port
from tests.helpers.environment import isolated_platform
from tests.helpers.matrix import login
from tests.helpers.platform import RunningPlatform, poll, poll_async

pytestmark = pytest.mark.e2e

OBSERVABILITY = Path(__file__).resolve().parent.parent / "deploy" / "observability"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class Scrapes:
    """Where the running platform's metrics are."""

    def __init__(self, platform: RunningPlatform, proxy_port: int, worker_port: int) -> None:
        self.platform = platform
        self.proxy = f"http://127.0.0.1:{proxy_port}/metrics"
        self.worker = f"http://127.0.0.1:{worker_port}/metrics"

    def api_text(self) -> str:
        with self.platform.api() as api:
            response = api.get("/metrics")
        assert response.status_code == 200, response.text
        return response.text

    def proxy_text(self) -> str:
        response = httpx.get(self.proxy, timeout=10)
        assert response.status_code == 200, response.text
        return response.text

    def worker_text(self) -> str:
        response = httpx.get(self.worker, timeout=10)
        assert response.status_code == 200, response.text
        return response.text


def samples(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def exported_names(text: str) -> set[str]:
    """Every series name the exposition declares (families without samples included)."""
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names.update(family.name + suffix for suffix in ("_bucket", "_count", "_sum"))
    return names


@pytest.fixture(scope="module")
def observed(
    platform_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Scrapes]:
    proxy_port, worker_port = free_port(), free_port()
    with isolated_platform(
        platform_env,
        tmp_path_factory.mktemp("c3-observed"),
        C3_PROXY_METRICS_PORT=str(proxy_port),
        C3_WORKER_METRICS_PORT=str(worker_port),
    ) as running:
        yield Scrapes(running, proxy_port, worker_port)


@pytest.fixture(scope="module")
def tenant(observed: Scrapes) -> dict[str, str]:
    found = observed.platform.create_tenant("watched")
    user = observed.platform.create_user(found["id"], "olga", "olga-secret-12")
    return {**found, "user": user}


async def test_proxy_counts_match_what_a_client_sent(
    observed: Scrapes, tenant: dict[str, str]
) -> None:
    platform = observed.platform
    base_url = f"{platform.proxy_url}/t/watched"
    client = await login(base_url, tenant["user"], "olga-secret-12")
    try:
        room = await client.room_create(name="metrics")
        assert isinstance(room, nio.RoomCreateResponse), room
        before = samples(observed.proxy_text())
        sent = 7
        for n in range(sent):
            answer = await client.room_send(
                room.room_id, "m.room.message", {"msgtype": "m.text", "body": f"m{n}"}
            )
            assert isinstance(answer, nio.RoomSendResponse), answer
        # The guard refuses Synapse's admin API: counted as refused, never forwarded.
        async with httpx.AsyncClient() as http:
            admin = await http.get(f"{base_url}/_synapse/admin/v1/server_version")
        assert admin.status_code == 404
        after = samples(observed.proxy_text())
    finally:
        await client.close()

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("c3_proxy_requests_total", route="send", status="2xx") == sent
    assert grew("c3_proxy_request_duration_seconds_count", route="send") == sent
    assert grew("c3_proxy_upstream_first_byte_seconds_count", route="send") == sent
    assert grew("c3_proxy_refused_total", reason="not_served") == 1
    assert grew("c3_proxy_requests_total", route="other", status="4xx") == 1
    assert value(after, "c3_proxy_usage_batches_pending") == 0

    def flushed() -> float:
        return value(samples(observed.proxy_text()), "c3_proxy_usage_batches_flushed_total")

    poll(flushed, timeout=10, what="a usage batch flushed")


async def test_open_long_polls_are_a_gauge(observed: Scrapes, tenant: dict[str, str]) -> None:
    client = await login(
        f"{observed.platform.proxy_url}/t/watched", tenant["user"], "olga-secret-12"
    )
    try:
        first = await client.sync(timeout=0)
        assert isinstance(first, nio.SyncResponse), first
        parked = asyncio.ensure_future(client.sync(timeout=30_000, since=first.next_batch))

        async def open_polls(expected: float) -> bool:
            found = samples(await asyncio.to_thread(observed.proxy_text))
            return value(found, "c3_proxy_open_long_polls") == expected

        await poll_async(lambda: open_polls(1), timeout=15, what="one open long-poll")
        parked.cancel()
        await asyncio.gather(parked, return_exceptions=True)
        await client.close()  # the connection goes: the proxy cancels the parked request
        await poll_async(lambda: open_polls(0), timeout=15, what="no open long-poll")
    finally:
        await client.close()


def test_metrics_are_not_served_to_tenants_clients(
    observed: Scrapes, tenant: dict[str, str]
) -> None:
    proxy = observed.platform.proxy_url
    for url, headers in (
        (f"{proxy}/metrics", {}),
        (f"{proxy}/t/watched/metrics", {}),
        (f"{proxy}/metrics", {"Host": tenant["server_name"]}),
        (f"{proxy}/_synapse/metrics", {"Host": tenant["server_name"]}),
        (f"{proxy}/t/watched/_synapse/metrics", {}),
    ):
        response = httpx.get(url, headers=headers)
        assert response.status_code in (404, 421), (url, response.status_code)
        assert "c3_proxy" not in response.text and "synapse_" not in response.text


def test_the_worker_reports_the_provisioning_it_did(
    observed: Scrapes, tenant: dict[str, str]
) -> None:
    found = samples(observed.worker_text())
    assert value(found, "c3_worker_metrics_up") == 1
    assert value(found, "c3_operation_attempts_total", kind="provision", outcome="succeeded") == 1
    assert value(found, "c3_operation_duration_seconds_count", kind="provision") == 1
    assert value(found, "c3_operation_duration_seconds_sum", kind="provision") > 0
    assert ("c3_worker_queue_depth", frozenset()) in found
    # The consumer applies batches every second: whatever waits is young.
    assert 0 <= value(found, "c3_usage_consumer_lag_seconds") < 60

    def reconciled() -> float:
        return value(samples(observed.worker_text()), "c3_reconcile_runs_total")

    poll(reconciled, timeout=60, what="a reconcile pass in the worker metrics")


def test_api_latency_is_by_route_template(observed: Scrapes, tenant: dict[str, str]) -> None:
    with observed.platform.api() as api:
        for _ in range(3):
            assert api.get(f"/v1/tenants/{tenant['id']}").status_code == 200
        assert api.get("/v1/no-such-thing").status_code == 404
    found = samples(observed.api_text())
    template = "/v1/tenants/{tenant_id}"
    count = value(
        found, "c3_api_request_duration_seconds_count", method="GET", route=template, status="2xx"
    )
    assert count >= 3
    assert (
        value(
            found,
            "c3_api_request_duration_seconds_count",
            method="GET",
            route="unmatched",
            status="4xx",
        )
        >= 1
    )
    routes = {
        dict(labels)["route"]
        for (name, labels) in found
        if name == "c3_api_request_duration_seconds_count"
    }
    assert not any(tenant["id"] in route for route in routes), routes


def test_synapse_metrics_reach_the_platform_with_the_tenant_as_a_label(
    observed: Scrapes, tenant: dict[str, str]
) -> None:
    platform = observed.platform
    assert httpx.get(f"{platform.api_url}/metrics/homeservers").status_code == 401
    with platform.api() as api:
        response = api.get("/metrics/homeservers")
    assert response.status_code == 200, response.text
    groups = [g for g in response.json() if g["labels"]["tenant"] == "watched"]
    assert len(groups) == 1, response.json()
    group = groups[0]
    assert group["labels"] == {
        "tenant": "watched",
        "tenant_id": tenant["id"],
        "server_name": tenant["server_name"],
    }
    (target,) = group["targets"]
    assert target.startswith("127.0.0.1:")
    scraped = httpx.get(f"http://{target}/_synapse/metrics", timeout=10)
    assert scraped.status_code == 200
    names = exported_names(scraped.text)
    assert "synapse_http_server_requests_received_total" in names, sorted(names)[:50]


# The dashboards and alert rules name only exported metrics ---------------------------------

_METRIC = re.compile(r"\b((?:c3|synapse|process|python)_[a-zA-Z0-9_]+|up)\b(?!\s*\()")


_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset"})


def _stripped(expr: str) -> str:
    """``expr`` without strings, label matchers, ranges, grouping clauses and numbers."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    return re.sub(r"\b\d+(?:\.\d+)?(?:e[-+]?\d+)?\b", "", expr)


def metric_names_in(expr: str) -> set[str]:
    """The metric names a PromQL expression uses (ours, Synapse's, the process and Python
    collectors', ``up``); any other bare name in it is a mistake (a typo'd metric)."""
    stripped = _stripped(expr)
    names = set(_METRIC.findall(stripped))
    others = {
        token
        for token in re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b(?!\s*\()", stripped)
        if token not in names and token not in _KEYWORDS
    }
    assert not others, f"{expr!r} names {others}: neither a known metric nor PromQL"
    return names


def dashboard_queries() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in sorted((OBSERVABILITY / "dashboards").glob("*.json")):
        dashboard = json.loads(path.read_text())
        exprs = [
            target["expr"]
            for panel in dashboard["panels"]
            for target in panel.get("targets", [])
            if "expr" in target
        ]
        variables = [
            v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            for v in dashboard.get("templating", {}).get("list", [])
            if v.get("type") == "query"
        ]
        # Grafana's label_values(<series>, <label>): the series is PromQL, the label is not.
        exprs += [re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", q) for q in variables]
        found[path.name] = exprs
    return found


def rule_queries() -> list[str]:
    import yaml

    rules = yaml.safe_load((OBSERVABILITY / "alerts.yaml").read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def documented_synapse_names() -> set[str]:
    lines = (OBSERVABILITY / "synapse-metric-names.txt").read_text().splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


def test_every_dashboard_and_alert_query_names_an_exported_metric(
    observed: Scrapes, tenant: dict[str, str]
) -> None:
    with observed.platform.api() as api:
        (group,) = [
            g for g in api.get("/metrics/homeservers").json() if g["labels"]["tenant"] == "watched"
        ]
    synapse = httpx.get(f"http://{group['targets'][0]}/_synapse/metrics", timeout=10).text
    exported = (
        exported_names(observed.api_text())
        | exported_names(observed.proxy_text())
        | exported_names(observed.worker_text())
        | exported_names(synapse)
        | {"up"}  # Prometheus' own, per scrape target
    )
    # Synapse exports some series only once something happened (a federation request, a
    # purge): those are listed in deploy/observability/synapse-metric-names.txt.
    documented = documented_synapse_names()
    assert all(name.startswith("synapse_") for name in documented), documented
    exported |= documented
    dashboards = dashboard_queries()
    assert set(dashboards) == {
        "c3-fleet.json",
        "c3-tenant.json",
        "c3-proxy.json",
        "c3-provisioning.json",
        "c3-billing-pipeline.json",
    }
    unknown = {
        (where, name)
        for where, exprs in [*dashboards.items(), ("alerts.yaml", rule_queries())]
        for expr in exprs
        for name in metric_names_in(expr)
        if name not in exported
    }
    assert not unknown, f"queries name metrics nothing exports: {sorted(unknown)}"
    assert all(exprs for exprs in dashboards.values())


def test_a_failing_provisioning_is_counted_by_kind_outcome_and_step(
    platform_env: dict[str, str], tmp_path: Path
) -> None:
    """A tenant whose homeserver never starts (fake backend): each failed attempt is counted
    with the last step it completed, the last one as the operation failing for good."""
    worker_port = free_port()
    with isolated_platform(
        platform_env,
        tmp_path / "c3",
        C3_BACKEND="fake",
        C3_FAKE_BACKEND_FAIL="doomed",
        C3_OPERATION_MAX_ATTEMPTS="2",
        C3_OPERATION_RETRY_BASE_S="0.2",
        C3_WORKER_METRICS_PORT=str(worker_port),
    ) as running:
        with running.api() as api:
            created = api.post("/v1/tenants", json={"slug": "doomed", "display_name": "Doomed"})
            assert created.status_code == 202, created.text
        worker = f"http://127.0.0.1:{worker_port}/metrics"

        def failed_for_good() -> Samples | None:
            found = samples(httpx.get(worker, timeout=10).text)
            outcome = {"kind": "provision", "outcome": "failed"}
            return found if value(found, "c3_operation_attempts_total", **outcome) else None

        found = poll(failed_for_good, timeout=60, what="the provisioning to fail for good")
    assert value(found, "c3_operation_attempts_total", kind="provision", outcome="retried") == 1
    assert value(found, "c3_operation_attempts_total", kind="provision", outcome="failed") == 1
    # Both attempts recorded the homeserver (port, config) before its start failed.
    failures = {
        dict(labels)["step"]: count
        for (name, labels), count in found.items()
        if name == "c3_operation_failures_total"
    }
    assert failures == {"homeserver-record": 2}, failures
    assert value(found, "c3_operation_duration_seconds_count", kind="provision") == 2
