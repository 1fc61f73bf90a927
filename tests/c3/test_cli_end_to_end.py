"""The `c3` client commands as a user runs them (a `c3` process each) against the real
platform over HTTP: a tenant created with --wait shows its steps and ends active, suspend and
resume wait too, --json parses, status lists the components, keys are minted, listed and
revoked, a homeserver's log is printed, and errors end with a message and exit 1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.platform import RunningPlatform

pytestmark = pytest.mark.e2e


def c3(platform: RunningPlatform, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {
        "PATH": "/usr/bin:/bin",
        "C3_API_URL": platform.api_url,
        "C3_API_TOKEN": platform.token,
        **{k: v for k, v in platform.env.items() if k == "PYTHONPATH"},
    }
    done = subprocess.run(
        [sys.executable, "-m", "c3", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check:
        assert done.returncode == 0, f"c3 {' '.join(args)}: {done.stdout}\n{done.stderr}"
    return done


def as_json(done: subprocess.CompletedProcess) -> Any:
    return json.loads(done.stdout)


def test_a_tenant_created_with_wait_shows_its_steps_and_ends_active(
    platform: RunningPlatform,
) -> None:
    slug = f"cli{uuid.uuid4().hex[:8]}"
    created = c3(platform, "tenants", "create", slug, "--name", "CLI Co", "--wait")
    out = created.stdout
    # Progress as the worker goes: the attempt, each step, then the tenant as it ended.
    for step in ("attempt 1", "done: homeserver-record", "done: homeserver-running"):
        assert step in out, out
    assert out.index("done: homeserver-record") < out.index("done: homeserver-running")
    assert any(line.split() == ["status", "active"] for line in out.splitlines()), out

    listed = as_json(c3(platform, "tenants", "list", "--json"))
    ours = [t for t in listed if t["slug"] == slug]
    assert len(ours) == 1 and ours[0]["status"] == "active"
    table = c3(platform, "tenants", "list").stdout.splitlines()
    assert table[0].split()[:3] == ["id", "slug", "status"]
    assert any(slug in line and "active" in line for line in table[1:])

    suspended = c3(platform, "tenants", "suspend", slug, "--wait", "--json")
    assert as_json(suspended)["status"] == "suspended"
    assert "done:" in suspended.stderr  # progress goes to stderr when stdout is JSON
    assert as_json(c3(platform, "tenants", "resume", slug, "--wait", "--json"))["status"] == (
        "active"
    )

    tenant = as_json(c3(platform, "tenants", "get", slug, "--json"))
    lines = c3(platform, "logs", slug, "--lines", "5").stdout.splitlines()
    assert len(lines) == 5 and all(" - " in line for line in lines)
    logs = as_json(c3(platform, "logs", tenant["id"], "-n", "3", "--json"))
    assert logs["tenant_id"] == tenant["id"] and len(logs["lines"]) == 3


def test_operations_are_shown_and_waited_for(platform: RunningPlatform) -> None:
    slug = f"cli{uuid.uuid4().hex[:8]}"
    accepted = as_json(c3(platform, "tenants", "create", slug, "--json"))
    operation_id = accepted["operation"]["id"]
    waited = c3(platform, "operations", "wait", operation_id)
    assert "state" in waited.stdout and "succeeded" in waited.stdout
    shown = as_json(c3(platform, "operations", "get", operation_id, "--json"))
    assert shown["state"] == "succeeded" and shown["kind"] == "provision"
    # Only a failed operation can be retried: the API's 409 becomes a message and exit 1.
    refused = c3(platform, "operations", "retry", operation_id, check=False)
    assert refused.returncode == 1 and "409" in refused.stderr


def test_status_lists_every_component(platform: RunningPlatform) -> None:
    table = c3(platform, "status").stdout
    for component in ("api", "database", "redis", "proxy", "workers", "homeservers"):
        assert any(line.split()[:2] == [component, "up"] for line in table.splitlines()), table
    report = as_json(c3(platform, "status", "--json"))
    assert report["status"] == "ok"
    assert [c["name"] for c in report["components"]] == [
        "api",
        "database",
        "redis",
        "proxy",
        "workers",
        "homeservers",
    ]


def test_keys_are_minted_listed_and_revoked(platform: RunningPlatform) -> None:
    name = f"ci-{uuid.uuid4().hex[:6]}"
    created = as_json(
        c3(platform, "keys", "create", "--name", name, "--scope", "tenants:read", "--json")
    )
    assert created["key"].startswith("c3k_") and created["scopes"] == ["tenants:read"]
    listed = as_json(c3(platform, "keys", "list", "--json"))
    assert [k["name"] for k in listed if k["id"] == created["id"]] == [name]
    assert all("key" not in k for k in listed)  # secrets are shown once, at creation

    # The new key works for reading, and is refused once revoked.
    env_key = {**platform.env}
    reader = RunningPlatform(**{**platform.__dict__, "token": created["key"], "env": env_key})
    assert isinstance(as_json(c3(reader, "tenants", "list", "--json")), list)
    revoked = as_json(c3(platform, "keys", "revoke", created["id"], "--json"))
    assert revoked["revoked_at"] is not None
    refused = c3(reader, "tenants", "list", check=False)
    assert refused.returncode == 1 and "401" in refused.stderr


def test_errors_end_with_a_message_and_exit_1(platform: RunningPlatform) -> None:
    missing = str(uuid.uuid4())
    done = c3(platform, "tenants", "get", missing, check=False)
    assert done.returncode == 1
    assert done.stderr.startswith("c3: 404") and missing in done.stderr
    assert "Traceback" not in done.stderr
    unknown = c3(platform, "tenants", "get", "no-such-slug-here", check=False)
    assert unknown.returncode == 1 and "no tenant with id or slug" in unknown.stderr


def test_version_and_completion(platform: RunningPlatform) -> None:
    assert c3(platform, "version").stdout.startswith("c3 ")
    assert as_json(c3(platform, "version", "--json"))["c3"]
    # Shell completion as bash asks for it from the installed `c3` script: `c3 tenants cr<TAB>`.
    script = Path(sys.executable).with_name("c3")
    completed = subprocess.run(
        [str(script)],
        env={
            **os.environ,
            "_C3_COMPLETE": "complete_bash",
            "COMP_WORDS": "c3 tenants cr",
            "COMP_CWORD": "2",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.stdout.split() == ["create"], completed.stderr
