"""Billing rules: turn a month's usage and plan terms into invoice lines.

Pure and exact: money is integer minor units, fractions are `Fraction`, and nothing here
touches a database or the clock.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction

__all__ = [
    "MONTHLY_METERS",
    "Line",
    "MeterPrice",
    "PlanTerms",
    "Segment",
    "Tier",
    "invoice_total",
    "overage_amount",
    "prorated_included",
    "prorated_share",
    "rate_month",
    "round_half_up",
    "validate_price",
    "validate_tiers",
]

# A distinct count over the whole month (one user active in two segments is still one user),
# so these cannot be summed per segment and are rated once, on the plan in force at month end.
MONTHLY_METERS = frozenset({"active_users"})


@dataclass(frozen=True)
class Tier:
    up_to: int | None  # cumulative bound in overage units; None = unbounded (last tier only)
    unit_price: int  # minor units per `per` units of the owning MeterPrice


@dataclass(frozen=True)
class MeterPrice:
    included: int = 0  # units included per month before any charge
    unit_price: int = 0  # flat overage price per `per` units; ignored when tiers are given
    per: int = 1  # price quantum, e.g. 1_000_000_000 for "per GB" of a bytes meter
    tiers: tuple[Tier, ...] = ()  # graduated tiers over overage units


@dataclass(frozen=True)
class PlanTerms:
    code: str
    currency: str  # ISO 4217, e.g. "EUR"
    base_fee: int  # monthly, minor units
    prices: Mapping[str, MeterPrice]  # meter name -> price


@dataclass(frozen=True)
class Segment:
    """A stretch of one month during which one plan applied, in whole UTC days."""

    first_day: int  # 1-based day of month, inclusive
    last_day: int  # 1-based day of month, inclusive
    plan: PlanTerms
    usage: Mapping[str, int]  # meter -> quantity used during this segment (missing = 0)


@dataclass(frozen=True)
class Line:
    kind: str  # "base_fee" | "usage" | "adjustment"
    description: str
    meter: str | None  # None for base_fee
    quantity: int
    included: int
    unit_price: int  # flat price, or tiers[0].unit_price when tiered; base fee: the monthly fee
    per: int
    amount: int  # minor units; negative only for kind "adjustment"
    plan: str | None = None
    first_day: int | None = None
    last_day: int | None = None
    adjusts_period: str | None = None  # "YYYY-MM" for adjustment lines


def round_half_up(value: Fraction) -> int:
    """Nearest integer, halves towards +inf (also for negatives: -1/2 -> 0)."""
    return math.floor(value + Fraction(1, 2))


def validate_tiers(tiers: Sequence[Tier]) -> None:
    """Raise ValueError, with a message fit for an API client, unless `tiers` is well formed."""
    previous: int | None = None
    for index, tier in enumerate(tiers, start=1):
        if tier.unit_price < 0:
            raise ValueError(
                f"tiers: unit_price must not be negative (got {tier.unit_price} in tier {index})"
            )
        if tier.up_to is None:
            if index != len(tiers):
                raise ValueError(
                    f"tiers: only the last tier may have no up_to (tier {index} of {len(tiers)})"
                )
            continue
        if tier.up_to <= 0:
            raise ValueError(f"tiers: up_to must be greater than 0 (got {tier.up_to})")
        if previous is not None and tier.up_to <= previous:
            raise ValueError(f"tiers: up_to must increase (got {tier.up_to} after {previous})")
        previous = tier.up_to


def validate_price(price: MeterPrice) -> None:
    """Raise ValueError, with a message fit for an API client, unless `price` is well formed."""
    if price.included < 0:
        raise ValueError(f"included: must not be negative (got {price.included})")
    if price.unit_price < 0:
        raise ValueError(f"unit_price: must not be negative (got {price.unit_price})")
    if price.per < 1:
        raise ValueError(f"per: must be at least 1 (got {price.per})")
    validate_tiers(price.tiers)


def _line_unit_price(price: MeterPrice) -> int:
    return price.tiers[0].unit_price if price.tiers else price.unit_price


def overage_amount(quantity: int, price: MeterPrice, included: int) -> int:
    """Charge for the units of `quantity` beyond `included`, rounded once, half up.

    `included` is a parameter rather than `price.included` because callers prorate it.
    """
    if quantity < 0 or included < 0:
        raise ValueError(f"quantity and included must not be negative ({quantity}, {included})")
    # Validated here too, so a malformed price can never silently produce a wrong charge.
    validate_price(price)
    overage = max(0, quantity - included)
    if overage == 0:
        return 0
    if not price.tiers:
        return round_half_up(Fraction(overage * price.unit_price, price.per))
    # All tiers share `per`, so the exact sum is an integer numerator over `per`; rounding it
    # once (not per tier) keeps the invoice within half a minor unit of the true price.
    numerator = 0
    lower = 0
    for tier in price.tiers:
        upper = overage if tier.up_to is None else min(overage, tier.up_to)
        numerator += (upper - lower) * tier.unit_price
        lower = upper
        if lower >= overage:
            break
    else:
        # Overage past the last bounded tier: the plan has no cheaper/dearer step defined,
        # so the last listed price keeps applying.
        numerator += (overage - lower) * price.tiers[-1].unit_price
    return round_half_up(Fraction(numerator, price.per))


def _check_days(first_day: int, last_day: int, days_in_month: int) -> None:
    if not 1 <= first_day <= last_day <= days_in_month:
        raise ValueError(
            f"days {first_day}-{last_day} are not a range within a {days_in_month}-day month"
        )


def prorated_share(amount: int, first_day: int, last_day: int, days_in_month: int) -> int:
    """The part of a monthly `amount` for days first_day..last_day.

    Cumulative floor: each day boundary gets a fixed floored running total, so contiguous
    ranges that cover the month add up to exactly `amount` (no cent lost or invented).
    """
    _check_days(first_day, last_day, days_in_month)
    return amount * last_day // days_in_month - amount * (first_day - 1) // days_in_month


def prorated_included(included: int, first_day: int, last_day: int, days_in_month: int) -> int:
    """Included units for days first_day..last_day (same cumulative floor as prorated_share)."""
    return prorated_share(included, first_day, last_day, days_in_month)


def _check_plan(plan: PlanTerms) -> None:
    if plan.base_fee < 0:
        raise ValueError(f"plan {plan.code}: base_fee must not be negative (got {plan.base_fee})")
    for meter in sorted(plan.prices):
        try:
            validate_price(plan.prices[meter])
        except ValueError as exc:
            raise ValueError(f"plan {plan.code}, meter {meter}: {exc}") from exc


def _check_segments(days_in_month: int, segments: Sequence[Segment]) -> None:
    if not 28 <= days_in_month <= 31:
        raise ValueError(f"days_in_month must be 28 to 31 (got {days_in_month})")
    if not segments:
        raise ValueError("segments: at least one segment is required")
    for segment in segments:
        if segment.first_day > segment.last_day:
            raise ValueError(
                f"segments: first_day {segment.first_day} is after last_day {segment.last_day}"
            )
    if segments[0].first_day < 1:
        raise ValueError(f"segments: must start on day 1 or later (got {segments[0].first_day})")
    for previous, current in zip(segments, segments[1:], strict=False):
        if current.first_day != previous.last_day + 1:
            raise ValueError(
                "segments: must be contiguous and ordered "
                f"(days {previous.first_day}-{previous.last_day} "
                f"then {current.first_day}-{current.last_day})"
            )
    if segments[-1].last_day > days_in_month:
        raise ValueError(f"segments: must end by day {days_in_month} (got {segments[-1].last_day})")
    # One invoice total cannot mix currencies; a currency change needs its own invoice.
    currencies = sorted({segment.plan.currency for segment in segments})
    if len(currencies) > 1:
        raise ValueError(f"segments: plans use different currencies ({', '.join(currencies)})")


def rate_month(
    days_in_month: int, segments: Sequence[Segment], monthly_usage: Mapping[str, int]
) -> list[Line]:
    """Invoice lines for one month: per segment a base fee and its usage, then monthly meters.

    `segments` are contiguous and in order; they cover the days the tenant existed (a tenant
    created or deleted mid-month pays for its days only). Monthly meters are
    taken only from `monthly_usage`; other meters only from each segment's `usage`.
    """
    _check_segments(days_in_month, segments)
    for segment in segments:
        _check_plan(segment.plan)

    lines: list[Line] = []
    for segment in segments:
        plan, first, last = segment.plan, segment.first_day, segment.last_day
        days = f"days {first}\u2013{last} of {days_in_month}"
        # Always emitted, even at 0: the invoice should show which plan applied when.
        lines.append(
            Line(
                kind="base_fee",
                description=f"Base fee, plan {plan.code}, {days}",
                meter=None,
                quantity=last - first + 1,
                included=0,
                unit_price=plan.base_fee,
                per=1,
                amount=prorated_share(plan.base_fee, first, last, days_in_month),
                plan=plan.code,
                first_day=first,
                last_day=last,
            )
        )
        for meter in sorted(plan.prices):
            if meter in MONTHLY_METERS:
                continue
            price = plan.prices[meter]
            quantity = segment.usage.get(meter, 0)
            included = prorated_included(price.included, first, last, days_in_month)
            lines.append(
                Line(
                    kind="usage",
                    description=f"Usage: {meter}, plan {plan.code}, {days}",
                    meter=meter,
                    quantity=quantity,
                    included=included,
                    unit_price=_line_unit_price(price),
                    per=price.per,
                    amount=overage_amount(quantity, price, included),
                    plan=plan.code,
                    first_day=first,
                    last_day=last,
                )
            )

    # A distinct count cannot be split by day, so neither can its allowance: the plan in
    # force at month end rates the whole month with its full included units.
    last_plan = segments[-1].plan
    for meter in sorted(MONTHLY_METERS.intersection(last_plan.prices)):
        price = last_plan.prices[meter]
        quantity = monthly_usage.get(meter, 0)
        lines.append(
            Line(
                kind="usage",
                description=(
                    f"Usage: {meter} (distinct over the month), plan {last_plan.code}, "
                    f"days 1\u2013{days_in_month} of {days_in_month}"
                ),
                meter=meter,
                quantity=quantity,
                included=price.included,
                unit_price=_line_unit_price(price),
                per=price.per,
                amount=overage_amount(quantity, price, price.included),
                plan=last_plan.code,
                first_day=1,
                last_day=days_in_month,
            )
        )
    return lines


def invoice_total(lines: Sequence[Line]) -> int:
    """Sum of line amounts, in minor units."""
    return sum(line.amount for line in lines)
