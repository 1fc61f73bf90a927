"""Every API call the SDK makes, once, as data (``Call``): the sync and the async client run
the same ones."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from c3.sdk._core import Call, clean
from c3.sdk.models import (
    ApiKey,
    ApiKeyCreated,
    Context,
    HomeserverLogs,
    Operation,
    Plan,
    PlatformStatus,
    Tenant,
    TenantAccepted,
    Usage,
)

M = TypeVar("M")
Id = uuid.UUID | str


@dataclass(frozen=True)
class Page(Generic[M]):
    """One page of a list; ``next_cursor`` is None on the last."""

    items: list[M]
    next_cursor: str | None


def _page(model: type[M]) -> Any:
    def parse(body: dict[str, Any]) -> Page[M]:
        items = [model.model_validate(item) for item in body["items"]]  # type: ignore[attr-defined]
        return Page(items, body.get("next_cursor"))

    return parse


def _items(model: type[M]) -> Any:
    return lambda body: [model.model_validate(item) for item in body["items"]]  # type: ignore[attr-defined]


# Tenants ------------------------------------------------------------------------------


def tenants_page(limit: int, cursor: str | None) -> Call[Page[Tenant]]:
    return Call("GET", "/v1/tenants", _page(Tenant), clean({"limit": limit, "cursor": cursor}))


def tenants_create(
    slug: str,
    display_name: str,
    plan: str | None,
    server_name: str | None,
    idempotency_key: str | None,
) -> Call[TenantAccepted]:
    body = clean({"slug": slug, "display_name": display_name, "plan": plan})
    if server_name is not None:
        body["server_name"] = server_name
    return Call(
        "POST",
        "/v1/tenants",
        TenantAccepted.model_validate,
        json=body,
        idempotency_key=idempotency_key,
    )


def tenants_get(tenant_id: Id) -> Call[Tenant]:
    return Call("GET", f"/v1/tenants/{tenant_id}", Tenant.model_validate)


def tenants_update(tenant_id: Id, changes: dict[str, Any]) -> Call[Tenant]:
    return Call("PATCH", f"/v1/tenants/{tenant_id}", Tenant.model_validate, json=changes)


def tenants_change(tenant_id: Id, action: str, idempotency_key: str | None) -> Call[TenantAccepted]:
    return Call(
        "POST",
        f"/v1/tenants/{tenant_id}/{action}",
        TenantAccepted.model_validate,
        idempotency_key=idempotency_key,
    )


def tenants_delete(tenant_id: Id, purge: bool) -> Call[TenantAccepted]:
    params = {"purge": "true"} if purge else None
    return Call("DELETE", f"/v1/tenants/{tenant_id}", TenantAccepted.model_validate, params)


def tenants_logs(tenant_id: Id, lines: int) -> Call[HomeserverLogs]:
    return Call(
        "GET", f"/v1/tenants/{tenant_id}/logs", HomeserverLogs.model_validate, {"lines": lines}
    )


def usage_get(
    tenant_id: Id,
    start: datetime | None,
    end: datetime | None,
    granularity: str | None,
) -> Call[Usage]:
    params = clean(
        {
            "from": start.isoformat() if start else None,
            "to": end.isoformat() if end else None,
            "granularity": granularity,
        }
    )
    return Call("GET", f"/v1/tenants/{tenant_id}/usage", Usage.model_validate, params)


# Operations ---------------------------------------------------------------------------


def operations_get(operation_id: Id) -> Call[Operation]:
    return Call("GET", f"/v1/operations/{operation_id}", Operation.model_validate)


def operations_retry(operation_id: Id, idempotency_key: str | None) -> Call[Operation]:
    return Call(
        "POST",
        f"/v1/operations/{operation_id}/retry",
        Operation.model_validate,
        idempotency_key=idempotency_key,
    )


# API keys -----------------------------------------------------------------------------


def keys_create(
    name: str, scopes: list[str], tenant_id: Id | None, idempotency_key: str | None
) -> Call[ApiKeyCreated]:
    body: dict[str, Any] = {"name": name, "scopes": list(scopes)}
    if tenant_id is not None:
        body["tenant_id"] = str(tenant_id)
    return Call(
        "POST",
        "/v1/api-keys",
        ApiKeyCreated.model_validate,
        json=body,
        idempotency_key=idempotency_key,
    )


def keys_list() -> Call[list[ApiKey]]:
    return Call("GET", "/v1/api-keys", _items(ApiKey))


def keys_revoke(key_id: str) -> Call[ApiKey]:
    return Call("DELETE", f"/v1/api-keys/{key_id}", ApiKey.model_validate)


# Plans --------------------------------------------------------------------------------


def plans_list() -> Call[list[Plan]]:
    return Call("GET", "/v1/plans", _items(Plan))


def plans_get(code: str) -> Call[Plan]:
    return Call("GET", f"/v1/plans/{code}", Plan.model_validate)


def plans_create(body: dict[str, Any], idempotency_key: str | None) -> Call[Plan]:
    return Call(
        "POST", "/v1/plans", Plan.model_validate, json=body, idempotency_key=idempotency_key
    )


def plans_update(code: str, changes: dict[str, Any]) -> Call[Plan]:
    return Call("PATCH", f"/v1/plans/{code}", Plan.model_validate, json=changes)


# Contexts -----------------------------------------------------------------------------


def contexts_page(tenant_id: Id, limit: int, cursor: str | None) -> Call[Page[Context]]:
    return Call(
        "GET",
        f"/v1/tenants/{tenant_id}/contexts",
        _page(Context),
        clean({"limit": limit, "cursor": cursor}),
    )


def contexts_get(tenant_id: Id, ref: str) -> Call[Context]:
    return Call("GET", f"/v1/tenants/{tenant_id}/contexts/{ref}", Context.model_validate)


def contexts_put(tenant_id: Id, ref: str, body: dict[str, Any]) -> Call[Context]:
    return Call("PUT", f"/v1/tenants/{tenant_id}/contexts/{ref}", Context.model_validate, json=body)


def contexts_close(tenant_id: Id, ref: str, idempotency_key: str | None) -> Call[Context]:
    return Call(
        "POST",
        f"/v1/tenants/{tenant_id}/contexts/{ref}/close",
        Context.model_validate,
        idempotency_key=idempotency_key,
    )


# Platform -----------------------------------------------------------------------------


def status_get() -> Call[PlatformStatus]:
    return Call("GET", "/v1/status", PlatformStatus.model_validate)
