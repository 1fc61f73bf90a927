"""Reconfigure: render the homeserver's config from the tenant's current plan and settings."""

from __future__ import annotations

import uuid

from platform_core.db import task_session
from platform_core.errors import PermanentError
from platform_core.models import TenantStatus
from provisioner import steps
from provisioner.lease import Lease
from provisioner.operations.common import load, record_step, target, tenant_and_homeserver


def reconfigure(ctx: steps.Context, op_id: uuid.UUID, lease: Lease) -> None:
    """Restart the homeserver only if its config changed (clients ride the restart out: the
    proxy answers 502 + Retry-After and Matrix clients retry). A suspended tenant's new config
    applies when it resumes, a sleeping one's when it wakes."""
    with task_session() as session:
        loaded = load(session, op_id)
        tenant, hs = loaded.tenant, loaded.homeserver
        if tenant.status is not TenantStatus.ACTIVE:
            if tenant.status is TenantStatus.SUSPENDED:
                return
            raise PermanentError(f"a {tenant.status.value} tenant cannot be reconfigured")
        homeserver = target(session, ctx, tenant, hs)
        asleep = hs.asleep_since is not None
    if asleep:
        # Not woken for it: the new config is rendered now and read when it wakes.
        ctx.backend.render(homeserver)
        record_step(op_id, "config-rendered-asleep")
    else:
        steps.ensure_running(ctx, homeserver)
        record_step(op_id, "config-applied")
    with task_session() as session:
        tenant, hs = tenant_and_homeserver(session, uuid.UUID(homeserver.tenant_id))
        steps.publish(ctx, steps.route_for(ctx, tenant, hs, homeserver))
    record_step(op_id, "route-published")
