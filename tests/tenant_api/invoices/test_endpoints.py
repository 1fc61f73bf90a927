"""Plans, plan changes, usage series and invoices as an integrator sees them over REST."""

from __future__ import annotations

import csv
import io
import uuid
from datetime import UTC, datetime, timedelta

import httpx

from platform_core.db import task_session
from tenant_api.usage.repository import UsageBatchRepository
from tests.helpers.api import assert_problem, slug


def plan_body(**overrides: object) -> dict[str, object]:
    body: dict[str, object] = {
        "code": f"plan-{uuid.uuid4().hex[:8]}",
        "name": "Business",
        "currency": "EUR",
        "base_fee": 4900,
        "prices": {
            "messages": {"included": 1000, "unit_price": 1},
            "active_users": {
                "included": 10,
                "tiers": [{"up_to": 90, "unit_price": 300}, {"up_to": None, "unit_price": 200}],
            },
            "media_bytes": {"included": 10**9, "unit_price": 5, "per": 10**9},
        },
        "limits": {"max_mau": 500, "max_upload_size_bytes": 100 * 1024 * 1024},
    }
    body.update(overrides)
    return body


async def test_operators_create_list_and_change_plans(api: httpx.AsyncClient) -> None:
    body = plan_body()
    created = await api.post("/v1/plans", json=body)
    assert created.status_code == 201, created.text
    plan = created.json()
    assert plan["base_fee"] == 4900 and plan["prices"]["messages"]["included"] == 1000
    assert plan["limits"] == {"max_mau": 500, "max_upload_size_bytes": 100 * 1024 * 1024}
    codes = [p["code"] for p in (await api.get("/v1/plans")).json()["items"]]
    assert body["code"] in codes and "standard" in codes

    patched = await api.patch(f"/v1/plans/{body['code']}", json={"base_fee": 5900})
    assert patched.status_code == 200 and patched.json()["base_fee"] == 5900
    assert patched.json()["prices"] == plan["prices"]  # untouched fields stay

    assert_problem(await api.post("/v1/plans", json=body), 409, "already exists")
    assert_problem(await api.get("/v1/plans/nope"), 404, "nope")


async def test_bad_plans_are_refused_with_the_reason(api: httpx.AsyncClient) -> None:
    cases = [
        (plan_body(currency="eur"), "ISO 4217"),
        (plan_body(base_fee=-1), "base_fee"),
        (plan_body(base_fee=12.5), "base_fee"),  # money is integer minor units
        (plan_body(prices={"sms": {"unit_price": 1}}), "unknown meters"),
        (
            plan_body(
                prices={
                    "calls": {
                        "tiers": [
                            {"up_to": 500, "unit_price": 2},
                            {"up_to": 100, "unit_price": 1},
                        ]
                    }
                }
            ),
            "up_to must increase",
        ),
        (plan_body(prices={"calls": {"per": 0}}), "per"),
        (plan_body(code="Not A Code"), "code"),
    ]
    for body, needle in cases:
        response = await api.post("/v1/plans", json=body)
        assert response.status_code == 422, (body, response.text)
        assert needle in response.text, (needle, response.text)


async def test_changing_a_tenants_plan_shows_on_the_upcoming_invoice(
    api: httpx.AsyncClient,
) -> None:
    body = plan_body()
    await api.post("/v1/plans", json=body)
    tenant = (await api.post("/v1/tenants", json={"slug": slug(), "display_name": "X"})).json()
    patched = await api.patch(f"/v1/tenants/{tenant['id']}", json={"plan": body["code"]})
    assert patched.status_code == 200, patched.text
    assert patched.json()["plan"] == body["code"]

    upcoming = (await api.get(f"/v1/tenants/{tenant['id']}/invoices/upcoming")).json()
    assert upcoming["status"] == "draft" and upcoming["number"] is None
    assert upcoming["currency"] == "EUR"
    # Created and moved today: today counts on the new plan, so it is the only one billed.
    assert {line["plan"] for line in upcoming["lines"]} == {body["code"]}
    assert upcoming["total"] == sum(line["amount"] for line in upcoming["lines"])
    for line in upcoming["lines"]:
        assert {"meter", "quantity", "included", "unit_price", "amount"} <= set(line)

    as_csv = await api.get(
        f"/v1/tenants/{tenant['id']}/invoices/upcoming", headers={"Accept": "text/csv"}
    )
    assert as_csv.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert rows[-1]["kind"] == "total" and int(rows[-1]["amount"]) == upcoming["total"]
    assert sum(int(r["amount"]) for r in rows[:-1]) == upcoming["total"]

    usd = plan_body(currency="USD")
    await api.post("/v1/plans", json=usd)
    refused = await api.patch(f"/v1/tenants/{tenant['id']}", json={"plan": usd["code"]})
    assert_problem(refused, 422, "currencies")
    assert_problem(
        await api.patch(f"/v1/tenants/{tenant['id']}", json={"plan": "missing"}), 422, "missing"
    )


