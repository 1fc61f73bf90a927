"""End to end with matrix-js-sdk, the SDK behind Element Web: `c3 up` with the local base domain
``c3.localhost``, two users of a tenant on Node.js through the proxy, both ways in
(``/t/<slug>`` and the tenant's host name). The script is ``tests/js/client_check.mjs``; its
packages come from the npm registry (``npm ci`` against the committed lock file) at setup."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.helpers.environment import platform_fixture
from tests.helpers.platform import RunningPlatform, poll

pytestmark = pytest.mark.e2e

JS_DIR = Path(__file__).parent / "js"
NODE = shutil.which("node")
NPM = shutil.which("npm")


@pytest.fixture(scope="session")
def js_sdk() -> Path:
    """``tests/js/node_modules`` from the registry, installed once per session (``npm ci``)."""
    if NODE is None or NPM is None:
        pytest.skip("matrix-js-sdk client tests need Node.js and npm on PATH (node not found)")
    installed = subprocess.run(
        [NPM, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=JS_DIR,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert installed.returncode == 0, f"npm ci failed:\n{installed.stderr[-4000:]}"
    return JS_DIR / "client_check.mjs"


local_platform = platform_fixture(
    "c3-js",
    "The platform as `c3 up` runs it for a developer: tenants at <slug>.c3.localhost.",
    C3_BASE_DOMAIN="c3.localhost",
)


def run_client(script: Path, base_url: str, *credentials: str) -> dict:
    """Run the js-sdk check at ``base_url``; its JSON report (it exits non-zero on a failure)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("C3_")}
    done = subprocess.run(
        [str(NODE), str(script), base_url, *credentials],
        cwd=JS_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"js-sdk check failed:\n{done.stderr[-6000:]}"
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def bytes_out(platform: RunningPlatform, tenant_id: str) -> int:
    with platform.api() as api:
        response = api.get(f"/v1/tenants/{tenant_id}/usage")
        assert response.status_code == 200, response.text
        return int(response.json()["totals"]["bytes_out"])


@pytest.mark.parametrize("way_in", ["prefix", "host"])
def test_matrix_js_sdk_through_the_proxy(
    js_sdk: Path, local_platform: RunningPlatform, way_in: str
) -> None:
    slug = f"js{way_in}"
    tenant = local_platform.create_tenant(slug)
    server_name = tenant["server_name"]
    assert server_name == f"{slug}.c3.localhost"
    alice = local_platform.create_user(tenant["id"], "alice", "alice-secret-1")
    bob = local_platform.create_user(tenant["id"], "bob", "bob-secret-12")
    port = local_platform.proxy_url.rsplit(":", 1)[1]
    if way_in == "prefix":
        base_url = f"{local_platform.proxy_url}/t/{slug}"
    else:  # what a browser on this machine uses: *.localhost is loopback
        base_url = f"http://{server_name}:{port}"

    report = run_client(js_sdk, base_url, alice, "alice-secret-1", bob, "bob-secret-12")

    assert report["user_ids"] == [alice, bob]
    # One answer to "where is this homeserver": where the client already is.
    assert report["well_known"] == {"m.homeserver": {"base_url": base_url}}
    assert report["login_well_known"]["m.homeserver"] == {"base_url": base_url}
    assert report["messages"] == ["hello from js-sdk", "second message"]
    assert report["typing"] is True
    assert report["receipt"] is True

    media = report["media"]
    assert media["content_uri"].startswith(f"mxc://{server_name}/")
    assert media["status"] == 200
    assert media["size"] == 300_000
    assert media["downloaded_sha256"] == media["uploaded_sha256"]
    if way_in == "prefix":
        # The SDK dropped /t/<slug>: the proxy found the tenant by the media's server name.
        assert media["url"].startswith(
            f"{local_platform.proxy_url}/_matrix/client/v1/media/download/{server_name}/"
        )

    encrypted = report["encrypted"]
    assert encrypted["wire_type"] == "m.room.encrypted"
    assert encrypted["body"] == "the numbers are in"
    assert encrypted["sender"] == alice

    sliding = report["sliding_sync"]
    assert sliding["woken_by"] == "wake up, sliding sync"
    assert sliding["list_count"] >= 2
    assert sliding["waited_ms"] < 30_000  # woken by the message, not by the long-poll timeout

    # The download that lost its prefix was metered for the tenant like any other request.
    poll(
        lambda: bytes_out(local_platform, tenant["id"]) > 300_000,
        timeout=30,
        what="the media download in the tenant's usage",
    )


def test_media_urls_of_an_unknown_server_are_still_refused(
    local_platform: RunningPlatform,
) -> None:
    answer = httpx.get(
        f"{local_platform.proxy_url}/_matrix/client/v1/media/download/nobody.c3.localhost/AbCd"
    )
    assert answer.status_code == 421 and answer.json()["errcode"] == "M_UNRECOGNIZED"
