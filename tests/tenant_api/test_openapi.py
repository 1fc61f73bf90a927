"""The OpenAPI document as an integrator relies on it: committed and current, readable and
unique operation ids, a bearer security scheme where a credential is needed (and only there),
every problem answer described as problem+json, and the headers a client can send or read."""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from tenant_api import openapi
from tenant_api.api_keys.schemas import ApiKeyCreate
from tenant_api.contexts.schemas import ContextPut
from tenant_api.main import create_app
from tenant_api.openapi_examples import EXAMPLES
from tenant_api.plans.schemas import PlanCreate
from tenant_api.tenants.schemas import TenantCreate

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "docs" / "openapi.json"
OPERATION_ID = re.compile(r"^[a-z_]+(\.[a-z_]+)+$")
# Operations anyone may call: sign-in and token revocation (the refresh token is the
# credential), a signed export link, and the health check.
PUBLIC = {"auth.token", "auth.revoke", "exports.download", "health.get"}
METHODS = {"get", "put", "post", "patch", "delete"}


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return json.loads(openapi.document(create_app()))


def operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, operation)
        for path, item in schema["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    ]


def resolved(schema: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in answer:
        return schema["components"]["responses"][answer["$ref"].rsplit("/", 1)[-1]]
    return answer


def test_the_committed_document_is_current() -> None:
    current = openapi.document(create_app())
    committed = COMMITTED.read_text() if COMMITTED.exists() else ""
    if committed != current:
        diff = "".join(
            list(
                difflib.unified_diff(
                    committed.splitlines(keepends=True),
                    current.splitlines(keepends=True),
                    "docs/openapi.json (committed)",
                    "the API now",
                    n=2,
                )
            )[:60]
        )
        pytest.fail(
            "docs/openapi.json is stale: run `c3 openapi --write` from the repository root "
            f"and commit it.\n{diff}"
        )
    assert current.endswith("}\n") and json.loads(current)["openapi"].startswith("3.")


def test_the_document_is_valid_openapi(schema: dict[str, Any]) -> None:
    from openapi_spec_validator import validate

    validate(schema)


def test_operation_ids_are_readable_and_unique(schema: dict[str, Any]) -> None:
    ids = [operation["operationId"] for _, _, operation in operations(schema)]
    unreadable = [i for i in ids if not OPERATION_ID.match(i)]
    assert not unreadable, f"operation ids must look like resource.verb: {unreadable}"
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
    assert {"tenants.create", "tenants.list", "tenants.get", "operations.get"} <= set(ids)


def test_every_route_has_a_dotted_name() -> None:
    """Hidden routes too (portal pages, the widget, the appservice receiver): the names are
    what ``url_for`` and the operation ids use."""
    names = [route.name for route in openapi.api_routes(create_app())]
    assert [n for n in names if not OPERATION_ID.match(n)] == []
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)


def test_credentials_are_a_bearer_scheme_on_exactly_the_operations_that_need_one(
    schema: dict[str, Any],
) -> None:
    assert schema["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": openapi_bearer_description(),
    }
    for method, path, operation in operations(schema):
        declared = operation.get("security")
        if operation["operationId"] in PUBLIC:
            assert not declared, f"{method} {path} is public"
        else:
            assert declared == [{"bearer": []}], f"{method} {path} needs a credential"
        # The credential is the scheme's; a plain Authorization parameter is ignored by tools.
        names = {p.get("name", "").lower() for p in operation.get("parameters", [])}
        assert "authorization" not in names, f"{method} {path}"


def openapi_bearer_description() -> str:
    from tenant_api.deps import BEARER

    return str(BEARER.model.description)


def test_every_problem_answer_is_problem_json_with_its_headers(schema: dict[str, Any]) -> None:
    problem = schema["components"]["schemas"]["Problem"]
    assert set(problem["required"]) == {"type", "title", "status", "detail"}
    assert {"instance", "errors"} <= set(problem["properties"])
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    for method, path, operation in operations(schema):
        where = f"{method.upper()} {path}"
        answers = {int(s): resolved(schema, a) for s, a in operation["responses"].items()}
        assert 503 in answers, where
        for status, answer in answers.items():
            assert "X-Request-ID" in answer.get("headers", {}), f"{where} {status}"
            if status >= 400:
                assert answer["content"] == {
                    "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
                }, f"{where} {status}"
            if status == 202:
                assert answer["headers"]["Location"]["required"], where
            if status in (429, 503):
                assert "Retry-After" in answer["headers"], f"{where} {status}"
        if operation.get("security"):
            assert {401, 429} <= set(answers), where
            assert {"RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"} <= set(
                answers[429]["headers"]
            ), where
        if "requestBody" in operation:
            assert {400, 413, 422} <= set(answers), where
        if "{" in path:
            assert 404 in answers, where


def test_request_headers_are_documented(schema: dict[str, Any]) -> None:
    for method, path, operation in operations(schema):
        refs = {p.get("$ref", "").rsplit("/", 1)[-1] for p in operation["parameters"]}
        assert "X-Request-ID" in refs, f"{method} {path}"
        honours_key = method == "post" and bool(operation.get("security"))
        assert ("Idempotency-Key" in refs) == honours_key, f"{method} {path}"


def test_the_main_schemas_carry_examples(schema: dict[str, Any]) -> None:
    schemas = schema["components"]["schemas"]
    for name in (
        "TenantCreate",
        "TenantOut",
        "TenantAccepted",
        "OperationOut",
        "ApiKeyCreate",
        "ApiKeyCreated",
        "PlanCreate",
        "PlanOut",
        "ContextPut",
        "ContextOut",
        "Problem",
    ):
        assert schemas[name].get("examples"), f"{name} has no example"


async def test_the_served_document_is_the_committed_one_and_public(
    api: httpx.AsyncClient,
) -> None:
    served = await api.get("/openapi.json", headers={"Authorization": ""})
    assert served.status_code == 200
    assert served.json() == json.loads(COMMITTED.read_text())
    docs = await api.get("/docs", headers={"Authorization": ""})
    assert docs.status_code == 200 and "/openapi.json" in docs.text


async def test_validation_errors_are_the_documented_problem(api: httpx.AsyncClient) -> None:
    """What the document says a 422 is, the API sends (the status, media type, fields)."""
    refused = await api.post("/v1/tenants", json={"slug": 5})
    assert refused.status_code == 422
    assert refused.headers["content-type"] == "application/problem+json"
    body = refused.json()
    assert body["status"] == 422 and body["instance"] == "/v1/tenants"
    assert any(e["field"] == "slug" for e in body["errors"])
    assert refused.headers["x-request-id"]


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_each_example_is_valid_for_its_schema(schema: dict[str, Any], name: str) -> None:
    """Generators and people copy examples: each must be a body the schema (and, for a
    request, the API's own model) accepts."""
    import jsonschema

    document = {**schema, "$ref": f"#/components/schemas/{name}"}
    for example in schema["components"]["schemas"][name]["examples"]:
        jsonschema.Draft202012Validator(document).validate(example)
    request_models = {
        "TenantCreate": TenantCreate,
        "ApiKeyCreate": ApiKeyCreate,
        "PlanCreate": PlanCreate,
        "ContextPut": ContextPut,
    }
    if name in request_models:
        request_models[name].model_validate(EXAMPLES[name])


async def test_a_body_that_is_not_text_is_the_documented_400(api: httpx.AsyncClient) -> None:
    refused = await api.post(
        "/v1/api-keys", content=b"\xff\xfe{", headers={"Content-Type": "application/json"}
    )
    assert refused.status_code == 400
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["title"] == "Bad request"
