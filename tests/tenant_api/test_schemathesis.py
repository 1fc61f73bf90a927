"""Property-based API testing with schemathesis: generated requests for every operation of
the OpenAPI schema, as each kind of principal, against the real API server (uvicorn, the
test database and Redis; no worker consumes this namespace, so created tenants stay pending).
Zero server errors and zero answers that contradict the schema."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.helpers.environment import OPERATOR_TOKEN
from tests.helpers.platform import running_api

schemathesis_checks = [schemathesis.checks.not_a_server_error, response_schema_conformance]
PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def api_server(
    platform_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    log = tmp_path_factory.mktemp("schemathesis") / "api.log"
    with running_api({**os.environ, **platform_env}, log) as (port, _):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def credentials(api_server: str) -> dict[str, str]:
    """A bearer token for each kind of principal."""
    operator = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
    with httpx.Client(base_url=api_server, headers=operator, timeout=30) as api:
        tenant = api.post(
            "/v1/tenants", json={"slug": f"st{uuid.uuid4().hex[:8]}", "display_name": "S"}
        ).json()
        email = f"s{uuid.uuid4().hex[:8]}@example.com"
        api.post(
            "/v1/accounts",
            json={
                "email": email,
                "password": PASSWORD,
                "role": "tenant_admin",
                "tenant_id": tenant["id"],
            },
        )
        admin = api.post(
            "/v1/auth/token",
            data={"grant_type": "password", "username": email, "password": PASSWORD},
            headers={"Authorization": ""},
        ).json()["access_token"]
        key = api.post(
            "/v1/api-keys",
            json={"name": "s", "scopes": ["tenants:read", "usage:read"], "tenant_id": tenant["id"]},
        ).json()["key"]
    return {"operator": OPERATOR_TOKEN, "tenant_admin": admin, "tenant_key": key, "none": ""}


def test_generated_requests_never_break_the_api(
    api_server: str, credentials: dict[str, str]
) -> None:
    api_schema = schemathesis.openapi.from_url(f"{api_server}/openapi.json")
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 20
    failures: list[str] = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=10,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def exercise(case: schemathesis.Case) -> None:
            for token in credentials.values():
                response = case.call(headers={"Authorization": f"Bearer {token}" if token else ""})
                case.validate_response(response, checks=schemathesis_checks)

        try:
            exercise()
        except Exception as exc:  # noqa: BLE001 — collect every operation's failure
            failures.append(f"{operation.label}: {str(exc)[:1500]}")
    assert not failures, "\n\n".join(failures)
