"""End to end: the ``<c3-conversation>`` widget in real Chromium on a customer's page (another
origin, served by a tiny HTTP server here), loaded from the platform's API and talking to a real
Synapse through the proxy, with a tenant user on matrix-nio on the other side: messages both
ways, a file each way, typing and "seen", a network drop it recovers from, a reload that keeps
the conversation, and a credential that stops working shown as "access ended".

Playwright's async API drives Debian's chromium here (same binary and flags as
``tests/helpers/browser.py``): the Matrix peer is matrix-nio, which is async, and both share
the test's event loop."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import nio
import pytest

from c3.local_run import free_port
from tenant_api.widget.asset import widget_asset
from tests.helpers.browser import CHROMIUM, CHROMIUM_ARGS, DESKTOP, SCREENSHOT_DIR
from tests.helpers.environment import platform_fixture
from tests.helpers.matrix import login
from tests.helpers.platform import RunningPlatform, poll_async

pytestmark = pytest.mark.e2e

ALICE_PASSWORD = "alice-secret-1"
WAIT_MS = 30_000
# A 1x1 PNG: an image the widget must show inline (fetched with the token, as a blob).
PIXEL = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360f8cfc0f01f0005000201"
    "7e2a9c9d0000000049454e44ae426082"
)

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Claim 4711 - Example Insurance</title>
<script type="module" src="{widget_url}"></script>
<style>c3-conversation {{ --c3-accent: #006d5b; --c3-own-bg: #006d5b; --c3-height: 520px; }}</style>
</head><body>
<h1>Claim 4711</h1>
<c3-conversation></c3-conversation>
<script type="module">
  const element = document.querySelector("c3-conversation");
  window.c3Events = [];
  for (const name of ["c3-ready", "c3-access-ended", "c3-connection"]) {{
    element.addEventListener(name, (event) => window.c3Events.push([name, event.detail]));
  }}
  // The customer's backend hands the page the credential it got from C3.
  element.credential = await (await fetch("/credential")).json();
</script>
</body></html>
"""


class CustomerSite:
    """The customer's web site on its own origin: the page and its backend's /credential."""

    def __init__(self, widget_url: str) -> None:
        self.credential: dict[str, Any] = {}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        page = PAGE.format(widget_url=widget_url).encode()
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/credential":
                    body, kind = json.dumps(site.credential).encode(), "application/json"
                else:
                    body, kind = page, "text/html; charset=utf-8"
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)

    @contextmanager
    def serving(self) -> Iterator[CustomerSite]:
        thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.server.shutdown()
            self.server.server_close()


widget_platform = platform_fixture(
    "c3-widget",
    "The platform with tenants at <slug>.c3.localhost: loopback names Chromium resolves.",
    C3_BASE_DOMAIN="c3.localhost",
)


@pytest.fixture(scope="module")
def tenant(widget_platform: RunningPlatform) -> dict[str, Any]:
    created = widget_platform.create_tenant(f"wg{uuid.uuid4().hex[:6]}")
    alice = widget_platform.create_user(created["id"], "alice", ALICE_PASSWORD)
    return {**created, "alice": alice}


@pytest.fixture
async def alice(tenant: dict[str, Any]) -> AsyncIterator[nio.AsyncClient]:
    client = await login(tenant["homeserver_path_url"], tenant["alice"], ALICE_PASSWORD)
    await client.set_displayname("Alice Agent")
    yield client
    await client.close()


def open_context(platform: RunningPlatform, tenant: dict[str, Any], ref: str) -> str:
    """The back office opens context ``ref`` with Alice in it; its room id."""
    with platform.api() as api:
        created = api.put(
            f"/v1/tenants/{tenant['id']}/contexts/{ref}",
            json={"title": f"Claim {ref}", "participants": [{"user": "alice"}]},
        )
        assert created.status_code == 201, created.text
        return str(created.json()["room_id"])


def external_credential(
    platform: RunningPlatform, tenant: dict[str, Any], ref: str, ttl_s: int = 3600
) -> dict[str, Any]:
    """What the customer's backend gets for Pat (POST …/participants) and hands the page."""
    with platform.api() as api:
        added = api.post(
            f"/v1/tenants/{tenant['id']}/contexts/{ref}/participants",
            json={"display_name": "Pat Patient", "ttl_s": ttl_s},
        )
        assert added.status_code == 201, added.text
        credential = dict(added.json()["credential"])
    # By host name (<slug>.c3.localhost): Chromium resolves it to loopback.
    assert credential["homeserver_url"] == tenant["homeserver_url"]
    return credential


@pytest.fixture
async def chromium() -> AsyncIterator[Any]:
    if shutil.which(CHROMIUM) is None:
        pytest.skip("browser tests need Debian's chromium (scripts/system_deps installs it)")
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


