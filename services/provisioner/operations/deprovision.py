"""Deprovision (DELETE): route withdrawn, homeserver stopped, database dumped and dropped,
data archived (or purged) — then the tenant is deleted. Dumps and archives go to the object
store (platform_core.object_store) under ``archive/<tenant id>-…``."""

from __future__ import annotations

import uuid

from platform_core import lifecycle
from platform_core.db import task_session
from platform_core.models import HomeserverDesiredState
from provisioner import repository, steps, tenant_databases
from provisioner.lease import Lease
from provisioner.operations.common import load, record_step


def deprovision(ctx: steps.Context, op_id: uuid.UUID, lease: Lease) -> None:
    with task_session() as session:
        loaded = load(session, op_id)
        tenant, hs = loaded.tenant, loaded.homeserver_or_none
        lifecycle.begin_tenant_deletion(tenant)
        if hs is not None:
            hs.desired_state = HomeserverDesiredState.STOPPED
        steps.withdraw(ctx, tenant)
        tenant_id = str(tenant.id)
        database_name = hs.database_name if hs is not None else None
        purge = bool((loaded.operation.params or {}).get("purge"))
    record_step(op_id, "route-withdrawn")

    # A backend that reads media through the running homeserver archives it first (not
    # when the archive would be purged right after).
    early = None if purge else ctx.backend.archive_running(tenant_id, ctx.store)
    if early is not None:
        record_step(op_id, f"data-archived-before-stop:{early}")
    ctx.backend.stop(tenant_id)
    record_step(op_id, "homeserver-stopped")

    if database_name is not None:
        # In the object store beside the data archive: retention and ?purge=true remove it too.
        dump = tenant_databases.retire(
            ctx.settings, database_name, tenant_id, ctx.store, keep=not purge
        )
        if dump is not None:
            record_step(op_id, f"database-archived:{dump}")
        record_step(op_id, "database-dropped")

    archived = ctx.backend.archive(tenant_id, ctx.store)
    record_step(op_id, f"data-archived:{archived}" if archived else "data-archived")
    if purge:
        ctx.backend.purge_archives(tenant_id, ctx.store)
        record_step(op_id, "data-purged")

    with task_session() as session:
        deleted = repository.get_tenant(session, uuid.UUID(tenant_id))
        assert deleted is not None
        lifecycle.tenant_deleted(deleted)
