"""Rating rules: invoices add up, overage is priced exactly once, proration loses no cent."""

from __future__ import annotations

import re
from fractions import Fraction

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tenant_api.invoices.rating import (
    MONTHLY_METERS,
    Line,
    MeterPrice,
    PlanTerms,
    Segment,
    Tier,
    invoice_total,
    overage_amount,
    prorated_included,
    prorated_share,
    rate_month,
    round_half_up,
    validate_price,
    validate_tiers,
)

METERS = ("active_users", "api_requests", "messages", "storage_bytes")

# Pure arithmetic, but the unit-by-unit oracle below can trip the default per-example deadline.
fast = settings(deadline=None, max_examples=100)


# --- strategies -------------------------------------------------------------------------------


@st.composite
def tier_lists(draw: st.DrawFn) -> tuple[Tier, ...]:
    bounds = sorted(draw(st.sets(st.integers(1, 3000), min_size=0, max_size=4)))
    tiers = [Tier(bound, draw(st.integers(0, 500))) for bound in bounds]
    if not tiers or draw(st.booleans()):
        tiers.append(Tier(None, draw(st.integers(0, 500))))
    return tuple(tiers)


prices = st.builds(
    MeterPrice,
    included=st.integers(0, 2000),
    unit_price=st.integers(0, 500),
    per=st.sampled_from([1, 2, 3, 7, 1000]),
    tiers=st.one_of(st.just(()), tier_lists()),
)

plans = st.builds(
    PlanTerms,
    code=st.sampled_from(["free", "standard", "pro"]),
    currency=st.just("EUR"),
    base_fee=st.integers(0, 100_000),
    prices=st.dictionaries(st.sampled_from(METERS), prices, max_size=len(METERS)),
)

usages = st.dictionaries(st.sampled_from(METERS), st.integers(0, 1_000_000))


@st.composite
def day_ranges(draw: st.DrawFn) -> tuple[int, list[tuple[int, int]]]:
    """A month length and contiguous (first_day, last_day) ranges covering it."""
    days = draw(st.integers(28, 31))
    starts = [1, *sorted(draw(st.sets(st.integers(2, days), max_size=5)))]
    ends = [start - 1 for start in starts[1:]] + [days]
    return days, list(zip(starts, ends, strict=True))


def exact_overage(quantity: int, price: MeterPrice, included: int) -> Fraction:
    """Oracle: price every overage unit on its own, then sum (independent of the tier loop)."""
    overage = max(0, quantity - included)
    if not price.tiers:
        return Fraction(overage * price.unit_price, price.per)
    numerator = 0
    for unit in range(1, overage + 1):
        tier = next((t for t in price.tiers if t.up_to is None or unit <= t.up_to), price.tiers[-1])
        numerator += tier.unit_price
    return Fraction(numerator, price.per)


def plan(code: str, base_fee: int, **meter_prices: MeterPrice) -> PlanTerms:
    return PlanTerms(code=code, currency="EUR", base_fee=base_fee, prices=meter_prices)


# --- rounding ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (Fraction(1, 2), 1),
        (Fraction(3, 2), 2),
        (Fraction(5, 2), 3),
        (Fraction(1, 3), 0),
        (Fraction(2, 3), 1),
        (Fraction(-1, 2), 0),
        (Fraction(-3, 2), -1),
        (Fraction(-2, 3), -1),
        (Fraction(7), 7),
    ],
)
def test_round_half_up_sends_halves_towards_positive_infinity(value: Fraction, expected: int):
    assert round_half_up(value) == expected


def test_half_a_cent_is_charged_and_a_third_of_a_cent_is_not():
    assert overage_amount(1, MeterPrice(unit_price=1, per=2), 0) == 1
    assert overage_amount(1, MeterPrice(unit_price=1, per=3), 0) == 0
    assert overage_amount(2, MeterPrice(unit_price=1, per=3), 0) == 1


# --- overage ----------------------------------------------------------------------------------


@fast
@given(price=prices, included=st.integers(0, 5000), data=st.data())
def test_usage_within_the_allowance_costs_nothing(
    price: MeterPrice, included: int, data: st.DataObject
):
    quantity = data.draw(st.integers(0, included))
    assert overage_amount(quantity, price, included) == 0


@fast
@given(
    price=prices, included=st.integers(0, 3000), a=st.integers(0, 10**7), b=st.integers(0, 10**7)
)
def test_more_usage_never_costs_less(price: MeterPrice, included: int, a: int, b: int):
    low, high = sorted((a, b))
    assert overage_amount(low, price, included) <= overage_amount(high, price, included)


@fast
@given(price=prices, included=st.integers(0, 3000), quantity=st.integers(0, 6000))
def test_charge_is_within_half_a_minor_unit_of_the_exact_price(
    price: MeterPrice, included: int, quantity: int
):
    exact = exact_overage(quantity, price, included)
    charged = overage_amount(quantity, price, included)
    assert abs(charged - exact) <= Fraction(1, 2)