async def shot(page: Any, name: str) -> None:
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOT_DIR / f"{name}.png"), full_page=True)


def widget_url(platform: RunningPlatform) -> str:
    return f"{platform.api_url}/widget/{widget_asset().version}/c3-conversation.js"


async def texts(client: nio.AsyncClient, room_id: str) -> list[tuple[str, str, dict]]:
    """(sender, msgtype, content) of the room's latest messages, oldest first."""
    answer = await client.room_messages(room_id, start="", limit=50)
    assert isinstance(answer, nio.RoomMessagesResponse), answer
    return [
        (e.sender, e.source["content"].get("msgtype", ""), e.source["content"])
        for e in reversed(answer.chunk)
        if e.source.get("type") == "m.room.message"
    ]


async def bodies_from(client: nio.AsyncClient, room_id: str, sender: str) -> list[str]:
    return [c.get("body", "") for s, _, c in await texts(client, room_id) if s == sender]


async def ready(page: Any) -> dict[str, Any]:
    """Wait for the widget's c3-ready; the time to interactive it took on this page."""
    await page.wait_for_function(
        "window.c3Events && window.c3Events.some(([name]) => name === 'c3-ready')",
        timeout=WAIT_MS,
    )
    return dict(
        await page.evaluate(
            """() => ({
                ready_ms: performance.getEntriesByName("c3-conversation:ready")[0].startTime,
                connected_ms: performance.getEntriesByName("c3-conversation:connected")[0].startTime,
                dom_content_loaded_ms: performance.getEntriesByType("navigation")[0]
                    .domContentLoadedEventEnd,
            })"""
        )
    )


