"""GET /metrics: the Prometheus text format, for operators and metrics-only keys.

Not under /v1 (Prometheus' default path) and not public: a scraper authenticates like any
client, best with an operator-organisation API key holding only ``metrics:read``.
"""

from __future__ import annotations

from fastapi import APIRouter, Response

from platform_core.metrics import CONTENT_TYPE, exposition
from tenant_api.deps import MetricsRead, SessionDep, SettingsDep
from tenant_api.metrics import service

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
)
async def metrics(session: SessionDep, settings: SettingsDep, _: MetricsRead) -> Response:
    """Reconcile runs, actions by kind, last run time and duration; tenants by status and
    operations by state."""
    snapshot = await service.snapshot(session, settings)
    return Response(exposition(snapshot), media_type=CONTENT_TYPE)