@fast
@given(
    unit_price=st.integers(0, 10_000),
    per=st.integers(1, 10**9),
    included=st.integers(0, 10**6),
    quantity=st.integers(0, 10**12),
)
def test_flat_price_is_one_unbounded_tier(unit_price: int, per: int, included: int, quantity: int):
    flat = MeterPrice(unit_price=unit_price, per=per)
    tiered = MeterPrice(unit_price=999_999, per=per, tiers=(Tier(None, unit_price),))
    assert overage_amount(quantity, flat, included) == overage_amount(quantity, tiered, included)


@st.composite
def split_tiers(draw: st.DrawFn) -> tuple[tuple[Tier, ...], tuple[Tier, ...]]:
    """Tiers, and the same tiers with one split into two adjacent tiers at the same price."""
    tiers = draw(tier_lists())
    index = draw(st.integers(0, len(tiers) - 1))
    lower = tiers[index - 1].up_to if index else 0
    assert lower is not None
    upper = tiers[index].up_to
    assume(upper is None or upper - lower >= 2)
    cut = draw(st.integers(lower + 1, (upper - 1) if upper is not None else lower + 5000))
    tier = tiers[index]
    split = (*tiers[:index], Tier(cut, tier.unit_price), tier, *tiers[index + 1 :])
    return tiers, split


@fast
@given(
    pair=split_tiers(),
    per=st.sampled_from([1, 3, 1000]),
    included=st.integers(0, 1000),
    quantity=st.integers(0, 20_000),
)
def test_splitting_a_tier_at_the_same_price_changes_nothing(
    pair: tuple[tuple[Tier, ...], tuple[Tier, ...]], per: int, included: int, quantity: int
):
    original, split = pair
    validate_tiers(split)
    before = overage_amount(quantity, MeterPrice(per=per, tiers=original), included)
    after = overage_amount(quantity, MeterPrice(per=per, tiers=split), included)
    assert before == after


def test_graduated_storage_tiers_hand_computed():
    # 5 GB included; next 95 GB at 20 ct/GB, next 900 GB at 10 ct/GB, beyond at 5 ct/GB.
    gb = 1_000_000_000
    price = MeterPrice(
        included=5 * gb,
        per=gb,
        tiers=(Tier(95 * gb, 20), Tier(995 * gb, 10), Tier(None, 5)),
    )
    # 1_234_567_890_123 bytes used -> 1_229_567_890_123 overage bytes:
    #   95 GB * 20 = 1900, 900 GB * 10 = 9000, 234.567890123 GB * 5 = 1172.839450615
    #   exact 12072.839450615 -> 12073
    assert overage_amount(1_234_567_890_123, price, price.included) == 12073


def test_tiered_charge_is_rounded_once_not_per_tier():
    # 1.5 ct in each tier: rounding per tier would bill 2 + 2 = 4, the true price is 3.
    price = MeterPrice(per=1000, tiers=(Tier(1500, 1), Tier(None, 1)))
    assert overage_amount(3000, price, 0) == 3


def test_usage_past_the_last_bounded_tier_stays_at_its_price():
    price = MeterPrice(tiers=(Tier(100, 10), Tier(200, 5)))
    # 100 * 10 + 100 * 5 + 100 more at the last tier's 5
    assert overage_amount(300, price, 0) == 2000


def test_tiers_start_counting_after_the_included_units():
    price = MeterPrice(included=1000, tiers=(Tier(10, 100), Tier(None, 1)))
    assert overage_amount(1000, price, 1000) == 0
    assert overage_amount(1010, price, 1000) == 1000
    assert overage_amount(1015, price, 1000) == 1005


# --- proration --------------------------------------------------------------------------------


@fast
@given(ranges=day_ranges(), amount=st.integers(0, 10**9))
def test_contiguous_segments_prorate_to_exactly_the_monthly_amount(
    ranges: tuple[int, list[tuple[int, int]]], amount: int
):
    days, spans = ranges
    assert sum(prorated_share(amount, first, last, days) for first, last in spans) == amount
    assert sum(prorated_included(amount, first, last, days) for first, last in spans) == amount


@fast
@given(ranges=day_ranges(), the_plan=plans, usage=usages)
def test_one_plan_split_into_segments_bills_the_whole_base_fee_and_allowance(
    ranges: tuple[int, list[tuple[int, int]]], the_plan: PlanTerms, usage: dict[str, int]
):
    days, spans = ranges
    segments = [Segment(first, last, the_plan, usage) for first, last in spans]
    lines = rate_month(days, segments, {})
    assert sum(line.amount for line in lines if line.kind == "base_fee") == the_plan.base_fee
    for meter, price in the_plan.prices.items():
        if meter in MONTHLY_METERS:
            continue
        included = [line.included for line in lines if line.meter == meter]
        assert len(included) == len(spans)
        assert sum(included) == price.included


