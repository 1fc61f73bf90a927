"""Typed request dependencies: settings, database session, the authenticated principal."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Header
from sqlalchemy.ext.asyncio import AsyncSession

from platform_core.auth import Principal, PrincipalKind, authenticate_bearer
from platform_core.db import async_sessionmaker_
from platform_core.errors import NotFound
from platform_core.settings import Settings, get_settings


def settings_dep() -> Settings:
    return get_settings()


async def session_dep() -> AsyncIterator[AsyncSession]:
    """One session per request. Endpoints that enqueue work commit first, explicitly;
    anything left uncommitted when the request ends is rolled back."""
    session = async_sessionmaker_()()
    try:
        yield session
    finally:
        await session.close()


def principal_dep(
    settings: Annotated[Settings, Depends(settings_dep)],
    authorization: Annotated[str | None, Header()] = None,
) -> Principal:
    return authenticate_bearer(authorization, settings)


def operator_dep(principal: Annotated[Principal, Depends(principal_dep)]) -> Principal:
    if principal.kind is not PrincipalKind.OPERATOR:
        raise NotFound("not found")
    return principal


SettingsDep = Annotated[Settings, Depends(settings_dep)]
SessionDep = Annotated[AsyncSession, Depends(session_dep)]
OperatorDep = Annotated[Principal, Depends(operator_dep)]
