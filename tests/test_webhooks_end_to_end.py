"""Webhooks end to end through `c3 up` (its API, beat and Celery worker; stand-in
homeservers, as the lifecycle robustness tests use) to a receiver on loopback: a provisioning
sends a signed tenant.active; a receiver failing three times gets the message on the fourth
attempt, all recorded; a worker killed with kill -9 mid-delivery loses nothing; a replay
arrives with the same webhook-id."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.helpers.environment import isolated_platform
from tests.helpers.platform import RunningPlatform, kill_worker, poll
from tests.helpers.webhooks import Receiver, python_verifier

pytestmark = pytest.mark.e2e

FAST = {
    "C3_BACKEND": "fake",
    "C3_FAKE_HOMESERVER_BOOT_S": "0.2",
    # The spec's schedule in half seconds, unjittered, so retries are quick and countable.
    "C3_WEBHOOK_RETRY_SCHEDULE_S": "0.5,0.5,0.5,0.5,0.5,0.5,0.5",
    "C3_WEBHOOK_RETRY_JITTER": "0",
    "C3_WEBHOOK_DISPATCH_INTERVAL_S": "0.3",
    # A killed sender's delivery is taken up again after 6 s (longer than the 5 s timeout).
    "C3_WEBHOOK_LEASE_TTL_S": "6",
    "C3_WEBHOOK_TIMEOUT_S": "5",
}


# Every signing secret the tests were shown: none may appear in any log of the platform.
SHOWN_SECRETS: list[str] = []


@pytest.fixture(scope="module")
def hooks_platform(
    platform_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningPlatform]:
    with isolated_platform(platform_env, tmp_path_factory.mktemp("c3-webhooks"), **FAST) as running:
        yield running


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver().start()
    yield running
    running.stop()


def _endpoint(
    api: httpx.Client, url: str, types: list[str], tenant_id: str | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {"url": url, "event_types": types}
    if tenant_id:
        body["tenant_id"] = tenant_id
    response = api.post("/v1/webhook-endpoints", json=body)
    assert response.status_code == 201, response.text
    SHOWN_SECRETS.append(response.json()["secret"])
    return dict(response.json())


def _suspend(api: httpx.Client, tenant_id: str) -> None:
    response = api.post(f"/v1/tenants/{tenant_id}/suspend")
    assert response.status_code == 202, response.text


def _settled_delivery(api: httpx.Client, endpoint_id: str, timeout: float = 60) -> dict[str, Any]:
    """The endpoint's one delivery once it is no longer pending."""

    def settled() -> dict[str, Any] | None:
        items = api.get(f"/v1/webhook-endpoints/{endpoint_id}/deliveries").json()["items"]
        assert len(items) <= 1, items
        return items[0] if items and items[0]["status"] != "pending" else None

    return poll(settled, timeout=timeout, what=f"the delivery to endpoint {endpoint_id}")


def test_a_provisioning_sends_a_signed_tenant_active(
    hooks_platform: RunningPlatform, receiver: Receiver
) -> None:
    verify, _ = python_verifier()
    with hooks_platform.api() as api:
        endpoint = _endpoint(api, receiver.url, ["tenant.active"])  # an operator's: all tenants
        try:
            tenant = hooks_platform.create_tenant("hook-active")
            message = poll(
                lambda: [
                    r for r in receiver.of_type("tenant.active") if tenant["id"].encode() in r.body
                ],
                timeout=30,
                what="tenant.active for the new tenant",
            )[0]
            verify(endpoint["secret"], message.headers, message.body)
            delivery = _settled_delivery(api, endpoint["id"])
            assert delivery["status"] == "succeeded"
            assert delivery["message_id"] == message.headers["webhook-id"]
            assert delivery["attempts"][0]["response_code"] == 204
        finally:
            api.delete(f"/v1/webhook-endpoints/{endpoint['id']}")