async def test_a_conversation_in_the_customers_page(
    widget_platform: RunningPlatform,
    tenant: dict[str, Any],
    alice: nio.AsyncClient,
    chromium: Any,
) -> None:
    room_id = open_context(widget_platform, tenant, "case-4711")
    await alice.room_send(
        room_id, "m.room.message", {"msgtype": "m.text", "body": "Welcome, this is claim 4711"}
    )
    site = CustomerSite(widget_url(widget_platform))
    site.credential = external_credential(widget_platform, tenant, "case-4711")
    assert site.credential["room_id"] == room_id
    pat = site.credential["user_id"]

    with site.serving():
        context = await chromium.new_context(viewport=DESKTOP)
        page = await context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        await page.goto(site.url)
        timing = await ready(page)
        print(
            f"\nwidget time to interactive on a localhost page: {timing['ready_ms']:.0f} ms after"
            f" navigation start ({timing['ready_ms'] - timing['connected_ms']:.0f} ms from the"
            f" element's start to its first sync rendered; DOMContentLoaded"
            f" {timing['dom_content_loaded_ms']:.0f} ms)"
        )
        widget = page.locator("c3-conversation")
        log = widget.locator("[role=log]")

        # History from before the page opened, with the sender's display name.
        welcome = log.locator(".msg", has_text="Welcome, this is claim 4711")
        await welcome.wait_for(timeout=WAIT_MS)
        assert await welcome.locator(".sender").inner_text() == "Alice Agent"
        assert "own" not in (await welcome.get_attribute("class") or "")

        # nio -> widget, live.
        await alice.room_send(
            room_id, "m.room.message", {"msgtype": "m.text", "body": "Could you send the invoice?"}
        )
        await log.locator(".msg", has_text="Could you send the invoice?").wait_for(timeout=WAIT_MS)

        # The widget read it: Alice sees Pat's read receipt on her message.
        await _wait_for_receipt(alice, room_id, pat)

        # Screen readers: a polite live log, a labelled field, buttons with names.
        assert await log.get_attribute("aria-live") == "polite"
        assert await log.get_attribute("aria-label") == "Conversation"
        await widget.get_by_role("button", name="Attach a file").wait_for()
        await widget.get_by_role("button", name="Send").wait_for()

        # widget -> nio, by keyboard alone: Tab from the page into the labelled field (after
        # the focusable log), Enter sends.
        box = widget.get_by_label("Message")
        await page.keyboard.press("Tab")
        await page.keyboard.press("Tab")
        assert await box.evaluate("(el) => el.getRootNode().activeElement === el")
        await box.type("Sure, one moment")
        await _wait_for_typing(alice, room_id, pat)  # typing went out while composing
        await page.keyboard.press("Enter")
        sent = log.locator(".msg.own", has_text="Sure, one moment")
        await sent.wait_for(timeout=WAIT_MS)
        await poll_async(
            lambda: _contains(alice, room_id, pat, "Sure, one moment"),
            timeout=30,
            what="Alice to receive the widget's message",
        )

        # Alice reads it -> "Seen by Alice Agent" under the widget's message.
        mine = [b for s, _, b in await texts(alice, room_id) if s == pat]
        assert mine, "no message from the widget"
        own_event = await _last_event_of(alice, room_id, pat)
        await alice.room_read_markers(room_id, own_event, own_event)
        await widget.locator(".seen", has_text="Seen by Alice Agent").wait_for(timeout=WAIT_MS)

        # Alice types -> the widget says so; she stops -> it stops saying so.
        await alice.room_typing(room_id, True, timeout=20_000)
        typing = widget.locator(".typing")
        await typing.filter(has_text="Alice Agent is typing…").wait_for(timeout=WAIT_MS)
        await alice.room_typing(room_id, False)
        await page.wait_for_function(
            "() => !document.querySelector('c3-conversation').shadowRoot"
            ".querySelector('.typing').textContent",
            timeout=WAIT_MS,
        )

        # A file from the widget arrives at Alice, byte for byte.
        invoice = b"%PDF-1.4 invoice 4711 " + uuid.uuid4().bytes * 64
        await widget.locator("input[type=file]").set_input_files(
            {"name": "invoice-4711.pdf", "mimeType": "application/pdf", "buffer": invoice}
        )
        await log.locator(".msg.own a", has_text="invoice-4711.pdf").wait_for(timeout=WAIT_MS)
        file_event = await poll_async(
            lambda: _file_from(alice, room_id, pat, "invoice-4711.pdf"),
            timeout=30,
            what="the widget's file at Alice",
        )
        assert file_event["msgtype"] == "m.file"
        assert file_event["info"]["mimetype"] == "application/pdf"
        downloaded = await _download(alice, file_event["url"])
        assert hashlib.sha256(downloaded).digest() == hashlib.sha256(invoice).digest()

        # An image from Alice shows inline in the widget (authenticated media, via the proxy).
        uploaded, _ = await alice.upload(
            lambda *_: PIXEL, content_type="image/png", filename="photo.png", filesize=len(PIXEL)
        )
        assert isinstance(uploaded, nio.UploadResponse), uploaded
        await alice.room_send(
            room_id,
            "m.room.message",
            {
                "msgtype": "m.image",
                "body": "photo.png",
                "url": uploaded.content_uri,
                "info": {"mimetype": "image/png", "size": len(PIXEL), "w": 1, "h": 1},
            },
        )
        image = log.locator("img[alt='photo.png']")
        await image.wait_for(timeout=WAIT_MS)
        await page.wait_for_function(
            "() => [...document.querySelector('c3-conversation').shadowRoot"
            ".querySelectorAll('img')].some((img) => img.complete && img.naturalWidth === 1)",
            timeout=WAIT_MS,
        )
        await shot(page, "widget-conversation")

        # Network drop: both sides keep talking; the widget catches up and sends its queue once.
        await context.set_offline(True)
        status = widget.locator("[role=status]")
        await status.filter(has_text="Offline").wait_for(timeout=WAIT_MS)
        await alice.room_send(
            room_id, "m.room.message", {"msgtype": "m.text", "body": "Are you still there?"}
        )
        await box.type("Yes, my train went into a tunnel")
        await page.keyboard.press("Enter")
        await log.locator(".msg.pending", has_text="tunnel").wait_for(timeout=WAIT_MS)
        await shot(page, "widget-offline")
        await context.set_offline(False)
        await log.locator(".msg", has_text="Are you still there?").wait_for(timeout=WAIT_MS)
        await log.locator(".msg.own:not(.pending)", has_text="tunnel").wait_for(timeout=WAIT_MS)
        await poll_async(
            lambda: _contains(alice, room_id, pat, "Yes, my train went into a tunnel"),
            timeout=30,
            what="the message queued offline to reach Alice",
        )
        assert await status.inner_text() == ""

        # Reload: the conversation is back (history from the homeserver), nothing resent.
        await page.reload()
        await ready(page)
        for text in ("Welcome, this is claim 4711", "Sure, one moment", "tunnel"):
            await log.locator(".msg", has_text=text).first.wait_for(timeout=WAIT_MS)
        assert await log.locator(".msg", has_text="tunnel").count() == 1
        assert (await bodies_from(alice, room_id, pat)).count("Sure, one moment") == 1
        assert (await bodies_from(alice, room_id, pat)).count(
            "Yes, my train went into a tunnel"
        ) == 1
        # The token is nowhere the page did not put it: not in storage, not in the DOM.
        stored = await page.evaluate("() => JSON.stringify({...sessionStorage, ...localStorage})")
        assert site.credential["access_token"] not in stored
        html = await page.evaluate("() => document.documentElement.outerHTML")
        assert site.credential["access_token"] not in html

        # The back office closes the case: the widget says access has ended and stops.
        with widget_platform.api() as api:
            closed = api.post(f"/v1/tenants/{tenant['id']}/contexts/case-4711/close")
            assert closed.status_code == 200, closed.text
        ended = widget.get_by_role("alert")
        await ended.filter(has_text="access to this conversation has ended").wait_for(
            timeout=WAIT_MS
        )
        assert await box.is_disabled()
        ended_events = await page.evaluate(
            "() => window.c3Events.filter(([name]) => name === 'c3-access-ended')"
        )
        # Removed from the room, or the token refused: whichever the widget saw first.
        assert ended_events[0][1]["reason"] in ("C3_LEFT", "M_UNKNOWN_TOKEN"), ended_events
        await shot(page, "widget-access-ended")
        assert errors == []
        await context.close()