def test_full_month_on_one_plan_bills_exact_fee_and_allowance():
    standard = plan("standard", 4999, messages=MeterPrice(included=10_000, unit_price=2))
    lines = rate_month(31, [Segment(1, 31, standard, {"messages": 10_250})], {})
    assert lines == [
        Line(
            kind="base_fee",
            description="Base fee, plan standard, days 1\u201331 of 31",
            meter=None,
            quantity=31,
            included=0,
            unit_price=4999,
            per=1,
            amount=4999,
            plan="standard",
            first_day=1,
            last_day=31,
        ),
        Line(
            kind="usage",
            description="Usage: messages, plan standard, days 1\u201331 of 31",
            meter="messages",
            quantity=10_250,
            included=10_000,
            unit_price=2,
            per=1,
            amount=500,
            plan="standard",
            first_day=1,
            last_day=31,
        ),
    ]
    assert invoice_total(lines) == 5499


def test_mid_month_upgrade_bills_each_plan_for_its_days():
    basic = plan("basic", 3000, messages=MeterPrice(included=3000, unit_price=1))
    pro = plan("pro", 6000, messages=MeterPrice(included=9000, unit_price=1))
    lines = rate_month(
        30,
        [Segment(1, 10, basic, {"messages": 1500}), Segment(11, 30, pro, {"messages": 7000})],
        {},
    )
    base = [(line.plan, line.first_day, line.last_day, line.amount) for line in lines[::2]]
    assert base == [("basic", 1, 10, 1000), ("pro", 11, 30, 4000)]
    usage = [(line.plan, line.included, line.amount) for line in lines[1::2]]
    # 3000 * 10/30 = 1000 included (500 over); 9000 * 20/30 = 6000 included (1000 over)
    assert usage == [("basic", 1000, 500), ("pro", 6000, 1000)]
    assert invoice_total(lines) == 6500


def test_free_plan_still_shows_a_base_fee_line():
    lines = rate_month(28, [Segment(1, 28, plan("free", 0), {})], {})
    assert [(line.kind, line.plan, line.amount) for line in lines] == [("base_fee", "free", 0)]


def test_usage_lines_are_in_meter_order_whatever_the_plan_mapping_order():
    unordered = plan(
        "pro", 0, storage_bytes=MeterPrice(), messages=MeterPrice(), api_requests=MeterPrice()
    )
    lines = rate_month(30, [Segment(1, 30, unordered, {})], {})
    assert [line.meter for line in lines] == [None, "api_requests", "messages", "storage_bytes"]


# --- whole invoice ----------------------------------------------------------------------------


@fast
@given(ranges=day_ranges(), data=st.data(), monthly=usages)
def test_invoice_total_is_the_sum_of_non_negative_lines(
    ranges: tuple[int, list[tuple[int, int]]], data: st.DataObject, monthly: dict[str, int]
):
    days, spans = ranges
    segments = [Segment(first, last, data.draw(plans), data.draw(usages)) for first, last in spans]
    lines = rate_month(days, segments, monthly)
    assert invoice_total(lines) == sum(line.amount for line in lines)
    assert all(line.amount >= 0 for line in lines)
    assert all(line.kind in ("base_fee", "usage") for line in lines)
    assert [line.plan for line in lines if line.kind == "base_fee"] == [
        segment.plan.code for segment in segments
    ]
    monthly_lines = [line for line in lines if line.meter in MONTHLY_METERS]
    assert {line.meter for line in monthly_lines} == MONTHLY_METERS & set(segments[-1].plan.prices)
    assert len(monthly_lines) == len({line.meter for line in monthly_lines})


def test_active_users_are_rated_once_on_the_last_plan_with_its_full_allowance():
    basic = plan("basic", 1000, active_users=MeterPrice(included=10, unit_price=500))
    pro = plan("pro", 3000, active_users=MeterPrice(included=25, unit_price=400))
    lines = rate_month(
        30,
        [
            # Per-segment active_users are not a distinct count and must be ignored.
            Segment(1, 15, basic, {"active_users": 999}),
            Segment(16, 30, pro, {"active_users": 999}),
        ],
        {"active_users": 30},
    )
    active = [line for line in lines if line.meter == "active_users"]
    assert len(active) == 1
    (line,) = active
    assert (line.plan, line.included, line.quantity) == ("pro", 25, 30)
    assert (line.first_day, line.last_day) == (1, 30)
    assert line.amount == 5 * 400
    assert lines[-1] is line


