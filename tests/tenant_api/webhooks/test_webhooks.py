"""Webhooks in-process: the real API and the real dispatcher and sender functions (the Celery
tasks' bodies) against a receiver on loopback, on the test PostgreSQL. What the end-to-end
test (tests/test_webhooks_end_to_end.py) shows through `c3 up`'s worker, this shows for the
rules: secrets shown once, signatures the docs' own snippets verify (also during a rotation),
410 and long failure disabling an endpoint, SSRF refusals, and the events of invoices, usage
and contexts."""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from platform_core import lifecycle, webhook_events
from platform_core.db import task_session
from platform_core.models import (
    AuditEvent,
    OperationKind,
    Plan,
    Tenant,
    TenantPlanChange,
    TenantStatus,
    UsageCounter,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
)
from platform_core.settings import get_settings
from tenant_api.invoices import tasks as invoice_tasks
from tenant_api.main import create_app
from tenant_api.webhooks import dispatch, sender, thresholds
from tenant_api.webhooks.endpoints import router as webhooks_router
from tenant_api.webhooks.sender import SendResult
from tests.helpers.api import assert_problem, tenant_admin_headers
from tests.helpers.factories import make_tenant, make_tenant_with_context
from tests.helpers.tls import make_certificates
from tests.helpers.webhooks import (
    DOCS,
    Receiver,
    doc_snippet,
    fan_out_everything,
    python_verifier,
)

NODE = shutil.which("node")
_real_getaddrinfo = socket.getaddrinfo


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver().start()
    yield running
    running.stop()


