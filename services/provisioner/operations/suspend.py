"""Suspend: the proxy refuses the tenant's clients first (a clear error at once), then the
homeserver stops; every byte of data is kept."""

from __future__ import annotations

import uuid

from platform_core import lifecycle
from platform_core.db import task_session
from platform_core.models import HomeserverDesiredState
from provisioner import steps
from provisioner.lease import Lease
from provisioner.operations.common import load, record_step, target


def suspend(ctx: steps.Context, op_id: uuid.UUID, lease: Lease) -> None:
    with task_session() as session:
        loaded = load(session, op_id)
        tenant, hs = loaded.tenant, loaded.homeserver
        lifecycle.suspend_tenant(tenant)
        hs.desired_state = HomeserverDesiredState.STOPPED
        hs.asleep_since = None  # stopped for its suspension now, not asleep
        route = steps.route_for(ctx, tenant, hs, target(session, ctx, tenant, hs))
        steps.publish(ctx, route)
        tenant_id = str(tenant.id)
    record_step(op_id, "route-suspended")
    ctx.backend.stop(tenant_id)
    record_step(op_id, "homeserver-stopped")
