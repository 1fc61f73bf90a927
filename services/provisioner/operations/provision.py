"""Provision: homeserver record, database, a running healthy homeserver, its platform admin,
a published route — then the tenant is active."""

from __future__ import annotations

import uuid

from platform_core import lifecycle
from platform_core.db import task_session
from provisioner import repository, steps, tenant_databases
from provisioner.lease import Lease
from provisioner.operations.common import load, record_step, serve, tenant_and_homeserver


def provision(ctx: steps.Context, op_id: uuid.UUID, lease: Lease) -> None:
    with task_session() as session:
        tenant = load(session, op_id).tenant
        lifecycle.tenant_provisioning(tenant)
        hs = steps.ensure_homeserver_record(session, ctx, tenant)
        steps.ensure_port_usable(session, ctx, hs)
        plan = repository.get_plan(session, tenant.plan_id)
        target = steps.target_for(ctx, tenant, plan, hs)
        database_name = hs.database_name
    record_step(op_id, "homeserver-record")

    if database_name is not None:
        tenant_databases.ensure_ready(ctx.settings, database_name, target.secrets)
        record_step(op_id, "database-ready")

    steps.ensure_running(ctx, target)
    record_step(op_id, "homeserver-running")
    lease.renew()

    with task_session() as session:
        tenant, hs = tenant_and_homeserver(session, uuid.UUID(target.tenant_id))
        steps.ensure_admin(ctx, tenant, hs, target)
    record_step(op_id, "admin-registered")

    serve(ctx, op_id, target, lifecycle.tenant_provisioned)