async def _endpoint(
    api: httpx.AsyncClient, url: str, tenant_id: uuid.UUID | str, types: list[str]
) -> dict[str, Any]:
    response = await api.post(
        "/v1/webhook-endpoints",
        json={"url": url, "event_types": types, "tenant_id": str(tenant_id)},
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


def _deliver_all(endpoint_id: str, *, rounds: int = 10) -> list[str]:
    """Fan out and send what is due for ``endpoint_id`` until nothing is left; the outcomes."""
    outcomes = []
    for _ in range(rounds):
        now = datetime.now(UTC)
        fan_out_everything(now)
        with task_session() as session:
            due = session.scalars(
                select(WebhookDelivery.id).where(
                    WebhookDelivery.endpoint_id == uuid.UUID(endpoint_id),
                    WebhookDelivery.state == "pending",
                    WebhookDelivery.next_attempt_at <= now,
                )
            ).all()
        if not due:
            break
        outcomes += [dispatch.deliver(d, get_settings()) for d in due]
    return outcomes


def _record(tenant_id: uuid.UUID, event_type: str = "tenant.active") -> uuid.UUID:
    with task_session() as session:
        event = webhook_events.record(session, event_type, tenant_id, {"tenant_id": str(tenant_id)})
        session.flush()
        return event.id


def _verify_with_node(secret: str, headers: dict[str, str], body: bytes, tmp: Path) -> str:
    """The docs' JavaScript snippet, as written, run by node on one received message."""
    if NODE is None:
        pytest.skip("the JavaScript verification snippet needs node on PATH")
    script = tmp / f"verify-{uuid.uuid4().hex[:6]}.mjs"
    script.write_text(
        doc_snippet("javascript")
        + "\nconst [secret, headers, body] = JSON.parse(process.argv[2]);\n"
        + "try { verifyWebhook(secret, headers, Buffer.from(body, 'base64')); console.log('ok'); }\n"
        + "catch (e) { if (!(e instanceof WebhookVerificationError)) throw e; console.log('refused: ' + e.message); }\n"
    )
    arg = json.dumps([secret, headers, base64.b64encode(body).decode()])
    done = subprocess.run([NODE, str(script), arg], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


async def test_the_secret_is_shown_once_and_event_types_are_checked(
    api: httpx.AsyncClient,
) -> None:
    tenant_id = make_tenant()
    created = await _endpoint(api, "https://example.com/hook", tenant_id, ["tenant.active"])
    secret = created["secret"]
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) >= 24
    shown = (await api.get(f"/v1/webhook-endpoints/{created['id']}")).json()
    assert "secret" not in shown and secret not in json.dumps(shown)
    listed = (await api.get("/v1/webhook-endpoints", params={"limit": 200})).text
    assert secret not in listed
    with task_session() as session:  # stored encrypted, never as given
        audit = session.scalars(
            select(AuditEvent).where(AuditEvent.target_id == created["id"])
        ).all()
    assert [a.action for a in audit] == ["webhook_endpoint.create"]
    assert secret not in json.dumps([a.details for a in audit])

    unknown = await api.post(
        "/v1/webhook-endpoints",
        json={"url": "https://example.com/h", "event_types": ["tenant.exploded"]},
    )
    assert_problem(unknown, 422)
    assert "tenant.exploded" in unknown.text and "tenant.active" in unknown.text
    not_http = await api.post(
        "/v1/webhook-endpoints",
        json={"url": "ftp://example.com/", "event_types": ["tenant.active"]},
    )
    assert_problem(not_http, 422)


async def test_a_tenant_admin_manages_only_its_tenants_endpoints(api: httpx.AsyncClient) -> None:
    mine, other = make_tenant(), make_tenant()
    theirs = await _endpoint(api, "https://example.com/theirs", other, ["tenant.active"])
    headers = await tenant_admin_headers(api, str(mine))
    created = await api.post(
        "/v1/webhook-endpoints",
        json={"url": "https://example.com/mine", "event_types": ["context.message"]},
        headers=headers,
    )
    assert created.status_code == 201, created.text
    assert created.json()["tenant_id"] == str(mine)
    elsewhere = await api.post(
        "/v1/webhook-endpoints",
        json={"url": "https://e.com/", "event_types": ["tenant.active"], "tenant_id": str(other)},
        headers=headers,
    )
    assert elsewhere.status_code == 404
    listed = (await api.get("/v1/webhook-endpoints", headers=headers)).json()["items"]
    assert [e["id"] for e in listed] == [created.json()["id"]]
    assert (
        await api.get(f"/v1/webhook-endpoints/{theirs['id']}", headers=headers)
    ).status_code == 404


async def test_signatures_verify_with_the_docs_snippets_also_during_a_rotation(
    api: httpx.AsyncClient, receiver: Receiver, tmp_path: Path
) -> None:
    verify, refused = python_verifier()
    tenant_id = make_tenant()
    endpoint = await _endpoint(api, receiver.url, tenant_id, ["tenant.active", "tenant.suspended"])
    old = endpoint["secret"]
    _record(tenant_id)
    assert _deliver_all(endpoint["id"]) == ["succeeded"]
    first = receiver.received[0]
    verify(old, first.headers, first.body)
    assert _verify_with_node(old, first.headers, first.body, tmp_path) == "ok"
    body = json.loads(first.body)
    assert body["type"] == "tenant.active" and body["data"] == {"tenant_id": str(tenant_id)}
    assert first.headers["webhook-id"].startswith("msg_")
    assert first.headers["content-type"] == "application/json"

    rotated = await api.post(f"/v1/webhook-endpoints/{endpoint['id']}/rotate-secret")
    assert rotated.status_code == 200, rotated.text
    new = rotated.json()["secret"]
    assert new != old and new.startswith("whsec_")
    shown = (await api.get(f"/v1/webhook-endpoints/{endpoint['id']}")).json()
    assert shown["secret_rotation_ends_at"] == rotated.json()["previous_secret_expires_at"]
    _record(tenant_id, "tenant.suspended")
    assert _deliver_all(endpoint["id"]) == ["succeeded"]
    during = receiver.received[1]
    assert len(during.headers["webhook-signature"].split(" ")) == 2
    for secret in (old, new):  # a receiver on either secret accepts it
        verify(secret, during.headers, during.body)
        assert _verify_with_node(secret, during.headers, during.body, tmp_path) == "ok"
    stranger = webhook_events.new_secret()
    with pytest.raises(refused):
        verify(stranger, during.headers, during.body)
    assert _verify_with_node(stranger, during.headers, during.body, tmp_path).startswith("refused")
    tampered = during.body.replace(b"suspended", b"active")
    with pytest.raises(refused):
        verify(new, during.headers, tampered)
    assert _verify_with_node(new, during.headers, tampered, tmp_path).startswith("refused")

    # After the overlap only the new secret signs.
    with task_session() as session:
        row = session.get(WebhookEndpoint, uuid.UUID(endpoint["id"]))
        assert row is not None
        row.previous_secret_expires_at = datetime.now(UTC) - timedelta(seconds=1)
    _record(tenant_id)
    assert _deliver_all(endpoint["id"]) == ["succeeded"]
    after = receiver.received[2]
    assert len(after.headers["webhook-signature"].split(" ")) == 1
    verify(new, after.headers, after.body)
    with pytest.raises(refused):
        verify(old, after.headers, after.body)


async def test_410_disables_the_endpoint_and_tells_its_owner(
    api: httpx.AsyncClient, receiver: Receiver
) -> None:
    tenant_id = make_tenant()
    gone = Receiver(answer=lambda n: 410).start()
    try:
        endpoint = await _endpoint(api, gone.url, tenant_id, ["tenant.active"])
        watcher = await _endpoint(api, receiver.url, tenant_id, ["webhook_endpoint.disabled"])
        _record(tenant_id)
        assert _deliver_all(endpoint["id"]) == ["failed"]
    finally:
        gone.stop()
    shown = (await api.get(f"/v1/webhook-endpoints/{endpoint['id']}")).json()
    assert shown["enabled"] is False and "410" in shown["disabled_reason"]
    events = (
        await api.get(
            "/v1/webhook-events", params={"type": "webhook_endpoint.disabled", "limit": 200}
        )
    ).json()["items"]
    assert any(e["data"]["endpoint_id"] == endpoint["id"] for e in events)
    audit = (await api.get("/v1/audit-events", params={"tenant_id": str(tenant_id)})).text
    assert "webhook_endpoint.disable" in audit
    assert _deliver_all(watcher["id"]) == ["succeeded"]  # the owner's other endpoint hears it
    told = json.loads(receiver.received[-1].body)
    assert told["type"] == "webhook_endpoint.disabled"
    assert told["data"]["endpoint_id"] == endpoint["id"]
    # Re-enabled by its owner, it is sent to again.
    enabled = await api.patch(f"/v1/webhook-endpoints/{endpoint['id']}", json={"enabled": True})
    assert enabled.json()["enabled"] is True and enabled.json()["disabled_reason"] is None


async def test_an_endpoint_failing_for_the_disable_after_time_is_disabled(
    api: httpx.AsyncClient, tuned_settings: Callable[..., None]
) -> None:
    tuned_settings(C3_WEBHOOK_RETRY_SCHEDULE_S="0,0,0", C3_WEBHOOK_DISABLE_AFTER_S="0.001")
    tenant_id = make_tenant()
    failing = Receiver(answer=lambda n: 500).start()
    try:
        endpoint = await _endpoint(api, failing.url, tenant_id, ["tenant.active"])
        _record(tenant_id)
        outcomes = _deliver_all(endpoint["id"])
    finally:
        failing.stop()
    # The first failure starts the clock, the second finds it ran out.
    assert outcomes == ["retry", "failed"]
    shown = (await api.get(f"/v1/webhook-endpoints/{endpoint['id']}")).json()
    assert shown["enabled"] is False and "failed since" in shown["disabled_reason"]


def _production(tuned_settings: Callable[..., None], **more: str) -> None:
    if not os.environ.get("C3_TEST_DATABASE_URL"):
        pytest.skip("production mode needs PostgreSQL (C3_TEST_DATABASE_URL)")
    tuned_settings(C3_MODE="production", **more)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/hook",
        "http://localhost/hook",
        "http://10.1.2.3/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://100.64.0.1/hook",
        "http://[::1]/hook",
        "http://[fd00::1]/hook",
        "http://[::ffff:192.168.0.1]/hook",
        "http://0.0.0.0/hook",
        "http://224.0.0.1/hook",
        "http://2130706433/hook",
    ],
)
async def test_production_refuses_internal_destinations_at_creation(
    api: httpx.AsyncClient, tuned_settings: Callable[..., None], url: str
) -> None:
    _production(tuned_settings)
    response = await api.post(
        "/v1/webhook-endpoints", json={"url": url, "event_types": ["tenant.active"]}
    )
    assert_problem(response, 422, "internal networks")


