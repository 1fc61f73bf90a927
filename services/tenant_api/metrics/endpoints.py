"""GET /metrics: the Prometheus text format, for operators and metrics-only keys.

Not under /v1 (Prometheus' default path) and not public: a scraper authenticates like any
client, best with an operator-organisation API key holding only ``metrics:read``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from platform_core.metrics import CONTENT_TYPE, exposition, homeserver_targets
from tenant_api.deps import MetricsRead, SessionDep, SettingsDep
from tenant_api.metrics import latency, service

router = APIRouter(tags=["metrics"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "description": "Prometheus text exposition format 0.0.4",
            "content": {CONTENT_TYPE: {"schema": {"type": "string"}}},
        }
    },
    name="metrics.scrape",
)
async def metrics(session: SessionDep, settings: SettingsDep, _: MetricsRead) -> Response:
    """Reconcile runs, actions by kind, last run time and duration; tenants by status and
    operations by state; this API process's request latency by route."""
    snapshot = await service.snapshot(session, settings)
    return Response(exposition(snapshot) + latency.exposition(), media_type=CONTENT_TYPE)


@router.get("/metrics/homeservers", name="metrics.homeserver_targets")
async def homeserver_metrics_targets(settings: SettingsDep, _: MetricsRead) -> list[dict[str, Any]]:
    """Prometheus HTTP service discovery (``http_sd_configs``) for the tenants' Synapse metrics:
    one target group per active tenant (its homeserver's metrics listener, reachable only from
    the platform's network), labelled ``tenant`` (slug), ``tenant_id`` and ``server_name``."""
    routes = await service.published_routes(settings)
    return homeserver_targets(routes, settings.homeserver_metrics_port)
