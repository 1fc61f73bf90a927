"""Request and response bodies of /v1/plans. Money is integer minor units of ``currency``."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from platform_core.models import Meter
from tenant_api.invoices.rating import MeterPrice, Tier, validate_price

CODE_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
CURRENCY_RE = re.compile(r"^[A-Z]{3}$")
MAX_MINOR = 10**15  # a sanity bound well inside BIGINT
ALLOW_OPEN_REGISTRATION = (
    "Whether tenant admins on this plan may set their homeserver's registration to `open` "
    "(anyone signs up, no verification). Operators always may. Turning it off later does not "
    "close homeservers already open."
)


class TierIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    up_to: int | None = Field(
        None, ge=1, le=MAX_MINOR, description="Overage units; null = no bound"
    )
    unit_price: int = Field(ge=0, le=MAX_MINOR)


class PriceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    included: int = Field(default=0, ge=0, le=MAX_MINOR, description="Units included each month")
    unit_price: int = Field(
        default=0, ge=0, le=MAX_MINOR, description="Minor units per `per` units"
    )
    per: int = Field(default=1, ge=1, le=MAX_MINOR, description="e.g. 1000000000 to price per GB")
    tiers: list[TierIn] = Field(default_factory=list, max_length=20)

    def terms(self) -> MeterPrice:
        return MeterPrice(
            included=self.included,
            unit_price=self.unit_price,
            per=self.per,
            tiers=tuple(Tier(t.up_to, t.unit_price) for t in self.tiers),
        )

    @model_validator(mode="after")
    def _valid(self) -> PriceIn:
        validate_price(self.terms())
        return self


class LimitsIn(BaseModel):
    """Limits that become homeserver config (Synapse's own option names in brackets)."""

    model_config = ConfigDict(extra="forbid")
    max_mau: int | None = Field(
        default=None, ge=1, description="[limit_usage_by_mau, max_mau_value]"
    )
    max_upload_size_bytes: int | None = Field(default=None, ge=1024, le=10 * 1024**3)
    rc_message_per_second: float | None = Field(default=None, gt=0, le=10_000)
    rc_message_burst: int | None = Field(default=None, ge=1, le=100_000)
    rc_login_per_second: float | None = Field(default=None, gt=0, le=10_000)
    rc_login_burst: int | None = Field(default=None, ge=1, le=100_000)
    # Enforced by each proxy instance (not homeserver config): requests per second with a
    # burst, and requests in flight (long-polls excluded) before a fast 503.
    proxy_rate_per_second: float | None = Field(default=None, gt=0, le=100_000)
    proxy_rate_burst: int | None = Field(default=None, ge=1, le=1_000_000)
    proxy_max_concurrent: int | None = Field(default=None, ge=1, le=100_000)
    # Enforced by the tenant API (tenant_api.rate_limit), per credential of the tenant (each
    # tenant key, each tenant admin): unset, the platform's C3_API_RATE_PER_MINUTE/_BURST.
    api_requests_per_minute: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000,
        description="Tenant API requests per minute, per credential of the tenant",
    )
    api_burst: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000,
        description="Tenant API requests an idle credential may send at once "
        "(default: one minute's worth)",
    )
    # Sleeping homeservers: the homeserver is stopped (scaled to 0) after serving nothing for
    # this long and woken by the next request. Null or 0: always on.
    idle_after_seconds: int | None = Field(default=None, ge=0, le=365 * 24 * 3600)
    # Kubernetes backend: the homeserver pod's CPU and memory (its requests and limits, and its
    # namespace's quota) and its data volume (media, signing key).
    homeserver_cpu_millicores: int | None = Field(default=None, ge=100, le=64_000)
    homeserver_memory_mib: int | None = Field(default=None, ge=256, le=262_144)
    homeserver_storage_gib: int | None = Field(default=None, ge=1, le=16_384)
    # Synapse's memory (docs/benchmarks.md, "Synapse's footprint"): every cache's size times
    # this factor, the event cache's base size, and a jemalloc heap size above which Synapse
    # evicts cache entries (0: never).
    synapse_cache_factor: float | None = Field(
        default=None, gt=0, le=20, description="[caches.global_factor]"
    )
    synapse_event_cache_size: int | None = Field(
        default=None, ge=100, le=10_000_000, description="[event_cache_size]"
    )
    synapse_cache_max_memory_mib: int | None = Field(
        default=None, ge=0, le=262_144, description="[caches.cache_autotuning]"
    )


def _check_prices(prices: dict[str, PriceIn]) -> dict[str, PriceIn]:
    known = {m.value for m in Meter}
    unknown = sorted(set(prices) - known)
    if unknown:
        raise ValueError(f"unknown meters {unknown}; meters are {sorted(known)}")
    return prices


class PlanCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str = Field(description="Unique, immutable: lower-case letters, digits, - and _")
    name: str = Field(min_length=1, max_length=200)
    currency: str = Field(description="ISO 4217, e.g. EUR")
    base_fee: int = Field(default=0, ge=0, le=MAX_MINOR, description="Monthly, minor units")
    prices: dict[str, PriceIn] = Field(default_factory=dict, description="Per meter")
    limits: LimitsIn = Field(default_factory=lambda: LimitsIn())
    allow_open_registration: bool = Field(default=False, description=ALLOW_OPEN_REGISTRATION)

    @field_validator("code")
    @classmethod
    def _code(cls, value: str) -> str:
        if not CODE_RE.match(value):
            raise ValueError("use 1-64 lower-case letters, digits, '-' or '_'")
        return value

    @field_validator("currency")
    @classmethod
    def _currency(cls, value: str) -> str:
        if not CURRENCY_RE.match(value):
            raise ValueError("use an ISO 4217 code of three upper-case letters, e.g. EUR")
        return value

    _prices = field_validator("prices")(_check_prices)


class PlanPatch(BaseModel):
    """Fields to change; prices and limits are replaced as a whole when given. The currency
    and code never change (invoices and tenants refer to them)."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, min_length=1, max_length=200)
    base_fee: int | None = Field(default=None, ge=0, le=MAX_MINOR)
    prices: dict[str, PriceIn] | None = None
    limits: LimitsIn | None = None
    allow_open_registration: bool | None = Field(default=None, description=ALLOW_OPEN_REGISTRATION)

    _prices = field_validator("prices")(lambda cls, v: v if v is None else _check_prices(v))


class PlanOut(BaseModel):
    id: uuid.UUID
    code: str
    name: str
    currency: str
    base_fee: int
    prices: dict[str, Any]
    limits: dict[str, Any]
    allow_open_registration: bool = Field(description=ALLOW_OPEN_REGISTRATION)
    is_default: bool
    created_at: datetime
    updated_at: datetime


class PlanList(BaseModel):
    items: list[PlanOut]