async def test_production_refuses_internal_addresses_at_delivery_unless_allowed(
    api: httpx.AsyncClient, receiver: Receiver, tuned_settings: Callable[..., None]
) -> None:
    tenant_id = make_tenant()
    # Created while allowed (local mode), then the platform runs in production mode: the
    # address is checked again after resolving, before anything is sent.
    endpoint = await _endpoint(
        api, receiver.url.replace("127.0.0.1", "localhost"), tenant_id, ["tenant.active"]
    )
    _production(tuned_settings, C3_WEBHOOK_RETRY_SCHEDULE_S="")
    _record(tenant_id)
    assert _deliver_all(endpoint["id"]) == ["failed"]
    assert receiver.received == []
    deliveries = (await api.get(f"/v1/webhook-endpoints/{endpoint['id']}/deliveries")).json()
    attempt = deliveries["items"][0]["attempts"][0]
    assert attempt["status"] == "failed" and attempt["response_code"] is None
    assert "loopback" in attempt["error"]

    tuned_settings(C3_WEBHOOK_ALLOWED_NETWORKS="127.0.0.0/8,::1/128")
    allowed = await _endpoint(api, receiver.url, tenant_id, ["tenant.active"])
    _record(tenant_id)
    assert _deliver_all(allowed["id"]) == ["succeeded"]
    assert len(receiver.received) == 1


