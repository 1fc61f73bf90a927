"""Tenant rules: creation, listing, deletion. Never commits — the request boundary does."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.exc import IntegrityError

from platform_core import lifecycle
from platform_core.auth import Principal
from platform_core.celery import TaskNames
from platform_core.crypto import SecretBox
from platform_core.errors import Conflict, Forbidden, InvalidRequest
from platform_core.homeserver_settings import RegistrationPolicy, registration_policy
from platform_core.models import (
    Operation,
    OperationKind,
    Plan,
    Tenant,
    TenantPlanChange,
    TenantStatus,
    utcnow,
)
from platform_core.outbound import IPNetwork
from platform_core.settings import Settings
from tenant_api.kit import tasks
from tenant_api.kit.audit import AuditContext
from tenant_api.operations.repository import OperationRepository
from tenant_api.tenants import homeserver_settings
from tenant_api.tenants.repository import TenantRepository
from tenant_api.tenants.schemas import (
    HomeserverStateOut,
    TenantCreate,
    TenantOut,
    TenantPatch,
)


def server_name_for(slug: str, settings: Settings) -> str:
    return f"{slug}.{settings.base_domain}"


def homeserver_state(tenant: Tenant, asleep_since: datetime | None) -> HomeserverStateOut:
    """``asleep_since``: the homeserver row's (None: awake, or not running for its status)."""
    if tenant.status in (TenantStatus.PENDING, TenantStatus.PROVISIONING):
        return HomeserverStateOut(state="starting")
    if tenant.status is not TenantStatus.ACTIVE:
        return HomeserverStateOut(state="stopped")
    if asleep_since is not None:
        return HomeserverStateOut(state="asleep", asleep_since=asleep_since)
    return HomeserverStateOut(state="awake")


def to_out(
    tenant: Tenant, plan_code: str, settings: Settings, *, asleep_since: datetime | None = None
) -> TenantOut:
    public = settings.effective_proxy_public_url
    return TenantOut(
        id=tenant.id,
        slug=tenant.slug,
        display_name=tenant.display_name,
        server_name=tenant.server_name,
        status=tenant.status,
        plan=plan_code,
        homeserver_url=settings.homeserver_url(tenant.server_name),
        homeserver_path_url=f"{public}/t/{tenant.slug}",
        settings=homeserver_settings.settings_out(tenant),
        homeserver=homeserver_state(tenant, asleep_since),
        created_at=tenant.created_at,
        updated_at=tenant.updated_at,
        deleted_at=tenant.deleted_at,
    )


async def create_tenant(
    tenants: TenantRepository,
    operations: OperationRepository,
    audit: AuditContext,
    body: TenantCreate,
    settings: Settings,
) -> tuple[Tenant, str, Operation]:
    plan = await tenants.get_plan(body.plan)
    if plan is None:
        raise InvalidRequest(
            f"plan: no plan with code '{body.plan}'"
            if body.plan
            else "no default plan exists; run `c3 migrate`"
        )
    if await tenants.get_by_slug(body.slug) is not None:
        raise Conflict(f"a tenant with slug '{body.slug}' already exists")
    server_name = body.server_name or server_name_for(body.slug, settings)
    base = settings.base_domain
    if (
        body.server_name
        and body.server_name.endswith("." + base)
        and (body.server_name != server_name_for(body.slug, settings))
    ):
        raise InvalidRequest(
            f"server_name: names under {base} belong to their slug; use slug instead"
        )
    if await tenants.get_by_server_name(server_name) is not None:
        raise Conflict(f"server name '{server_name}' is already taken")
    now = utcnow()
    tenant = lifecycle.new_tenant(
        slug=body.slug,
        display_name=body.display_name,
        server_name=server_name,
        plan_id=plan.id,
        created_at=now,
        updated_at=now,
    )
    try:
        await tenants.add(tenant)
    except IntegrityError as exc:  # a concurrent request took the slug first
        raise Conflict(f"a tenant with slug '{body.slug}' already exists") from exc
    await tenants.add_plan_change(
        TenantPlanChange(tenant_id=tenant.id, plan_id=plan.id, effective_at=now)
    )
    operation = await operations.start(tenant.id, OperationKind.PROVISION)
    audit.record(
        "tenant.create",
        "tenant",
        tenant.id,
        tenant_id=tenant.id,
        details={"slug": tenant.slug, "plan": plan.code},
    )
    tasks.enqueue(operations.session, TaskNames.PROVISION_TENANT, operation.id)
    return tenant, plan.code, operation


async def update_tenant(
    tenants: TenantRepository,
    operations: OperationRepository,
    audit: AuditContext,
    tenant: Tenant,
    body: TenantPatch,
    box: SecretBox,
    *,
    allowed_networks: Sequence[IPNetwork] = (),
) -> tuple[str, Operation | None, bool]:
    """Apply a PATCH; returns the plan code afterwards, the reconfigure operation that
    brings a new plan's limits or new homeserver settings to the homeserver (None when the
    homeserver's config does not change, or when there is no running homeserver yet: the
    provisioning renders the settings as they are then) and whether that operation is new
    (enqueued here, sent after commit).

    Changes coalesce: while a reconfigure of the tenant waits to start, later changes join it
    (the worker renders the settings as they are when it starts), so a burst of changes
    restarts the homeserver at most twice — once for the reconfigure already running, once
    for the one that follows it."""
    if body.plan is not None and not tenants.principal.platform_wide:
        raise InvalidRequest("plan: only operators change a tenant's plan")
    if tenant.status in (TenantStatus.DELETING, TenantStatus.DELETED):
        raise Conflict(f"tenant is {tenant.status.value}")
    if body.display_name is not None:
        tenant.display_name = body.display_name
    if body.oidc is not None:
        await homeserver_settings.check_oidc_issuer(body.oidc.issuer, allowed_networks)
    plan, plan_changed = await _plan_after(tenants, tenant, body.plan)
    _check_open_registration(tenants.principal, tenant, body, plan)
    settings_changed = homeserver_settings.apply_patch(tenant, body, box, plan.limits or {})
    audit.record(
        "tenant.update", "tenant", tenant.id, tenant_id=tenant.id, details=body.audit_details()
    )
    if not (plan_changed or settings_changed) or tenant.status not in (
        TenantStatus.ACTIVE,
        TenantStatus.SUSPENDED,
    ):
        return plan.code, None, False
    pending = await operations.claim_pending(tenant.id, OperationKind.RECONFIGURE)
    if pending is not None:
        return plan.code, pending, False
    operation = await operations.start(tenant.id, OperationKind.RECONFIGURE)
    tasks.enqueue(operations.session, TaskNames.RECONFIGURE_TENANT, operation.id)
    return plan.code, operation, True


