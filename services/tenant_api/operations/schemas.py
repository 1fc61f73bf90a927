"""Response bodies of /v1/operations."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from platform_core.models import OperationKind, OperationState
from platform_core.operation_history import OperationEvent


class OperationEventOut(BaseModel):
    """One transition of the operation (the last 100 are kept)."""

    at: datetime
    event: OperationEvent
    attempt: int = Field(description="The attempt it belongs to (0: before the first)")
    step: str | None = Field(default=None, description="The step done, on `step` events")
    detail: str | None = Field(default=None, description="The error or reason, if any")
    delay_s: float | None = Field(
        default=None, description="Seconds until the next attempt, on `retry` events"
    )


class OperationOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    tenant_id: uuid.UUID
    kind: OperationKind
    state: OperationState
    attempts: int
    steps_done: list[str]
    last_error: str | None
    history: list[OperationEventOut]
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