async def test_finalizing_an_invoice_announces_it(
    api: httpx.AsyncClient, receiver: Receiver
) -> None:
    now = datetime.now(UTC)
    last_month = (now.replace(day=1) - timedelta(days=1)).strftime("%Y-%m")
    tenant_id = make_tenant()
    with task_session() as session:  # it existed last month, so that month has an invoice
        tenant = session.get(Tenant, tenant_id)
        assert tenant is not None
        tenant.created_at = now - timedelta(days=62)
        for change in session.scalars(
            select(TenantPlanChange).where(TenantPlanChange.tenant_id == tenant_id)
        ):
            change.effective_at = tenant.created_at
    endpoint = await _endpoint(api, receiver.url, tenant_id, ["invoice.finalized"])
    invoice_id = invoice_tasks.finalize_one(tenant_id, last_month, now)
    invoice_tasks.finalize_one(tenant_id, last_month, now)  # again: no second event
    assert _deliver_all(endpoint["id"]) == ["succeeded"]
    body = json.loads(receiver.received[0].body)
    assert body["type"] == "invoice.finalized"
    assert body["data"]["invoice_id"] == str(invoice_id)
    assert body["data"]["period"] == last_month and isinstance(body["data"]["total"], int)


def _plan_including(messages: int) -> uuid.UUID:
    with task_session() as session:
        plan = Plan(
            code=f"w{uuid.uuid4().hex[:8]}",
            name="Webhook test",
            currency="EUR",
            base_fee_minor=0,
            prices={"messages": {"included": messages, "unit_price": 1, "per": 1}},
        )
        session.add(plan)
        session.flush()
        return plan.id


