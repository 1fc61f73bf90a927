"""What every operation body shares: loading its operation, tenant and homeserver, and
recording the steps it has done."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.orm import Session

from platform_core import lifecycle
from platform_core.db import task_session
from platform_core.errors import PermanentError
from platform_core.models import Homeserver, Operation, Tenant
from provisioner import repository, steps
from provisioner.backends.base import HomeserverTarget
from provisioner.lease import Lease

# What the runner calls: (context, operation id, the tenant's lease, held meanwhile).
Body = Callable[[steps.Context, uuid.UUID, Lease], None]


@dataclass
class Loaded:
    """An operation with its tenant and the tenant's homeserver record (None before the
    provisioning makes it)."""

    operation: Operation
    tenant: Tenant
    homeserver_or_none: Homeserver | None

    @property
    def homeserver(self) -> Homeserver:
        return _required(self.tenant.id, self.homeserver_or_none)


def load(session: Session, op_id: uuid.UUID) -> Loaded:
    op = repository.get_operation(session, op_id)
    if op is None:
        raise PermanentError(f"operation {op_id} disappeared")
    tenant = repository.get_tenant(session, op.tenant_id)
    if tenant is None:
        raise PermanentError(f"tenant {op.tenant_id} or its homeserver record disappeared")
    return Loaded(op, tenant, repository.get_homeserver(session, tenant.id))


def tenant_and_homeserver(session: Session, tenant_id: uuid.UUID) -> tuple[Tenant, Homeserver]:
    """Tenant and homeserver again, in a later transaction of the same body."""
    tenant = repository.get_tenant(session, tenant_id)
    if tenant is None:
        raise PermanentError(f"tenant {tenant_id} or its homeserver record disappeared")
    return tenant, _required(tenant_id, repository.get_homeserver(session, tenant_id))


def _required(tenant_id: uuid.UUID, hs: Homeserver | None) -> Homeserver:
    if hs is None:
        raise PermanentError(f"tenant {tenant_id} or its homeserver record disappeared")
    return hs


def target(
    session: Session, ctx: steps.Context, tenant: Tenant, hs: Homeserver
) -> HomeserverTarget:
    plan = repository.get_plan(session, tenant.plan_id)
    return steps.target_for(ctx, tenant, plan, hs)


def record_step(op_id: uuid.UUID, step: str) -> None:
    with task_session() as session:
        op = repository.get_operation(session, op_id)
        if op is not None:
            lifecycle.record_step(op, step)


def serve(
    ctx: steps.Context,
    op_id: uuid.UUID,
    homeserver: HomeserverTarget,
    mark: Callable[[Tenant], None],
) -> None:
    """The last step of provision and resume: the tenant takes its transition (``mark``), its
    homeserver's upstream is recorded and its route published, so the proxy serves it."""
    with task_session() as session:
        tenant, hs = tenant_and_homeserver(session, uuid.UUID(homeserver.tenant_id))
        mark(tenant)
        hs.asleep_since = None  # it runs: provisioned, or resumed from a sleeping suspension
        hs.upstream_url = ctx.backend.upstream_url(homeserver)
        steps.publish(ctx, steps.route_for(ctx, tenant, hs, homeserver))
    record_step(op_id, "route-published")
