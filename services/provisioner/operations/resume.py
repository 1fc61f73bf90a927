"""Resume: the homeserver runs again, then the proxy serves the tenant's clients again."""

from __future__ import annotations

import uuid

from platform_core import lifecycle
from platform_core.db import task_session
from platform_core.models import HomeserverDesiredState
from provisioner import steps
from provisioner.lease import Lease
from provisioner.operations.common import load, record_step, serve, target


def resume(ctx: steps.Context, op_id: uuid.UUID, lease: Lease) -> None:
    with task_session() as session:
        loaded = load(session, op_id)
        tenant, hs = loaded.tenant, loaded.homeserver
        lifecycle.tenant_after(tenant, lifecycle.TenantTransition.RESUME)  # or refuse now
        hs.desired_state = HomeserverDesiredState.RUNNING
        steps.ensure_port_usable(session, ctx, hs)
        homeserver = target(session, ctx, tenant, hs)
    steps.ensure_running(ctx, homeserver)
    record_step(op_id, "homeserver-running")
    serve(ctx, op_id, homeserver, lifecycle.resume_tenant)
