"""The portal in a real browser (Debian's chromium through Playwright) against a running
platform (`c3 up`): a tenant admin with a real Synapse behind the proxy, and an operator
repairing a failed provisioning. Every page is written to build/screenshots/ at desktop and
360 px width."""

from __future__ import annotations

import asyncio
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import httpx
import nio
import pytest
from playwright.sync_api import expect

from tests.helpers.api import PASSWORD
from tests.helpers.browser import DESKTOP, PHONE, chromium, screenshot
from tests.helpers.environment import isolated_platform
from tests.helpers.matrix import login
from tests.helpers.platform import RunningPlatform, poll

T = TypeVar("T")


def in_thread(work: Callable[[], T]) -> T:
    """Async Matrix client work beside Playwright's sync API (which owns this thread's loop)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(work).result()


def new_account(platform: RunningPlatform, role: str, tenant_id: str | None = None) -> str:
    address = f"p{uuid.uuid4().hex[:10]}@example.com"
    body: dict[str, Any] = {"email": address, "password": PASSWORD, "role": role}
    if tenant_id:
        body["tenant_id"] = tenant_id
    with platform.api() as api:
        created = api.post("/v1/accounts", json=body)
    assert created.status_code == 201, created.text
    return address


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """This module's own chromium (not the session's): Playwright's sync API keeps an event
    loop running in this thread while it is open, which async tests run later would trip on."""
    with chromium() as launched:
        yield launched


@pytest.fixture
def page_of(browser: Any) -> Iterator[Callable[[], Any]]:
    contexts = []

    def open_page() -> Any:
        context = browser.new_context(viewport=DESKTOP)
        contexts.append(context)
        return context.new_page()

    yield open_page
    for context in contexts:
        context.close()


def sign_in(page: Any, platform: RunningPlatform, address: str, path: str = "/portal/") -> None:
    page.goto(platform.api_url + path)
    assert "/portal/sign-in" in page.url
    page.get_by_label("Email").fill(address)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_load_state()


def shoot(page: Any, url: str, name: str) -> None:
    """The page at ``url`` at desktop and phone width (then back to desktop)."""
    for size, label in ((DESKTOP, "desktop"), (PHONE, "360px")):
        page.set_viewport_size(size)
        response = page.goto(url)
        assert response is not None and response.status == 200, (url, response)
        screenshot(page, f"portal-{name}-{label}")
        if size is PHONE:
            # Readable at 360 px: nothing wider than the screen but the scrolling tables.
            overflow = page.evaluate(
                "() => document.documentElement.scrollWidth - window.innerWidth"
            )
            assert overflow <= 1, (name, overflow)
    page.set_viewport_size(DESKTOP)


def send_messages(base_url: str, user_id: str, password: str, count: int) -> None:
    async def chat() -> None:
        client = await login(base_url, user_id, password)
        try:
            room = await client.room_create(name="portal check")
            assert isinstance(room, nio.RoomCreateResponse), room
            for n in range(count):
                sent = await client.room_send(
                    room.room_id, "m.room.message", {"msgtype": "m.text", "body": f"hello {n}"}
                )
                assert isinstance(sent, nio.RoomSendResponse), sent
        finally:
            await client.close()

    in_thread(lambda: asyncio.run(chat()))


def messages_this_month(page: Any, usage_url: str) -> int:
    page.goto(usage_url)
    card = page.locator("section.chart-card", has_text="Messages").first
    found = re.search(r"This month: ([\d,]+)", card.inner_text())
    assert found, card.inner_text()
    return int(found.group(1).replace(",", ""))


def test_a_tenant_admin_manages_users_sees_usage_and_api_keys(
    platform: RunningPlatform, page_of: Callable[[], Any]
) -> None:
    tenant = platform.create_tenant(f"portal{uuid.uuid4().hex[:6]}")
    admin = new_account(platform, "tenant_admin", tenant["id"])
    page = page_of()
    base = f"{platform.api_url}/portal/tenants/{tenant['id']}"

    page.goto(platform.api_url + "/portal/")
    screenshot(page, "portal-sign-in-desktop")
    page.set_viewport_size(PHONE)
    screenshot(page, "portal-sign-in-360px")
    page.set_viewport_size(DESKTOP)
    sign_in(page, platform, admin)
    assert page.url == base
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    assert tenant["server_name"] in page.locator("main").inner_text()

    # Create a user; the API's refusal of a bad name first shows beside the field.
    page.goto(base + "/users")
    page.get_by_label("Username").fill("Not Valid!")
    page.get_by_label("Password", exact=True).fill("alice-secret-1")
    page.get_by_role("button", name="Create user").click()
    error = page.locator("#create-user-username-error")
    assert error.inner_text().strip(), page.content()
    assert page.get_by_label("Username").input_value() == "Not Valid!"
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password", exact=True).fill("alice-secret-1")
    page.get_by_role("button", name="Create user").click()
    alice = f"@alice:{tenant['server_name']}"
    assert f"User {alice} created." in page.locator(".messages").inner_text()
    assert alice in page.locator("table").inner_text()
    page.get_by_label("Search users").fill("ali")
    page.get_by_role("button", name="Search").click()
    assert alice in page.locator("table").inner_text()

    # Reset alice's password (she signs in with the new one); deactivate bob for good.
    page.get_by_text("Reset password of alice").click()
    page.get_by_label("New password for alice").fill("alice-secret-2")
    page.get_by_role("button", name="Reset password", exact=True).click()
    assert f"Password of {alice} reset" in page.locator(".messages").inner_text()
    page.get_by_label("Username").fill("bob")
    page.get_by_label("Password", exact=True).fill("bob-secret-123")
    page.get_by_role("button", name="Create user").click()
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Deactivate bob").click()
    assert "deactivated" in page.locator(".messages").inner_text()
    # Deactivated accounts stay listed, flagged, with nothing left to do to them.
    bob_row = page.locator("tr", has_text="@bob:")
    assert "deactivated" in bob_row.inner_text()
    assert page.get_by_role("button", name="Deactivate bob").count() == 0

    # Registration tokens: one for five sign-ups.
    page.goto(base + "/registration-tokens")
    page.get_by_label("Uses allowed").fill("5")
    page.get_by_role("button", name="Create token").click()
    created = re.search(r"Registration token (\S+) created", page.locator(".messages").inner_text())
    assert created and created.group(1) in page.locator("table").inner_text()

    # A real Matrix client sends through the proxy; the messages appear in usage.
    send_messages(tenant["homeserver_path_url"], alice, "alice-secret-2", 3)
    usage_url = base + "/usage"
    poll(
        lambda: messages_this_month(page, usage_url) >= 3,
        timeout=60,
        interval=1,
        what="the 3 messages in the usage page",
    )
    table = page.locator("#usage-table").inner_text()
    assert re.search(r"\b3\b", table), table

    # An API key: created (secret shown once), it works, then it is revoked and does not.
    page.goto(base + "/api-keys")
    page.get_by_label("Name").fill("usage export")
    page.get_by_label("usage:read").check()
    page.get_by_role("button", name="Create key").click()
    secret = page.get_by_label("Your new API key").input_value()
    assert secret.startswith("c3k_")
    screenshot(page, "portal-api-key-created-desktop")
    usage = f"{platform.api_url}/v1/tenants/{tenant['id']}/usage"
    headers = {"Authorization": f"Bearer {secret}"}
    assert httpx.get(usage, headers=headers).status_code == 200
    page.goto(base + "/api-keys")
    assert secret not in page.content()
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Revoke usage export").click()
    assert "revoked" in page.locator(".messages").inner_text()
    assert httpx.get(usage, headers=headers).status_code == 401

    # A form posted without its CSRF token is refused.
    page.goto(base + "/users")
    page.locator("form.inline-form input[name=csrf_token]").evaluate("node => node.remove()")
    page.get_by_label("Username").fill("mallory")
    page.get_by_label("Password", exact=True).fill("mallory-secret-1")
    with page.expect_response(lambda r: r.request.method == "POST") as posted:
        page.get_by_role("button", name="Create user").click()
    assert posted.value.status == 403
    assert "security token (CSRF)" in page.locator("main").inner_text()
    screenshot(page, "portal-csrf-refused-desktop")

    # Keyboard: the skip link is the first stop and leads to the content.
    page.goto(base)
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.textContent") == "Skip to content"

    # The client readiness check, run through the proxy against the real homeserver.
    page.goto(base)
    page.get_by_role("link", name="client readiness check").click()
    for title in ("Sliding sync (Element X)", "Password sign-in", "Server discovery (.well-known)"):
        assert "passed" in page.locator("tr", has_text=title).inner_text(), title
    assert "skipped" in page.locator("tr", has_text="TURN server (calls)").inner_text()

    for name, path in [
        ("overview", ""),
        ("readiness", "/readiness"),
        ("users", "/users"),
        ("registration-tokens", "/registration-tokens"),
        ("usage", "/usage"),
        ("invoices", "/invoices"),
        ("invoice-upcoming", "/invoices/upcoming"),
        ("api-keys", "/api-keys"),
        ("settings", "/settings"),
        ("audit", "/audit"),
    ]:
        shoot(page, base + path, name)
    csv = page.request.get(base + "/invoices/upcoming?format=csv")
    assert csv.status == 200 and csv.text().startswith("number,period,status")


def test_an_operator_retries_a_failed_provisioning_and_a_tenant_admin_sees_only_theirs(
    platform_env: dict[str, str], tmp_path: Path, page_of: Callable[[], Any]
) -> None:
    settings = {
        "C3_BACKEND": "fake",
        "C3_OPERATION_MAX_ATTEMPTS": "2",
        "C3_OPERATION_RETRY_BASE_S": "0.2",
        "C3_RECONCILE_INTERVAL_S": "1",
    }
    with isolated_platform(platform_env, tmp_path / "c3", **settings) as running:
        # The disk breaks: where tenants' homeservers go, a file is in the way.
        homeservers = running.data_dir / "homeservers"
        shutil.rmtree(homeservers, ignore_errors=True)
        homeservers.write_text("in the way\n")
        with running.api() as api:
            made = api.post("/v1/tenants", json={"slug": "brokenco", "display_name": "Broken"})
            other = api.post("/v1/tenants", json={"slug": "otherco", "display_name": "Other"})
            assert made.status_code == other.status_code == 202, made.text
            tenant, other_tenant = made.json(), other.json()

            def failed() -> bool:
                return api.get(made.headers["location"]).json()["state"] == "failed"

            poll(failed, timeout=60, what="the provisioning to fail")

        operator = new_account(running, "operator")
        page = page_of()
        sign_in(page, running, operator)
        assert page.url.endswith("/portal/fleet")
        page.goto(running.api_url + "/portal/operations/failed")
        row = page.locator("tr", has_text="brokenco.c3.test")
        assert "provision" in row.inner_text() and "gave up after 2 attempts" in row.inner_text()
        for name, path in [
            ("fleet", "/portal/fleet"),
            ("failed-operations", "/portal/operations/failed"),
            ("plans", "/portal/plans"),
        ]:
            shoot(page, running.api_url + path, f"operator-{name}")

        homeservers.unlink()  # repaired
        page.goto(running.api_url + "/portal/operations/failed")
        page.get_by_role("button", name="Retry provision of brokenco").click()
        assert "runs again" in page.locator(".messages").inner_text()

        def active_in_fleet() -> bool:
            page.goto(running.api_url + "/portal/fleet?q=brokenco")
            return "active" in page.locator("tbody tr").first.inner_text()

        poll(active_in_fleet, timeout=60, interval=0.5, what="brokenco active in the fleet")
        page.get_by_role("link", name="Broken").click()  # drill down, as operator
        expect(page.get_by_role("heading", name="Overview")).to_be_visible()
        shoot(page, page.url, "operator-tenant-drill-down")

        # A tenant admin of one tenant: the other tenant's pages do not exist for them.
        admin = new_account(running, "tenant_admin", tenant["id"])
        own = page_of()
        sign_in(own, running, admin)
        for path in ("", "/users", "/usage", "/api-keys"):
            response = own.goto(f"{running.api_url}/portal/tenants/{other_tenant['id']}{path}")
            assert response is not None and response.status == 404
            assert "otherco" not in own.content()
        assert own.goto(running.api_url + "/portal/fleet").status == 404
        screenshot(own, "portal-not-found-desktop")