def _use(tenant_id: uuid.UUID, meter: str, quantity: int, at: datetime) -> None:
    with task_session() as session:
        hour = at.replace(minute=0, second=0, microsecond=0)
        counter = session.get(UsageCounter, (tenant_id, meter, hour))
        if counter is None:
            session.add(
                UsageCounter(tenant_id=tenant_id, meter=meter, period_start=hour, quantity=quantity)
            )
        else:
            counter.quantity += quantity


def _thresholds(tenant_id: uuid.UUID) -> list[tuple[str, int]]:
    """The usage.threshold events of the tenant: (month, percent), in order."""
    with task_session() as session:
        events = session.scalars(
            select(WebhookEvent).where(
                WebhookEvent.tenant_id == tenant_id, WebhookEvent.type == "usage.threshold"
            )
        ).all()
        return sorted((e.data["period"], int(e.data["threshold_percent"])) for e in events)


async def test_usage_thresholds_fire_once_at_80_and_once_at_100_percent(
    api: httpx.AsyncClient, receiver: Receiver
) -> None:
    tenant_id = make_tenant()
    with task_session() as session:
        tenant = session.get(Tenant, tenant_id)
        assert tenant is not None
        tenant.plan_id = _plan_including(messages=10)
    endpoint = await _endpoint(api, receiver.url, tenant_id, ["usage.threshold"])
    now = datetime.now(UTC)
    _use(tenant_id, "messages", 7, now)
    thresholds.check(now)
    assert _thresholds(tenant_id) == []
    _use(tenant_id, "messages", 1, now)  # 8 of 10
    thresholds.check(now)
    thresholds.check(now)
    month = now.strftime("%Y-%m")
    assert _thresholds(tenant_id) == [(month, 80)]
    _use(tenant_id, "messages", 5, now)  # 13 of 10
    thresholds.check(now)
    thresholds.check(now)
    assert _thresholds(tenant_id) == [(month, 80), (month, 100)]
    assert _deliver_all(endpoint["id"]) == ["succeeded", "succeeded"]
    data = sorted((json.loads(r.body)["data"] for r in receiver.received), key=str)
    assert {d["threshold_percent"] for d in data} == {80, 100}
    assert all(d["meter"] == "messages" and d["included"] == 10 for d in data)
    # Next month starts again.
    next_month = (now.replace(day=1) + timedelta(days=32)).replace(day=1, hour=1)
    _use(tenant_id, "messages", 9, next_month)
    thresholds.check(next_month)
    assert _thresholds(tenant_id) == [
        (month, 80),
        (month, 100),
        (next_month.strftime("%Y-%m"), 80),
    ]


async def test_a_context_message_is_announced_without_its_content(
    api: httpx.AsyncClient, receiver: Receiver
) -> None:
    hs_token = uuid.uuid4().hex
    made = make_tenant_with_context(hs_token)
    tenant_id, room_id, context_id = made.tenant_id, made.room_id, made.context_id
    endpoint = await _endpoint(api, receiver.url, tenant_id, ["context.message"])
    event_id = f"$m-{uuid.uuid4().hex[:8]}"
    message = {
        "type": "m.room.message",
        "room_id": room_id,
        "event_id": event_id,
        "sender": "@alice:x",
        "origin_server_ts": 1_800_000_000_000,
        "content": {"msgtype": "m.text", "body": "the secret plan"},
    }
    pushed = await api.put(
        f"/_c3/appservice/{tenant_id}/_matrix/app/v1/transactions/w1",
        json={"events": [message]},
        headers={"Authorization": f"Bearer {hs_token}"},
    )
    assert pushed.status_code == 200, pushed.text
    assert _deliver_all(endpoint["id"]) == ["succeeded"]
    body = json.loads(receiver.received[0].body)
    assert body["type"] == "context.message"
    assert body["data"]["event_id"] == event_id and body["data"]["ref"] == "case-1"
    assert body["data"]["context_id"] == str(context_id)
    assert b"the secret plan" not in receiver.received[0].body  # thin: ids, not content
    assert _deliver_all(endpoint["id"]) == []  # the context outbox row is marked delivered


