"""Plan rules: creation and changes. Never commits — the request boundary does."""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError

from platform_core.errors import Conflict, NotFound
from platform_core.models import Plan
from tenant_api.kit.audit import AuditContext
from tenant_api.plans.repository import PlanRepository
from tenant_api.plans.schemas import LimitsIn, PlanCreate, PlanOut, PlanPatch, PriceIn


def _prices(prices: dict[str, PriceIn]) -> dict[str, object]:
    return {meter: price.model_dump(exclude_defaults=False) for meter, price in prices.items()}


def _limits(limits: LimitsIn) -> dict[str, object]:
    return limits.model_dump(exclude_none=True)


def to_out(plan: Plan) -> PlanOut:
    return PlanOut(
        id=plan.id,
        code=plan.code,
        name=plan.name,
        currency=plan.currency,
        base_fee=plan.base_fee_minor,
        prices=plan.prices or {},
        limits=plan.limits or {},
        allow_open_registration=plan.allow_open_registration,
        is_default=plan.is_default,
        created_at=plan.created_at,
        updated_at=plan.updated_at,
    )


async def create_plan(plans: PlanRepository, audit: AuditContext, body: PlanCreate) -> Plan:
    if await plans.get_by_code(body.code) is not None:
        raise Conflict(f"a plan with code '{body.code}' already exists")
    plan = Plan(
        code=body.code,
        name=body.name,
        currency=body.currency,
        base_fee_minor=body.base_fee,
        prices=_prices(body.prices),
        limits=_limits(body.limits),
        allow_open_registration=body.allow_open_registration,
        is_default=False,
    )
    try:
        await plans.add(plan)
    except IntegrityError as exc:  # a concurrent request took the code first
        raise Conflict(f"a plan with code '{body.code}' already exists") from exc
    audit.record("plan.create", "plan", plan.code)
    return plan


async def get_plan(plans: PlanRepository, code: str) -> Plan:
    plan = await plans.get_by_code(code)
    if plan is None:
        raise NotFound(f"plan '{code}' not found")
    return plan


def update_plan(plan: Plan, audit: AuditContext, body: PlanPatch) -> Plan:
    """Price changes apply to every invoice not yet finalized, including this month's draft;
    finalized invoices keep the prices they were rated with."""
    if body.name is not None:
        plan.name = body.name
    if body.base_fee is not None:
        plan.base_fee_minor = body.base_fee
    if body.prices is not None:
        plan.prices = _prices(body.prices)
    if body.limits is not None:
        plan.limits = _limits(body.limits)
    if body.allow_open_registration is not None:
        plan.allow_open_registration = body.allow_open_registration
    audit.record(
        "plan.update", "plan", plan.code, details=body.model_dump(exclude_none=True, mode="json")
    )
    return plan