async def test_the_proxy_lets_a_page_on_another_origin_call_the_homeserver(
    widget_platform: RunningPlatform, tenant: dict[str, Any]
) -> None:
    """What the browser asks before the widget's first authenticated call: the preflight,
    answered by Synapse and passed on by the proxy."""
    async with httpx.AsyncClient(base_url=tenant["homeserver_path_url"]) as http:
        preflight = await http.options(
            "/_matrix/client/v3/sync",
            headers={
                "Origin": "https://shop.example",
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization",
            },
        )
    assert preflight.status_code in (200, 204), preflight.text
    assert preflight.headers["access-control-allow-origin"] == "*"
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    assert "PUT" in preflight.headers["access-control-allow-methods"]


async def test_an_expired_credential_ends_access_in_the_page(
    widget_platform: RunningPlatform, tenant: dict[str, Any], chromium: Any
) -> None:
    open_context(widget_platform, tenant, "case-4712")
    site = CustomerSite(widget_url(widget_platform))
    site.credential = external_credential(widget_platform, tenant, "case-4712", ttl_s=5)
    with site.serving():
        context = await chromium.new_context(viewport=DESKTOP)
        page = await context.new_page()
        await page.goto(site.url)
        await ready(page)
        widget = page.locator("c3-conversation")
        assert await widget.get_by_label("Message").is_enabled()
        # The homeserver refuses the token at expiry; the widget asks again then and says so.
        await widget.get_by_role("alert").filter(has_text="has ended").wait_for(timeout=WAIT_MS)
        assert await widget.get_by_label("Message").is_disabled()
        ended = await page.evaluate(
            "() => window.c3Events.filter(([name]) => name === 'c3-access-ended')"
        )
        assert ended[0][1]["reason"] == "M_UNKNOWN_TOKEN"
        await context.close()


async def _contains(client: nio.AsyncClient, room_id: str, sender: str, body: str) -> bool:
    return body in await bodies_from(client, room_id, sender)


async def _file_from(
    client: nio.AsyncClient, room_id: str, sender: str, name: str
) -> dict[str, Any] | None:
    for who, msgtype, content in await texts(client, room_id):
        if who == sender and msgtype in ("m.file", "m.image") and content.get("body") == name:
            return content
    return None


async def _last_event_of(client: nio.AsyncClient, room_id: str, sender: str) -> str:
    answer = await client.room_messages(room_id, start="", limit=50)
    assert isinstance(answer, nio.RoomMessagesResponse), answer
    for event in answer.chunk:  # newest first
        if event.sender == sender and event.source.get("type") == "m.room.message":
            return str(event.event_id)
    raise AssertionError(f"no message from {sender}")


async def _download(client: nio.AsyncClient, mxc: str) -> bytes:
    server, media = mxc.removeprefix("mxc://").split("/", 1)
    async with httpx.AsyncClient(base_url=client.homeserver, timeout=30) as http:
        answer = await http.get(
            f"/_matrix/client/v1/media/download/{server}/{media}",
            headers={"Authorization": f"Bearer {client.access_token}"},
        )
    assert answer.status_code == 200, answer.text
    return answer.content


async def _wait_for_receipt(client: nio.AsyncClient, room_id: str, reader: str) -> None:
    """Until ``reader``'s m.read receipt reaches ``client`` through its /sync."""

    async def seen() -> bool:
        answer = await client.sync(timeout=1000)
        assert isinstance(answer, nio.SyncResponse), answer
        room = answer.rooms.join.get(room_id)
        for event in room.ephemeral if room else []:
            if isinstance(event, nio.ReceiptEvent) and any(
                r.user_id == reader and r.receipt_type == "m.read" for r in event.receipts
            ):
                return True
        return False

    await poll_async(seen, timeout=30, what=f"{reader}'s read receipt")


async def _wait_for_typing(client: nio.AsyncClient, room_id: str, typist: str) -> None:
    async def typing() -> bool:
        answer = await client.sync(timeout=1000)
        assert isinstance(answer, nio.SyncResponse), answer
        room = answer.rooms.join.get(room_id)
        return any(
            isinstance(event, nio.TypingNoticeEvent) and typist in event.users
            for event in (room.ephemeral if room else [])
        )

    await poll_async(typing, timeout=30, what=f"{typist} typing")
