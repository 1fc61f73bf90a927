"""The OpenAPI document integrators generate clients from and diff between releases
(committed as ``docs/openapi.json``; ``c3 openapi --write`` regenerates it).

FastAPI describes the routes, their parameters, bodies and success answers. This module adds
what FastAPI cannot see and a client must know, and derives it from the routes themselves so a
new route is described by the same rules:

- every problem answer an operation can give, as ``application/problem+json`` with one
  ``Problem`` schema (the body ``kit/problems.py`` builds): 401 and 429 where a credential is
  needed, 403 where a scope is, 404 where the path names an object, 400, 413 and 422 where a
  body is read (422 where parameters are), 409 where a POST may meet its ``Idempotency-Key``
  in use (plus the conflicts listed below), 503 everywhere (the database, and Redis for
  credential checks);
- the ``Idempotency-Key`` request header on authenticated POSTs (the middleware honours it
  there) and ``X-Request-ID`` on every operation and answer;
- examples on the main schemas (``openapi_examples.py``) and readable names for FastAPI's
  form bodies.

The bearer security scheme itself comes from ``deps.BEARER``; operation ids are route names.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute, RouteContext, iter_route_contexts

from tenant_api.deps import principal_dep
from tenant_api.kit.problems import PROBLEM, TYPE_BASE
from tenant_api.openapi_examples import EXAMPLES

# Problems that depend on what a route does rather than on its shape: which operations can
# meet a conflicting state (409), an unusable homeserver answer (502), a budget (429) or a
# dependency that is down (503) beyond the ones every operation shares. Keys are operation ids
# or their resource ("users" covers users.*).
EXTRA_PROBLEMS: dict[str, frozenset[int]] = {
    # Users and registration tokens live in the tenant's homeserver (Synapse's admin API):
    # refused while the tenant is not active (409), and its answers can fail (502).
    "users": frozenset({409, 502}),
    "registration_tokens": frozenset({409, 502}),
    "contexts.put": frozenset({409, 502}),
    "contexts.close": frozenset({409, 502}),
    "context_participants": frozenset({409, 502}),
    "context_messages": frozenset({409, 502}),
    # A body naming a tenant the caller cannot see (or that does not exist).
    "api_keys.create": frozenset({404}),
    "tenants.update": frozenset({409}),
    "tenants.delete": frozenset({409}),
    "exports.create": frozenset({409}),
    # No homeserver yet (provisioning, failed before it ran): no log to read.
    "tenants.logs": frozenset({409}),
    "auth.token": frozenset({401, 429}),
    "auth.revoke": frozenset({401}),
}

_RATE_HEADERS = {
    "RateLimit-Limit": "The credential's burst: the most requests it may send at once.",
    "RateLimit-Remaining": "Requests this credential may send right now.",
    "RateLimit-Reset": "Seconds until `RateLimit-Remaining` is back at `RateLimit-Limit`.",
    "RateLimit-Policy": "The sustained rate, e.g. `600;w=60;burst=600`.",
}

_DESCRIPTIONS = {
    400: "The body could not be read at all (not UTF-8 text, or a broken form); a body "
    "that is read but invalid is a 422",
    401: "No credential, or one that is invalid, expired or revoked (`WWW-Authenticate: Bearer`)",
    403: "The credential lacks the scope this operation needs, or is not an operator's",
    404: "Not found, or not visible to this credential (another tenant's objects are "
    "always 404, never 403)",
    409: "Conflicts with the object's current state, or the `Idempotency-Key` is in use "
    "by a request still running",
    413: "The request body is larger than the API accepts (`C3_API_MAX_BODY_BYTES`)",
    422: "A parameter or the body is invalid (`errors` names each field), or the "
    "`Idempotency-Key` is malformed or was used with a different request",
    429: "Too many requests or failed credentials from this client, or this credential is "
    "over its rate limit; retry after `Retry-After` seconds",
    502: "The tenant's homeserver gave an answer the platform could not use",
    503: "A platform dependency (database, Redis, the homeserver) is unavailable; nothing "
    "was changed; retry after `Retry-After` seconds",
}

_COMPONENT = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    409: "Conflict",
    413: "ContentTooLarge",
    422: "InvalidRequest",
    429: "TooManyRequests",
    502: "HomeserverError",
    503: "Unavailable",
}

PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "An error, as RFC 9457 `application/problem+json`.",
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {
            "type": "string",
            "format": "uri",
            "description": f"Identifies the kind of problem (`{TYPE_BASE}<slug>`)",
        },
        "title": {"type": "string", "description": "A short summary of the kind"},
        "status": {"type": "integer", "description": "The HTTP status code"},
        "detail": {"type": "string", "description": "What went wrong this time, for a person"},
        "instance": {"type": "string", "description": "The path of the request"},
        "errors": {
            "type": "array",
            "description": "On 422 from validation: each invalid field and why",
            "items": {
                "type": "object",
                "required": ["field", "message"],
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
    "examples": [
        {
            "type": f"{TYPE_BASE}not-found",
            "title": "Not found",
            "status": 404,
            "detail": "tenant 0b6f3a52-5bd4-4c3f-9a57-2f0d6c1e9a10 not found",
            "instance": "/v1/tenants/0b6f3a52-5bd4-4c3f-9a57-2f0d6c1e9a10",
        }
    ],
}

_SECONDS = {"schema": {"type": "integer", "minimum": 0}}


def _response_component(status: int) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": _DESCRIPTIONS[status],
        "content": {PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        "headers": {"X-Request-ID": {"$ref": "#/components/headers/X-Request-ID"}},
    }
    if status == 401:
        response["headers"]["WWW-Authenticate"] = {
            "description": "`Bearer`",
            "schema": {"type": "string"},
        }
    if status in (429, 503):
        response["headers"]["Retry-After"] = {
            "description": "Seconds after which the same request may succeed",
            **_SECONDS,
        }
    if status == 429:
        for name in _RATE_HEADERS:
            response["headers"][name] = {"$ref": f"#/components/headers/{name}"}
    return response


def _components() -> dict[str, Any]:
    headers: dict[str, Any] = {
        "X-Request-ID": {
            "description": "The request's id (yours if you sent a sane `X-Request-ID`): in "
            "the audit log and every log line the request caused",
            "required": True,
            "schema": {"type": "string"},
        }
    }
    for name, description in _RATE_HEADERS.items():
        schema = {"schema": {"type": "string"}} if name == "RateLimit-Policy" else _SECONDS
        headers[name] = {"description": description, **schema}
    return {
        "responses": {_COMPONENT[s]: _response_component(s) for s in _COMPONENT},
        "headers": headers,
        "parameters": {
            "X-Request-ID": {
                "name": "X-Request-ID",
                "in": "header",
                "required": False,
                "description": "Your id for this request (8-64 letters, digits or `._:-`; "
                "anything else is replaced by a new id). Echoed in the answer.",
                "schema": {"type": "string"},
            },
            "Idempotency-Key": {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "description": "Makes this POST safe to retry: the first request with a key "
                "runs, and its answer (unless 5xx) is stored for 24 h; the same key with "
                "the same request replays it (`Idempotent-Replayed: true`), with a "
                "different request it is refused (422), and while the first still runs a "
                "repeat gets 409. Keys are per credential.",
                "schema": {"type": "string", "pattern": "^[\\x21-\\x7e]{1,255}$"},
            },
        },
    }


def api_routes(app: FastAPI) -> list[RouteContext]:
    """Every API route as the app serves it (routers included with their prefixes)."""
    return [c for c in iter_route_contexts(app.routes) if isinstance(c.original_route, APIRoute)]


def _dependencies(dependant: Dependant) -> Iterator[Dependant]:
    for dependency in dependant.dependencies:
        yield dependency
        yield from _dependencies(dependency)


def _problems(route: RouteContext, method: str, operation: dict[str, Any]) -> set[int]:
    calls = [d.call for d in _dependencies(route.dependant)]
    authenticated = principal_dep in calls
    statuses = {503}
    if authenticated:
        statuses |= {401, 429}
    if any(getattr(c, "__name__", "").startswith("require_") for c in calls):
        statuses.add(403)
    if route.dependant.path_params or any(d.path_params for d in _dependencies(route.dependant)):
        statuses.add(404)
    if "requestBody" in operation:
        statuses |= {400, 413, 422}  # 400: bytes that are no text (not UTF-8) or no form
    if operation.get("parameters"):
        statuses.add(422)
    if authenticated and method == "post":
        statuses |= {409, 422}  # Idempotency-Key in use, malformed or reused
    name = route.name or ""
    statuses |= EXTRA_PROBLEMS.get(name, frozenset())
    statuses |= EXTRA_PROBLEMS.get(name.split(".")[0], frozenset())
    return statuses


def _describe(route: RouteContext, method: str, operation: dict[str, Any]) -> None:
    name = route.name or ""
    if operation.get("summary") == name.replace("_", " ").title():  # FastAPI's "Tenants.Create"
        resource, _, verb = name.rpartition(".")
        operation["summary"] = (
            f"{resource.replace('_', ' ').capitalize()}: {verb.replace('_', ' ')}"
        )
    statuses = _problems(route, method, operation)
    parameters = operation.setdefault("parameters", [])
    parameters.append({"$ref": "#/components/parameters/X-Request-ID"})
    if method == "post" and "security" in operation:
        parameters.append({"$ref": "#/components/parameters/Idempotency-Key"})
    responses = operation["responses"]
    for status in sorted(statuses):
        declared = responses.get(str(status))
        if declared is not None and PROBLEM in declared.get("content", {}):
            # Declared by the route with its own description: the shared body and headers.
            shared = _response_component(status)
            responses[str(status)] = {**shared, "description": declared["description"]}
        else:
            responses[str(status)] = {"$ref": f"#/components/responses/{_COMPONENT[status]}"}
    for status, answer in responses.items():
        if int(status) >= 400 and PROBLEM in answer.get("content", {}):  # declared by a route
            answer["content"] = {PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}}
        if "$ref" not in answer:
            answer.setdefault("headers", {})["X-Request-ID"] = {
                "$ref": "#/components/headers/X-Request-ID"
            }
        if status == "202":  # accepted work: where its operation is
            answer["headers"]["Location"] = {
                "description": "The URL of the operation doing the work (`operations.get`)",
                "required": True,
                "schema": {"type": "string", "format": "uri"},
            }


def _form_body_names(schema: dict[str, Any]) -> None:
    """FastAPI names a form body after its route ("token"); call it ``AuthTokenForm``."""
    schemas = schema["components"]["schemas"]
    for operations in schema["paths"].values():
        for operation in operations.values():
            content = operation.get("requestBody", {}).get("content", {})
            for media in content.values():
                ref = media.get("schema", {}).get("$ref", "")
                old = ref.rsplit("/", 1)[-1]
                if old and old[0].islower() and old in schemas:
                    new = "".join(p.title() for p in re.split(r"[._]", operation["operationId"]))
                    schemas[f"{new}Form"] = schemas.pop(old)
                    schemas[f"{new}Form"]["title"] = f"{new}Form"
                    media["schema"]["$ref"] = f"#/components/schemas/{new}Form"


def build(app: FastAPI) -> dict[str, Any]:
    schema = get_openapi(
        title=app.title,
        version=app.version,
        openapi_version=app.openapi_version,
        description=app.description,
        routes=app.routes,
    )
    routes = {
        (route.path_format, method.lower()): route
        for route in api_routes(app)
        if route.include_in_schema
        for method in route.methods or ()
    }
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            _describe(routes[(path, method)], method, operation)
    components = schema.setdefault("components", {})
    for name, entries in _components().items():
        components.setdefault(name, {}).update(entries)
    components["schemas"]["Problem"] = PROBLEM_SCHEMA
    # FastAPI's own 422 body, which this API never sends (errors.py answers problem+json).
    for unused in ("HTTPValidationError", "ValidationError"):
        components["schemas"].pop(unused, None)
    for name, example in EXAMPLES.items():
        components["schemas"][name]["examples"] = [example]
    _form_body_names(schema)
    return schema


def install(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def document(app: FastAPI) -> str:
    """The committed form: sorted keys, two-space indent, a newline at the end."""
    return json.dumps(app.openapi(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