def test_the_docs_name_every_event_type() -> None:
    text = DOCS.read_text()
    missing = [t for t in webhook_events.EVENT_TYPES if f"`{t}`" not in text]
    assert not missing


def test_every_webhook_route_has_its_name() -> None:
    """Route names become the OpenAPI operation ids integrators' generated clients use."""
    names = {getattr(route, "name", "") for route in webhooks_router.routes}
    served = {path for path in create_app().openapi()["paths"] if "webhook" in path}
    assert served == {getattr(route, "path", "") for route in webhooks_router.routes}
    assert names == {
        "webhook_endpoints.create",
        "webhook_endpoints.list",
        "webhook_endpoints.get",
        "webhook_endpoints.update",
        "webhook_endpoints.delete",
        "webhook_endpoints.rotate_secret",
        "webhook_endpoints.deliveries.list",
        "webhook_endpoints.deliveries.replay",
        "webhook_events.list",
    }


def test_retries_follow_the_schedule_and_honour_retry_after(
    tuned_settings: Callable[..., None],
) -> None:
    tuned_settings(C3_WEBHOOK_RETRY_JITTER="0.1")
    settings = get_settings()
    assert settings.webhook_retry_schedule_s == [5, 300, 1800, 7200, 18000, 36000, 36000]
    failed = SendResult(500, 3, "HTTP 500")
    for attempts, planned in enumerate(settings.webhook_retry_schedule_s, start=1):
        delay = dispatch.retry_delay(attempts, failed, settings)
        assert delay is not None and planned * 0.9 <= delay <= planned * 1.1
    assert dispatch.retry_delay(8, failed, settings) is None  # 8 attempts, then failed
    for code in (429, 502, 503, 504):
        slow_down = SendResult(code, 3, f"HTTP {code}", retry_after_s=600)
        delay = dispatch.retry_delay(1, slow_down, settings)
        assert delay is not None and delay >= 600
    ignored = SendResult(500, 3, "HTTP 500", retry_after_s=600)  # only when asked to slow down
    delay = dispatch.retry_delay(1, ignored, settings)
    assert delay is not None and delay < 10


async def test_a_failed_operation_is_announced(api: httpx.AsyncClient, receiver: Receiver) -> None:
    tenant_id = make_tenant(TenantStatus.PROVISIONING)
    endpoint = await _endpoint(api, receiver.url, tenant_id, ["operation.failed"])
    with task_session() as session:
        op = lifecycle.start_operation(tenant_id, OperationKind.PROVISION)
        session.add(op)
        session.flush()
        tenant = session.get(Tenant, tenant_id)
        lifecycle.begin_attempt(op, 5, tenant)
        lifecycle.fail(op, "homeserver did not become healthy", tenant)
        op_id = op.id
    assert _deliver_all(endpoint["id"]) == ["succeeded"]
    body = json.loads(receiver.received[0].body)
    assert body["type"] == "operation.failed"
    assert body["data"]["operation_id"] == str(op_id) and body["data"]["kind"] == "provision"
    assert body["data"]["error"] == "homeserver did not become healthy"


def _loopback_for(*names: str) -> Callable[..., list[Any]]:
    def getaddrinfo(host: str, *args: Any, **kwargs: Any) -> list[Any]:
        if host in names:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 0))]
        return _real_getaddrinfo(host, *args, **kwargs)

    return getaddrinfo