def _check_open_registration(
    principal: Principal, tenant: Tenant, body: TenantPatch, plan: Plan
) -> None:
    """Opening sign-up to anyone without verification is the operator's call: a tenant admin
    may only do it on a plan that allows it (asking again for what is already set is fine)."""
    if (
        body.registration is not RegistrationPolicy.OPEN
        or principal.platform_wide
        or plan.allow_open_registration
        or registration_policy(tenant.homeserver_settings or {}) is RegistrationPolicy.OPEN
    ):
        return
    raise Forbidden(
        f"registration: 'open' lets anyone sign up without any verification, and plan "
        f"'{plan.code}' does not allow tenant admins to choose it; use 'token' (sign-up with a "
        "registration token) or ask the platform operator for a plan that allows open "
        "registration"
    )


async def _plan_after(
    tenants: TenantRepository, tenant: Tenant, code: str | None
) -> tuple[Plan, bool]:
    """Move the tenant to plan ``code`` (None: stay); returns its plan and whether it moved."""
    current = (await tenants.plan_codes({tenant.plan_id}))[tenant.plan_id]
    old_plan = await tenants.get_plan(current)
    assert old_plan is not None  # tenants.plan_id is a foreign key
    if code is None or code == current:
        return old_plan, False
    new_plan = await tenants.get_plan(code)
    if new_plan is None:
        raise InvalidRequest(f"plan: no plan with code '{code}'")
    if old_plan.currency != new_plan.currency:
        raise InvalidRequest(
            f"plan: '{new_plan.code}' bills in {new_plan.currency}, this tenant in "
            f"{old_plan.currency}; one invoice cannot mix currencies"
        )
    tenant.plan_id = new_plan.id
    await tenants.add_plan_change(
        TenantPlanChange(tenant_id=tenant.id, plan_id=new_plan.id, effective_at=utcnow())
    )
    return new_plan, True


@dataclass(frozen=True)
class _ServingChange:
    """Suspend or resume: which state the tenant must be in, what the refusal says, the task
    that carries it out and the audit action."""

    kind: OperationKind
    requires: TenantStatus
    refusal: str
    task: str
    action: str


SERVING_CHANGES = {
    OperationKind.SUSPEND: _ServingChange(
        OperationKind.SUSPEND,
        TenantStatus.ACTIVE,
        "only an active tenant can be suspended",
        TaskNames.SUSPEND_TENANT,
        "tenant.suspend",
    ),
    OperationKind.RESUME: _ServingChange(
        OperationKind.RESUME,
        TenantStatus.SUSPENDED,
        "only a suspended tenant can be resumed",
        TaskNames.RESUME_TENANT,
        "tenant.resume",
    ),
}


async def change_serving(
    tenant: Tenant, operations: OperationRepository, audit: AuditContext, kind: OperationKind
) -> Operation:
    """Suspend (stop serving, e.g. unpaid: the proxy refuses the tenant's clients with a clear
    Matrix error, the homeserver stops, every byte of data is kept) or resume a tenant. Asking
    again while one is under way returns that one."""
    change = SERVING_CHANGES[kind]
    audit.record(change.action, "tenant", tenant.id, tenant_id=tenant.id)
    existing = await operations.unfinished_for(tenant.id, kind)
    if existing is not None:
        return _enqueued(operations, change.task, existing)
    if tenant.status is not change.requires:
        raise Conflict(f"{change.refusal} (this one is {tenant.status.value})")
    operation = await operations.start(tenant.id, kind)
    return _enqueued(operations, change.task, operation)


async def delete_tenant(
    tenant: Tenant, operations: OperationRepository, audit: AuditContext, *, purge: bool = False
) -> Operation:
    if tenant.status is TenantStatus.DELETED:
        raise Conflict("tenant is already deleted")
    audit.record(
        "tenant.delete", "tenant", tenant.id, tenant_id=tenant.id, details={"purge": purge}
    )
    existing = await operations.unfinished_for(tenant.id, OperationKind.DEPROVISION)
    if existing is not None:  # DELETE is idempotent: the deletion under way
        return _enqueued(operations, TaskNames.DEPROVISION_TENANT, existing)
    lifecycle.begin_tenant_deletion(tenant)
    operation = await operations.start(tenant.id, OperationKind.DEPROVISION, {"purge": purge})
    return _enqueued(operations, TaskNames.DEPROVISION_TENANT, operation)


def _enqueued(operations: OperationRepository, task: str, operation: Operation) -> Operation:
    """Send ``task`` for ``operation`` after commit — an unfinished one found again too (asking
    twice sends it again; its steps are idempotent)."""
    tasks.enqueue(operations.session, task, operation.id)
    return operation