async def test_finalized_invoices_are_listed_and_served_as_json_and_csv(
    api: httpx.AsyncClient,
) -> None:
    tenant = (await api.post("/v1/tenants", json={"slug": slug(), "display_name": "X"})).json()
    this_month = datetime.now(UTC).strftime("%Y-%m")
    refused = await api.post(f"/v1/tenants/{tenant['id']}/invoices/{this_month}/finalize")
    assert_problem(refused, 409, "not ended")
    assert_problem(
        await api.post(f"/v1/tenants/{tenant['id']}/invoices/2026-13/finalize"), 422, "2026-13"
    )
    assert (await api.get(f"/v1/tenants/{tenant['id']}/invoices")).json()["items"] == []
    assert_problem(await api.get(f"/v1/tenants/{tenant['id']}/invoices/C3-99999999"), 404, "")

    # A month that has ended is finalized through the API (and again: the same invoice).
    first_of_month = datetime.now(UTC).replace(day=1)
    last_month = (first_of_month - timedelta(days=1)).strftime("%Y-%m")
    finalized = await api.post(f"/v1/tenants/{tenant['id']}/invoices/{last_month}/finalize")
    assert finalized.status_code == 200, finalized.text
    invoice = finalized.json()
    assert invoice["status"] == "finalized" and invoice["total"] == sum(
        line["amount"] for line in invoice["lines"]
    )
    again = await api.post(f"/v1/tenants/{tenant['id']}/invoices/{last_month}/finalize")
    assert again.json()["number"] == invoice["number"]
    listed = (await api.get(f"/v1/tenants/{tenant['id']}/invoices")).json()["items"]
    assert [item["number"] for item in listed] == [invoice["number"]]


async def test_usage_as_a_series_by_day(api: httpx.AsyncClient) -> None:
    tenant = (await api.post("/v1/tenants", json={"slug": slug(), "display_name": "X"})).json()
    tenant_id = uuid.UUID(tenant["id"])
    with task_session() as session:
        UsageBatchRepository(session).add_to_counters(
            [
                (tenant_id, "messages", datetime(2026, 11, 2, 9, tzinfo=UTC), 3),
                (tenant_id, "messages", datetime(2026, 11, 2, 17, tzinfo=UTC), 4),
                (tenant_id, "messages", datetime(2026, 11, 3, 1, tzinfo=UTC), 5),
                (tenant_id, "api_requests", datetime(2026, 11, 3, 1, tzinfo=UTC), 50),
            ],
        )
    response = await api.get(
        f"/v1/tenants/{tenant['id']}/usage",
        params={
            "from": "2026-11-01T00:00:00Z",
            "to": "2026-12-01T00:00:00Z",
            "granularity": "day",
            "meter": "messages",
        },
    )
    assert response.status_code == 200, response.text
    usage = response.json()
    assert usage["totals"] == {"messages": 12}
    assert [(b["start"][:10], b["values"]) for b in usage["series"]] == [
        ("2026-11-02", {"messages": 7}),
        ("2026-11-03", {"messages": 5}),
    ]
    bad = await api.get(f"/v1/tenants/{tenant['id']}/usage", params={"granularity": "week"})
    assert_problem(bad, 422, "granularity")
    bad_meter = await api.get(f"/v1/tenants/{tenant['id']}/usage", params={"meter": "sms"})
    assert_problem(bad_meter, 422, "meter")
