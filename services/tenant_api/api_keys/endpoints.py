"""/v1/api-keys: mint (secret shown once), list, revoke (effective immediately)."""

from __future__ import annotations

from fastapi import APIRouter, status

from tenant_api.api_keys import service
from tenant_api.api_keys.repository import ApiKeyRepository
from tenant_api.api_keys.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyList, ApiKeyOut
from tenant_api.deps import AuditDep, KeysWrite, SessionDep, SettingsDep

router = APIRouter(prefix="/v1/api-keys", tags=["api keys"])


@router.post(
    "", status_code=status.HTTP_201_CREATED, response_model=ApiKeyCreated, name="api_keys.create"
)
async def create_api_key(
    body: ApiKeyCreate,
    session: SessionDep,
    settings: SettingsDep,
    principal: KeysWrite,
    audit: AuditDep,
) -> ApiKeyCreated:
    key, secret = await service.create_key(session, settings, principal, audit, body)
    return ApiKeyCreated(**service.to_out(key).model_dump(), key=secret)


@router.get("", response_model=ApiKeyList, name="api_keys.list")
async def list_api_keys(session: SessionDep, principal: KeysWrite) -> ApiKeyList:
    keys = await ApiKeyRepository(session, principal).visible()
    return ApiKeyList(items=[service.to_out(k) for k in keys])


@router.delete("/{key_id}", response_model=ApiKeyOut, name="api_keys.revoke")
async def revoke_api_key(
    key_id: str, session: SessionDep, principal: KeysWrite, audit: AuditDep
) -> ApiKeyOut:
    key = await service.revoke_key(session, principal, audit, key_id)
    return service.to_out(key)