def test_active_users_are_not_billed_when_the_last_plan_does_not_price_them():
    basic = plan("basic", 1000, active_users=MeterPrice(included=10, unit_price=500))
    legacy = plan("legacy", 1000)
    lines = rate_month(
        30, [Segment(1, 15, basic, {}), Segment(16, 30, legacy, {})], {"active_users": 50}
    )
    assert all(line.meter is None for line in lines)


# --- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tiers", "message"),
    [
        ((Tier(500, 1), Tier(100, 1)), "tiers: up_to must increase (got 100 after 500)"),
        ((Tier(100, 1), Tier(100, 2)), "tiers: up_to must increase (got 100 after 100)"),
        ((Tier(0, 1),), "tiers: up_to must be greater than 0 (got 0)"),
        ((Tier(-5, 1),), "tiers: up_to must be greater than 0 (got -5)"),
        (
            (Tier(None, 1), Tier(100, 1)),
            "tiers: only the last tier may have no up_to (tier 1 of 2)",
        ),
        (
            (Tier(100, 1), Tier(200, -1)),
            "tiers: unit_price must not be negative (got -1 in tier 2)",
        ),
    ],
)
def test_bad_tiers_are_rejected_with_a_readable_message(tiers: tuple[Tier, ...], message: str):
    with pytest.raises(ValueError, match=re.escape(message)):
        validate_tiers(tiers)
    with pytest.raises(ValueError, match=re.escape(message)):
        validate_price(MeterPrice(tiers=tiers))


@pytest.mark.parametrize(
    "tiers", [(), (Tier(None, 0),), (Tier(10, 5),), (Tier(10, 5), Tier(20, 1), Tier(None, 0))]
)
def test_good_tiers_are_accepted(tiers: tuple[Tier, ...]):
    validate_tiers(tiers)


@pytest.mark.parametrize(
    ("price", "message"),
    [
        (MeterPrice(included=-1), "included: must not be negative (got -1)"),
        (MeterPrice(unit_price=-3), "unit_price: must not be negative (got -3)"),
        (MeterPrice(per=0), "per: must be at least 1 (got 0)"),
    ],
)
def test_bad_prices_are_rejected_with_a_readable_message(price: MeterPrice, message: str):
    with pytest.raises(ValueError, match=re.escape(message)):
        validate_price(price)


def test_a_bad_price_in_a_plan_names_the_plan_and_meter():
    broken = plan("pro", 0, messages=MeterPrice(per=0))
    with pytest.raises(ValueError, match=re.escape("plan pro, meter messages: per: must be")):
        rate_month(30, [Segment(1, 30, broken, {})], {})


_P = plan("p", 100)


@pytest.mark.parametrize(
    ("days", "segments", "message"),
    [
        (30, [], "at least one segment"),
        (30, [Segment(0, 30, _P, {})], "must start on day 1 or later (got 0)"),
        (30, [Segment(1, 31, _P, {})], "must end by day 30 (got 31)"),
        (30, [Segment(1, 10, _P, {}), Segment(12, 30, _P, {})], "days 1-10 then 12-30"),
        (30, [Segment(1, 10, _P, {}), Segment(10, 30, _P, {})], "days 1-10 then 10-30"),
        (30, [Segment(11, 30, _P, {}), Segment(1, 10, _P, {})], "days 11-30 then 1-10"),
        (30, [Segment(1, 10, _P, {}), Segment(12, 11, _P, {})], "first_day 12 is after"),
        (32, [Segment(1, 32, _P, {})], "days_in_month must be 28 to 31 (got 32)"),
        (
            30,
            [Segment(1, 10, _P, {}), Segment(11, 30, PlanTerms("q", "USD", 100, {}), {})],
            "plans use different currencies (EUR, USD)",
        ),
    ],
)
def test_segments_that_do_not_tile_the_month_are_rejected(
    days: int, segments: list[Segment], message: str
):
    with pytest.raises(ValueError, match=re.escape(message)):
        rate_month(days, segments, {})


def test_negative_usage_is_rejected():
    with pytest.raises(ValueError, match="must not be negative"):
        overage_amount(-1, MeterPrice(unit_price=1), 0)


def test_proration_rejects_days_outside_the_month():
    with pytest.raises(ValueError, match=re.escape("days 0-10")):
        prorated_share(1000, 0, 10, 30)
    with pytest.raises(ValueError, match=re.escape("days 20-31")):
        prorated_included(1000, 20, 31, 30)


def test_a_tenant_created_mid_month_pays_for_its_days_only():
    plan = PlanTerms("p", "EUR", 3000, {"messages": MeterPrice(included=300, unit_price=2)})
    lines = rate_month(30, [Segment(11, 30, plan, {"messages": 250})], {})
    base, usage = lines
    assert (base.amount, base.quantity) == (2000, 20)
    assert usage.included == 200
    assert usage.amount == 100  # 50 messages over the prorated 200 at 2 each
