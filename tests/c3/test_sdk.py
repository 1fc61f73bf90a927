"""The SDK's own behaviour, against small loopback servers written here (the real API never
answers 429 or 503 on cue): retries of 429/503 honouring Retry-After within bounds, the same
Idempotency-Key on every retry of a POST, typed errors carrying the problem+json, and webhook
verification against the Standard Webhooks test vector."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from c3.sdk import (
    AsyncClient,
    Client,
    ConfigurationError,
    RateLimitedError,
    RetryPolicy,
    ServiceUnavailableError,
    TransportError,
    WebhookVerificationError,
    sign,
    verify_webhook,
)

TENANT = {
    "id": "4b0f2c36-5d0e-4a53-9d1c-3f1cd0a9c001",
    "slug": "acme",
    "display_name": "Acme",
    "server_name": "acme.c3.test",
    "status": "provisioning",
    "plan": "default",
    "homeserver_url": "http://acme.c3.test:8080",
    "homeserver_path_url": "http://127.0.0.1:8080/t/acme",
    "settings": {},
    "created_at": "2026-12-04T10:00:00Z",
    "updated_at": "2026-12-04T10:00:00Z",
    "operation": {
        "id": "4b0f2c36-5d0e-4a53-9d1c-3f1cd0a9c002",
        "url": "http://x/v1/operations/4b0f2c36-5d0e-4a53-9d1c-3f1cd0a9c002",
    },
}


@dataclass
class Scripted:
    """Answers (status, headers, body) in order, the last one repeated; records each request."""

    answers: list[tuple[int, dict[str, str], Any]]
    requests: list[dict[str, Any]] = field(default_factory=list)


def _problem(status: int, detail: str) -> dict[str, Any]:
    return {
        "type": "https://docs.c3.dev/problems/x",
        "title": "T",
        "status": status,
        "detail": detail,
    }


@contextmanager
def scripted_server(script: Scripted) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            script.requests.append(
                {
                    "method": self.command,
                    "path": self.path,
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                    "body": body,
                    "at": time.monotonic(),
                }
            )
            index = min(len(script.requests), len(script.answers)) - 1
            status, headers, payload = script.answers[index]
            data = json.dumps(payload).encode()
            self.send_response(status)
            kind = "application/problem+json" if status >= 400 else "application/json"
            self.send_header("content-type", kind)
            self.send_header("content-length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = _answer

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_a_429_with_retry_after_is_waited_out_and_retried_with_the_same_idempotency_key() -> None:
    script = Scripted(
        [
            (429, {"Retry-After": "1"}, _problem(429, "slow down")),
            (503, {"Retry-After": "0"}, _problem(503, "database restarting")),
            (202, {}, TENANT),
        ]
    )
    with scripted_server(script) as url, Client(url, "t0ken") as c3:
        started = time.monotonic()
        accepted = c3.tenants.create("acme", "Acme")
    assert str(accepted.operation.id) == TENANT["operation"]["id"]
    assert len(script.requests) == 3
    # The first retry came only after the second Retry-After asked for (real time, no mock).
    assert script.requests[1]["at"] - script.requests[0]["at"] >= 0.95
    assert time.monotonic() - started >= 0.95
    keys = {r["headers"]["idempotency-key"] for r in script.requests}
    assert len(keys) == 1 and next(iter(keys)).startswith("c3sdk-")
    assert {r["headers"]["authorization"] for r in script.requests} == {"Bearer t0ken"}


def test_retries_are_bounded_and_the_last_answer_is_raised_typed() -> None:
    script = Scripted([(503, {"Retry-After": "2"}, _problem(503, "no worker answered"))])
    waits: list[float] = []
    with scripted_server(script) as url, Client(url, "t", retry=RetryPolicy(max_retries=2)) as c3:
        c3.sleep = waits.append
        with pytest.raises(ServiceUnavailableError) as raised:
            c3.status()
    assert waits == [2.0, 2.0]  # each wait is the server's Retry-After
    assert len(script.requests) == 3
    assert raised.value.status == 503 and raised.value.detail == "no worker answered"
    assert raised.value.retry_after == 2.0


def test_a_retry_after_beyond_the_bound_is_not_waited_for() -> None:
    later = format_datetime(datetime.now(UTC) + timedelta(hours=1), usegmt=True)
    script = Scripted([(429, {"Retry-After": later}, _problem(429, "budget spent"))])
    waits: list[float] = []
    with scripted_server(script) as url, Client(url, "t") as c3:
        c3.sleep = waits.append
        with pytest.raises(RateLimitedError) as raised:
            c3.tenants.list()
    assert waits == [] and len(script.requests) == 1
    assert raised.value.retry_after is not None and 3500 < raised.value.retry_after <= 3600


async def test_the_async_client_retries_alike() -> None:
    script = Scripted([(429, {"Retry-After": "0"}, _problem(429, "x")), (202, {}, TENANT)])
    with scripted_server(script) as url:
        async with AsyncClient(url, "t") as c3:
            accepted = await c3.tenants.create("acme", "Acme", idempotency_key="mine-1")
    assert accepted.slug == "acme"
    assert [r["headers"]["idempotency-key"] for r in script.requests] == ["mine-1", "mine-1"]


def test_a_refused_connection_is_a_transport_error_after_the_retries() -> None:
    with scripted_server(Scripted([(200, {}, {})])) as url:
        pass  # the port is closed again
    waits: list[float] = []
    with Client(url, "t", retry=RetryPolicy(max_retries=2)) as c3:
        c3.sleep = waits.append
        with pytest.raises(TransportError):
            c3.tenants.get(TENANT["id"])
    assert len(waits) == 2


def test_configuration_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("C3_API_URL", raising=False)
    monkeypatch.delenv("C3_API_TOKEN", raising=False)
    with pytest.raises(ConfigurationError, match="C3_API_URL"):
        Client()
    monkeypatch.setenv("C3_API_URL", "http://127.0.0.1:1/")
    monkeypatch.setenv("C3_API_TOKEN", "from-env")
    with Client() as c3:
        assert c3.config.base_url == "http://127.0.0.1:1"
        assert c3.config.token == "from-env"


# Webhooks -----------------------------------------------------------------------------

# The test vector published with the Standard Webhooks reference libraries
# (github.com/standard-webhooks/standard-webhooks; the same one in Svix's libraries).
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def _vector_headers(signature: str = VECTOR_SIGNATURE) -> dict[str, str]:
    return {
        "Webhook-Id": VECTOR_ID,
        "Webhook-Timestamp": str(VECTOR_TIMESTAMP),
        "Webhook-Signature": signature,
    }


def test_the_standard_webhooks_test_vector_verifies() -> None:
    assert sign(VECTOR_SECRET, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY) == VECTOR_SIGNATURE
    payload = verify_webhook(
        VECTOR_SECRET, _vector_headers(), VECTOR_BODY, now=VECTOR_TIMESTAMP + 10
    )
    assert payload == {"test": 2432232314}


def test_one_matching_signature_among_several_is_enough() -> None:
    """During a secret rotation a delivery carries a signature per secret."""
    headers = _vector_headers(f"v1,bm9wZQ== v2,whatever {VECTOR_SIGNATURE}")
    assert verify_webhook(VECTOR_SECRET, headers, VECTOR_BODY, now=VECTOR_TIMESTAMP) == {
        "test": 2432232314
    }


@pytest.mark.parametrize(
    ("headers", "body", "now", "reason"),
    [
        (_vector_headers(), b'{"test": 2432232315}', VECTOR_TIMESTAMP, "no webhook-signature"),
        (_vector_headers("v1,bm9wZQ=="), VECTOR_BODY, VECTOR_TIMESTAMP, "no webhook-signature"),
        (_vector_headers(), VECTOR_BODY, VECTOR_TIMESTAMP + 301, "tolerance"),
        (_vector_headers(), VECTOR_BODY, VECTOR_TIMESTAMP - 301, "tolerance"),
        ({"webhook-id": VECTOR_ID}, VECTOR_BODY, VECTOR_TIMESTAMP, "missing webhook-timestamp"),
    ],
)
def test_a_forged_stale_or_incomplete_delivery_is_refused(
    headers: dict[str, str], body: bytes, now: int, reason: str
) -> None:
    with pytest.raises(WebhookVerificationError, match=reason):
        verify_webhook(VECTOR_SECRET, headers, body, now=now)


def test_another_secret_does_not_verify() -> None:
    with pytest.raises(WebhookVerificationError):
        verify_webhook("whsec_" + "QUJD" * 8, _vector_headers(), VECTOR_BODY, now=VECTOR_TIMESTAMP)
