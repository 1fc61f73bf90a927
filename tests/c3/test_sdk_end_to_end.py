"""The SDK against the real platform (`c3 up`: the API over HTTP, a Celery worker, real
Synapse homeservers): create, idempotent repeat, wait, pagination, typed errors, the async
client, the platform status and a homeserver's log with its secrets redacted."""

from __future__ import annotations

import uuid

import pytest

from c3.sdk import (
    AsyncClient,
    AuthenticationError,
    Client,
    NotFoundError,
    Operation,
    TenantAccepted,
    ValidationError,
)
from tests.helpers.platform import RunningPlatform

pytestmark = pytest.mark.e2e


def _slug() -> str:
    return f"sdk{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def active(platform: RunningPlatform) -> TenantAccepted:
    """One tenant with a running homeserver, shared by the tests that only read it."""
    with Client(platform.api_url, platform.token) as c3:
        accepted = c3.tenants.create(_slug(), "Shared Co")
        c3.wait_for_operation(accepted.operation.id, timeout=120)
    return accepted


def test_a_tenant_is_created_once_per_idempotency_key_and_waited_for(
    platform: RunningPlatform,
) -> None:
    slug, key = _slug(), f"create-{uuid.uuid4()}"
    seen: list[Operation] = []
    with Client(platform.api_url, platform.token) as c3:
        first = c3.tenants.create(slug, "SDK Co", idempotency_key=key)
        # A client retrying after a lost answer: the same key replays the first answer.
        again = c3.tenants.create(slug, "SDK Co", idempotency_key=key)
        assert (again.id, again.operation.id) == (first.id, first.operation.id)

        done = c3.wait_for_operation(first.operation.id, timeout=120, on_progress=seen.append)
        assert done.state == "succeeded" and done.kind == "provision"
        assert {"homeserver-record", "homeserver-running", "admin-registered"} <= set(
            done.steps_done
        )
        assert seen[-1].state == "succeeded"
        tenant = c3.tenants.get(first.id)
        assert tenant.status == "active" and tenant.slug == slug
        assert [t.id for t in c3.tenants.iter() if t.slug == slug] == [first.id]


def test_pages_are_walked_to_the_end(platform: RunningPlatform) -> None:
    with Client(platform.api_url, platform.token) as c3:
        created = {c3.tenants.create(_slug(), "Paged").id for _ in range(5)}
        first_page = c3.tenants.list(limit=2)
        assert len(first_page.items) == 2 and first_page.next_cursor is not None
        walked = [t.id for t in c3.tenants.iter(page_size=2)]
    assert created <= set(walked)
    assert len(walked) == len(set(walked))  # no tenant twice across page boundaries


def test_errors_are_typed_and_carry_the_problem(platform: RunningPlatform) -> None:
    missing = uuid.uuid4()
    with Client(platform.api_url, platform.token) as c3:
        with pytest.raises(NotFoundError) as not_found:
            c3.tenants.get(missing)
        assert not_found.value.status == 404
        assert str(missing) in not_found.value.detail
        assert not_found.value.problem["status"] == 404
        assert not_found.value.request_id

        with pytest.raises(ValidationError) as invalid:
            c3.tenants.create("No Such Slug!", "Bad")
        assert invalid.value.status == 422 and "slug" in invalid.value.detail

    with Client(platform.api_url, "c3k_not-a-key") as stranger:
        with pytest.raises(AuthenticationError) as refused:
            stranger.tenants.list()
        assert refused.value.status == 401


async def test_the_async_client_creates_waits_and_iterates(platform: RunningPlatform) -> None:
    slug = _slug()
    async with AsyncClient(platform.api_url, platform.token) as c3:
        accepted = await c3.tenants.create(slug, "Async Co")
        operation = await c3.operations.wait(accepted.operation.id, timeout=120)
        assert operation.state == "succeeded"
        found = [t async for t in c3.tenants.iter(page_size=3) if t.slug == slug]
        assert [t.status for t in found] == ["active"]
        plans = await c3.plans.list()
        assert any(p.is_default for p in plans)


def test_status_reports_every_component_and_each_homeserver(
    platform: RunningPlatform, active: TenantAccepted
) -> None:
    with Client(platform.api_url, platform.token) as c3:
        report = c3.status()
    components = {c.name: c for c in report.components}
    assert set(components) == {"api", "database", "redis", "proxy", "workers", "homeservers"}
    assert all(c.up for c in components.values()), report.components
    assert report.ok
    assert "answered" in components["workers"].detail
    ours = [h for h in report.homeservers if h.tenant_id == active.id]
    assert len(ours) == 1 and ours[0].up, report.homeservers


def test_a_homeservers_log_is_read_with_its_tokens_redacted(
    platform: RunningPlatform, active: TenantAccepted
) -> None:
    accepted = active
    with Client(platform.api_url, platform.token) as c3:
        # A line as Synapse writes one for a client that put its token in the query.
        log = platform.homeserver_dir(str(accepted.id)) / "homeserver.log"
        with log.open("a") as out:
            out.write(
                "2026-12-04 10:00:00,000 - synapse.access.http.8008 - 1 - INFO - GET-1 - "
                '"GET /_matrix/client/v3/sync?since=s1&access_token=syt_leaked_abc123 HTTP/1.1"\n'
            )
        found = c3.tenants.logs(accepted.id, lines=50)
    assert found.backend == "local" and len(found.lines) == 50
    text = "\n".join(found.lines)
    assert "synapse" in text  # Synapse's own start-up lines
    assert "syt_leaked_abc123" not in text
    ours = [line for line in found.lines if "since=s1" in line]
    assert len(ours) == 1 and "access_token=<redacted>" in ours[0], ours


def test_logs_and_status_are_for_operators_only(
    platform: RunningPlatform, active: TenantAccepted
) -> None:
    accepted = active
    with Client(platform.api_url, platform.token) as c3:
        key = c3.keys.create("reader", ["tenants:read"], tenant_id=accepted.id)
    with Client(platform.api_url, key.key) as tenant_key:
        for attempt in (lambda: tenant_key.status(), lambda: tenant_key.tenants.logs(accepted.id)):
            with pytest.raises(Exception) as refused:
                attempt()
            assert getattr(refused.value, "status", None) == 403
