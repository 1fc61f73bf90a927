"""/v1/plans: operator-managed prices and limits."""

from __future__ import annotations

from fastapi import APIRouter, status

from tenant_api.deps import AuditDep, Authenticated, PlansWrite, SessionDep
from tenant_api.plans import service
from tenant_api.plans.repository import PlanRepository
from tenant_api.plans.schemas import PlanCreate, PlanList, PlanOut, PlanPatch

router = APIRouter(prefix="/v1/plans", tags=["plans"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=PlanOut, name="plans.create")
async def create_plan(
    body: PlanCreate, session: SessionDep, principal: PlansWrite, audit: AuditDep
) -> PlanOut:
    plan = await service.create_plan(PlanRepository(session), audit, body)
    return service.to_out(plan)


@router.get("", response_model=PlanList, name="plans.list")
async def list_plans(session: SessionDep, principal: Authenticated) -> PlanList:
    return PlanList(items=[service.to_out(p) for p in await PlanRepository(session).list()])


@router.get("/{code}", response_model=PlanOut, name="plans.get")
async def get_plan(code: str, session: SessionDep, principal: Authenticated) -> PlanOut:
    return service.to_out(await service.get_plan(PlanRepository(session), code))


@router.patch("/{code}", response_model=PlanOut, name="plans.update")
async def update_plan(
    code: str, body: PlanPatch, session: SessionDep, principal: PlansWrite, audit: AuditDep
) -> PlanOut:
    plan = service.update_plan(await service.get_plan(PlanRepository(session), code), audit, body)
    await session.flush()
    await session.refresh(plan)
    return service.to_out(plan)
