"""The admin portal at /portal: server-rendered pages for tenant admins and operators, on the
same services, principals and authorization as the REST API (see docs/portal.md)."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles


def install(app: FastAPI) -> None:
    """Mount the portal's pages and its own stylesheet and script (no CDN, no build step)."""
    from tenant_api.portal import views_auth, views_operator, views_tenant
    from tenant_api.portal.rendering import STATIC

    app.include_router(views_auth.router, include_in_schema=False)
    app.include_router(views_operator.router, include_in_schema=False)
    app.include_router(views_tenant.router, include_in_schema=False)
    app.mount("/portal/static", StaticFiles(directory=STATIC), name="portal-static")
