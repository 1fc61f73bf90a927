"""The tenant API application (FastAPI): /v1 REST, /healthz, OpenAPI at /docs, the admin
portal at /portal."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from platform_core.db import async_engine
from platform_core.migrate import assert_migrated
from platform_core.redis import close_async_clients
from platform_core.settings import get_settings
from tenant_api import access_log, errors, openapi, portal
from tenant_api.accounts.endpoints import router as accounts_router
from tenant_api.api_keys.endpoints import router as api_keys_router
from tenant_api.audit.endpoints import router as audit_router
from tenant_api.contexts.appservice import router as appservice_router
from tenant_api.contexts.endpoints import router as contexts_router
from tenant_api.exports.endpoints import router as exports_router
from tenant_api.invoices.endpoints import router as invoices_router
from tenant_api.kit.repository import ping_database
from tenant_api.metrics.endpoints import router as metrics_router
from tenant_api.metrics.latency import LatencyMiddleware
from tenant_api.middleware import (
    BodyLimitMiddleware,
    IdempotencyMiddleware,
    RequestIdMiddleware,
)
from tenant_api.operations.endpoints import router as operations_router
from tenant_api.plans.endpoints import router as plans_router
from tenant_api.rate_limit import RateLimitMiddleware
from tenant_api.readiness.endpoints import router as readiness_router
from tenant_api.registration_tokens.endpoints import router as registration_tokens_router
from tenant_api.status.endpoints import router as status_router
from tenant_api.tenants.endpoints import router as tenants_router
from tenant_api.usage.endpoints import router as usage_router
from tenant_api.users.endpoints import router as users_router
from tenant_api.webhooks.endpoints import router as webhooks_router
from tenant_api.widget.endpoints import router as widget_router


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    settings = get_settings()
    settings.require_secret_key()
    if not settings.operator_token:
        raise RuntimeError("C3_OPERATOR_TOKEN is not set: every write would be refused")
    assert_migrated()
    yield
    await close_async_clients()
    await async_engine().dispose()


def create_app() -> FastAPI:
    app = FastAPI(
        title="C3 tenant API",
        version="1",
        description="Provision and manage tenants (one Matrix homeserver each), their users, "
        "their usage, plans and invoices. Authenticate with `Authorization: Bearer <token>`: an access token from `POST /v1/auth/token`, an API key (`c3k_…`), or the bootstrap operator token.",
        lifespan=lifespan,
        # Operation ids are the routes' names ("tenants.create"): stable, readable, and what
        # generated clients call their methods.
        generate_unique_id_function=lambda route: route.name,
    )
    errors.install(app)
    app.include_router(tenants_router)
    app.include_router(operations_router)
    app.include_router(users_router)
    app.include_router(registration_tokens_router)
    access_log.install()
    app.include_router(usage_router)
    app.include_router(plans_router)
    app.include_router(invoices_router)
    app.include_router(accounts_router)
    app.include_router(api_keys_router)
    app.include_router(audit_router)
    app.include_router(metrics_router)
    app.include_router(exports_router)
    portal.install(app)
    app.include_router(widget_router)
    app.include_router(contexts_router)
    app.include_router(appservice_router)
    app.include_router(readiness_router)
    app.include_router(status_router)
    app.include_router(webhooks_router)
    # Outermost last: the request id exists before anything is refused, replayed or
    # recorded; an oversized body is refused before idempotency (or a route) reads it; a
    # request over its rate limit is refused before its Idempotency-Key is claimed.
    app.add_middleware(IdempotencyMiddleware)
    app.add_middleware(RateLimitMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_bytes=get_settings().api_max_body_bytes)
    app.add_middleware(RequestIdMiddleware)
    # Outermost: its time includes every other middleware's.
    app.add_middleware(LatencyMiddleware)

    @app.get("/healthz", tags=["health"], name="health.get")
    async def healthz() -> dict[str, str]:
        await ping_database()
        return {"status": "ok"}

    openapi.install(app)
    return app