def test_a_receiver_failing_three_times_gets_it_on_the_fourth_attempt(
    hooks_platform: RunningPlatform,
) -> None:
    receiver = Receiver(answer=lambda n: 500 if n < 3 else 204).start()
    try:
        tenant = hooks_platform.create_tenant("hook-retry")
        with hooks_platform.api() as api:
            endpoint = _endpoint(api, receiver.url, ["tenant.suspended"], tenant["id"])
            _suspend(api, tenant["id"])
            delivery = _settled_delivery(api, endpoint["id"])
    finally:
        receiver.stop()
    assert delivery["status"] == "succeeded" and delivery["attempt_count"] == 4
    assert [a["response_code"] for a in delivery["attempts"]] == [500, 500, 500, 204]
    assert [a["status"] for a in delivery["attempts"]] == ["failed"] * 3 + ["succeeded"]
    assert all(a["latency_ms"] >= 0 for a in delivery["attempts"])
    assert delivery["next_attempt_at"] is None
    assert len(receiver.received) == 4
    assert [r.status for r in receiver.received].count(204) == 1  # accepted exactly once
    assert {r.headers["webhook-id"] for r in receiver.received} == {delivery["message_id"]}


def test_kill_9_of_the_worker_mid_delivery_loses_nothing(hooks_platform: RunningPlatform) -> None:
    hold = threading.Event()
    receiver = Receiver(hold=hold).start()
    try:
        tenant = hooks_platform.create_tenant("hook-kill")
        with hooks_platform.api() as api:
            endpoint = _endpoint(api, receiver.url, ["tenant.suspended"], tenant["id"])
            _suspend(api, tenant["id"])
            assert receiver.arrived.wait(30), "the delivery never started"
            kill_worker(hooks_platform, part="main")  # while the request is in flight
            receiver.hold = None  # the next attempt is answered at once
            hold.set()  # the killed attempt's answer goes nowhere
            delivery = _settled_delivery(api, endpoint["id"], timeout=60)
    finally:
        receiver.stop()
    assert delivery["status"] == "succeeded"
    # The killed attempt left no record; the one after the worker came back did.
    assert [a["status"] for a in delivery["attempts"]] == ["succeeded"]
    assert len(receiver.received) >= 2
    assert {r.headers["webhook-id"] for r in receiver.received} == {delivery["message_id"]}


def test_a_replay_arrives_with_the_same_webhook_id(
    hooks_platform: RunningPlatform, receiver: Receiver
) -> None:
    tenant = hooks_platform.create_tenant("hook-replay")
    with hooks_platform.api() as api:
        endpoint = _endpoint(api, receiver.url, ["tenant.suspended"], tenant["id"])
        _suspend(api, tenant["id"])
        first = _settled_delivery(api, endpoint["id"])
        assert first["status"] == "succeeded"
        replay = api.post(f"/v1/webhook-endpoints/{endpoint['id']}/deliveries/{first['id']}/replay")
        assert replay.status_code == 202, replay.text
        poll(lambda: len(receiver.received) >= 2, timeout=30, what="the replayed message")
        again = _settled_delivery(api, endpoint["id"])
    ids = [r.headers["webhook-id"] for r in receiver.received]
    assert ids == [first["message_id"], first["message_id"]]
    assert receiver.received[0].body == receiver.received[1].body
    assert again["status"] == "succeeded" and again["attempt_count"] == 2


def test_no_signing_secret_in_any_log(hooks_platform: RunningPlatform) -> None:
    with hooks_platform.api() as api:
        endpoint = _endpoint(api, "http://127.0.0.1:9/unused", ["tenant.deleted"])
        rotated = api.post(f"/v1/webhook-endpoints/{endpoint['id']}/rotate-secret")
        SHOWN_SECRETS.append(rotated.json()["secret"])
    logs = [hooks_platform.log_path, *sorted((hooks_platform.data_dir / "logs").glob("*.log"))]
    text = "\n".join(path.read_text(errors="replace") for path in logs if path.exists())
    assert len(SHOWN_SECRETS) >= 5 and text.strip()
    leaked = [secret[:10] for secret in SHOWN_SECRETS if secret in text or secret[6:] in text]
    assert not leaked
