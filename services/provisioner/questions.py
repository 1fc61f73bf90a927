"""The worker's answers to what the API asks it (``platform_core.worker_requests``): a
homeserver's recent log lines, and whether each active tenant's homeserver answers. Only a
worker holds the backend, so only it can look."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from platform_core.db import task_session
from platform_core.models import TenantStatus
from platform_core.worker_requests import answer, redact
from provisioner import repository, steps

MAX_LOG_LINES = 1000
_PROBES_AT_ONCE = 16


def homeserver_logs(ctx: steps.Context, reply_key: str, tenant_id: str, lines: int) -> None:
    """Answer with the homeserver's last ``lines`` log lines, credentials redacted."""
    wanted = max(1, min(int(lines), MAX_LOG_LINES))
    found = [redact(line) for line in ctx.backend.log_lines(str(uuid.UUID(tenant_id)), wanted)]
    answer(ctx.redis, ctx.keys, reply_key, {"backend": ctx.backend.name, "lines": found})


def homeserver_health(ctx: steps.Context, reply_key: str) -> None:
    """Answer with each active tenant's homeserver: up when its process (or pod) runs and its
    ``/health`` answers 200 within 2 s; down with the reason otherwise."""
    with task_session() as session:
        targets = []
        for tenant in repository.tenants_with_status(session, [TenantStatus.ACTIVE]):
            hs = repository.get_homeserver(session, tenant.id)
            targets.append((str(tenant.id), tenant.slug, hs.upstream_url if hs else None))
    with ThreadPoolExecutor(max_workers=_PROBES_AT_ONCE) as pool:
        found = list(pool.map(lambda target: _probe(ctx, *target), targets))
    answer(ctx.redis, ctx.keys, reply_key, {"backend": ctx.backend.name, "homeservers": found})


def _probe(ctx: steps.Context, tenant_id: str, slug: str, upstream: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {"tenant_id": tenant_id, "slug": slug, "up": False}
    if upstream is None:
        return {**out, "detail": "no homeserver recorded"}
    if not ctx.backend.is_running(tenant_id):
        return {**out, "detail": "not running (reconcile restarts it)"}
    try:
        response = steps.health_client().get(upstream + "/health")
    except httpx.HTTPError as exc:
        return {**out, "detail": f"/health unreachable: {type(exc).__name__}"}
    if response.status_code != 200:
        return {**out, "detail": f"/health answered {response.status_code}"}
    return {**out, "up": True, "detail": "running, /health answers 200"}