async def test_https_goes_to_the_checked_address_with_the_name_verified(
    api: httpx.AsyncClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sender connects to the address it resolved and checked, yet TLS still sees and
    verifies the endpoint's name (SNI and certificate), so pinning costs no security."""
    ca, cert, key = make_certificates(tmp_path, dns_name="hooks.localhost")
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    sender._tls_context.cache_clear()
    # Both names resolve to the receivers' loopback address, as DNS would say.
    monkeypatch.setattr(socket, "getaddrinfo", _loopback_for("hooks.localhost", "other.localhost"))
    tls_receiver = Receiver(tls=(cert, key), tls_host="hooks.localhost").start()
    try:
        tenant_id = make_tenant()
        endpoint = await _endpoint(api, tls_receiver.url, tenant_id, ["tenant.active"])
        _record(tenant_id)
        assert _deliver_all(endpoint["id"]) == ["succeeded"]
        assert tls_receiver.received[0].headers["host"] == tls_receiver.url.split("/")[2]
        # A certificate for another name is refused, though the address is the same.
        imposter = Receiver(tls=(cert, key), tls_host="other.localhost").start()
        try:
            other = await _endpoint(api, imposter.url, tenant_id, ["tenant.suspended"])
            _record(tenant_id, "tenant.suspended")
            assert _deliver_all(other["id"], rounds=1) == ["retry"]
            assert imposter.received == []
            deliveries = (await api.get(f"/v1/webhook-endpoints/{other['id']}/deliveries")).json()
            assert "certificate" in deliveries["items"][0]["attempts"][0]["error"].lower()
        finally:
            imposter.stop()
    finally:
        tls_receiver.stop()
        sender._tls_context.cache_clear()


def _closed_on(host: str, port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex((host, port)) != 0


async def test_the_next_allowed_address_is_tried_when_one_refuses_the_connection(
    api: httpx.AsyncClient, tuned_settings: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name with several addresses: internal ones outside the allow-list are never
    contacted, an allowed one that refuses the connection is passed over for the next."""
    # The receiver listens on 127.0.0.2 only; the same port on 127.0.0.1 is closed.
    live = Receiver(host="127.0.0.2").start()
    try:
        port = int(live.url.split(":")[2].split("/")[0])
        if not _closed_on("127.0.0.1", port):
            pytest.skip(f"something else listens on 127.0.0.1:{port}")
        resolved = ["10.1.2.3", "127.0.0.1", "127.0.0.2"]  # refused, closed, listening

        def getaddrinfo(host: str, *args: Any, **kwargs: Any) -> list[Any]:
            if host == "hooks.localhost":
                return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, 0)) for a in resolved]
            return _real_getaddrinfo(host, *args, **kwargs)

        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
        tenant_id = make_tenant()
        endpoint = await _endpoint(
            api, f"http://hooks.localhost:{port}/hook", tenant_id, ["tenant.active"]
        )
        _production(tuned_settings, C3_WEBHOOK_ALLOWED_NETWORKS="127.0.0.0/8")
        _record(tenant_id)
        assert _deliver_all(endpoint["id"], rounds=1) == ["succeeded"]
        assert len(live.received) == 1
        assert live.received[0].headers["host"] == f"hooks.localhost:{port}"

        # Only refused and closed addresses: no delivery, and the attempt says why.
        resolved[:] = ["10.1.2.3", "127.0.0.1"]
        _record(tenant_id)
        assert _deliver_all(endpoint["id"], rounds=1) == ["retry"]
        deliveries = (await api.get(f"/v1/webhook-endpoints/{endpoint['id']}/deliveries")).json()
        error = deliveries["items"][-1]["attempts"][0]["error"]
        assert "127.0.0.1" in error and "10.1.2.3" not in error
        resolved[:] = ["10.1.2.3"]
        _record(tenant_id)
        assert _deliver_all(endpoint["id"], rounds=1) == ["retry"]
        deliveries = (await api.get(f"/v1/webhook-endpoints/{endpoint['id']}/deliveries")).json()
        assert "internal networks" in deliveries["items"][-1]["attempts"][0]["error"]
        assert len(live.received) == 1
    finally:
        live.stop()


async def _one_delivery(api: httpx.AsyncClient, url: str) -> tuple[str, uuid.UUID]:
    """An endpoint at ``url`` with one fanned-out delivery: (endpoint id, delivery id)."""
    tenant_id = make_tenant()
    endpoint = await _endpoint(api, url, tenant_id, ["tenant.active"])
    _record(tenant_id)
    fan_out_everything(datetime.now(UTC))
    with task_session() as session:
        delivery_id = session.scalars(
            select(WebhookDelivery.id).where(
                WebhookDelivery.endpoint_id == uuid.UUID(endpoint["id"])
            )
        ).one()
    return endpoint["id"], delivery_id


@pytest.mark.parametrize("in_flight_answer", [204, 500])
async def test_a_replay_landing_while_a_send_is_in_flight_is_sent_after_it(
    api: httpx.AsyncClient, in_flight_answer: int
) -> None:
    """The replay's task finds the delivery held by the sender in flight; that sender's
    result, whatever it is, must not overwrite the replay: the message goes out once more,
    with the same webhook-id, right after the send in flight finishes."""
    receiver = Receiver(answer=lambda n: in_flight_answer if n == 0 else 204).start()
    try:
        settings = get_settings()
        endpoint_id, delivery_id = await _one_delivery(api, receiver.url)
        in_flight = dispatch.claim(delivery_id, settings)  # a worker took it and is sending
        assert in_flight is not None
        replay = f"/v1/webhook-endpoints/{endpoint_id}/deliveries/{delivery_id}/replay"
        replayed = await api.post(replay)
        assert replayed.status_code == 202, replayed.text
        assert replayed.json()["status"] == "pending"
        # The replay's own task: the delivery is held by the sender in flight.
        assert dispatch.deliver(delivery_id, settings) == "skipped"
        # The send in flight ends; its result no longer decides what happens next.
        result = dispatch.send(in_flight, settings)
        assert result.status_code == in_flight_answer
        assert dispatch.settle(in_flight, result, settings) == "replayed"
        # The replay happens: by the worker that was sending (deliver's loop), or here.
        assert dispatch.deliver(delivery_id, settings) == "succeeded"
        assert dispatch.deliver(delivery_id, settings) == "skipped"  # and only once
    finally:
        receiver.stop()
    ids = [r.headers["webhook-id"] for r in receiver.received]
    assert len(ids) == 2 and ids[0] == ids[1]
    shown = (await api.get(f"/v1/webhook-endpoints/{endpoint_id}/deliveries")).json()["items"]
    assert shown[0]["status"] == "succeeded" and shown[0]["attempt_count"] == 2
    assert [a["response_code"] for a in shown[0]["attempts"]] == [in_flight_answer, 204]


async def test_a_sender_whose_lease_lapsed_does_not_overwrite_the_next_sender(
    api: httpx.AsyncClient, receiver: Receiver
) -> None:
    """A worker stalled past its lease; the sweeper gave the delivery to another one. The
    stalled worker's late result is recorded as an attempt, but does not decide."""
    settings = get_settings()
    endpoint_id, delivery_id = await _one_delivery(api, receiver.url)
    stalled = dispatch.claim(delivery_id, settings)
    assert stalled is not None
    with task_session() as session:  # its lease lapses
        row = session.get(WebhookDelivery, delivery_id)
        assert row is not None
        row.lease_until = datetime.now(UTC) - timedelta(seconds=1)
    second = dispatch.claim(delivery_id, settings)
    assert second is not None
    late = SendResult(500, 3, "HTTP 500")
    assert dispatch.settle(stalled, late, settings) == "replayed"
    assert dispatch.settle(second, dispatch.send(second, settings), settings) == "succeeded"
    shown = (await api.get(f"/v1/webhook-endpoints/{endpoint_id}/deliveries")).json()["items"]
    assert shown[0]["status"] == "succeeded" and shown[0]["attempt_count"] == 2
    assert len(receiver.received) == 1
