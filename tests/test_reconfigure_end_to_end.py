"""Homeserver settings changes in a burst on the real platform (`c3 up`, stand-in homeservers):
they coalesce into at most two reconfigure operations (two homeserver restarts), and the
homeserver ends up with the last value."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select

from platform_core.db import make_sync_engine
from platform_core.models import Operation, OperationKind
from provisioner.backends.fake import CONFIG_NAME
from tests.helpers.environment import isolated_platform
from tests.helpers.platform import poll

pytestmark = pytest.mark.e2e


def test_six_quick_setting_changes_restart_the_homeserver_at_most_twice(
    platform_env: dict[str, str], tmp_path: Path
) -> None:
    with isolated_platform(
        platform_env, tmp_path / "c3", C3_BACKEND="fake", C3_FAKE_HOMESERVER_BOOT_S="0.3"
    ) as running:
        tenant = running.create_tenant(f"burst{uuid.uuid4().hex[:6]}")
        url = f"/v1/tenants/{tenant['id']}"
        with running.api() as api:
            locations = set()
            for days in range(1, 7):  # six toggles back to back, as a settings page sends them
                answer = api.patch(url, json={"message_retention": {"max_lifetime_days": days}})
                assert answer.status_code == 200, answer.text
                locations.add(answer.headers["location"])
            assert 1 <= len(locations) <= 2

            def all_succeeded() -> bool:
                states = [api.get(location).json()["state"] for location in locations]
                assert "failed" not in states, states
                return all(state == "succeeded" for state in states)

            poll(all_succeeded, timeout=90, what="the reconfigure operations to succeed")

        engine = make_sync_engine(running.env["C3_DATABASE_URL"])
        try:
            with engine.connect() as conn:
                operations = conn.execute(
                    select(Operation.id).where(
                        Operation.tenant_id == uuid.UUID(tenant["id"]),
                        Operation.kind == OperationKind.RECONFIGURE,
                    )
                ).all()
        finally:
            engine.dispose()
        assert len(operations) == len(locations)
        config = json.loads((running.homeserver_dir(tenant["id"]) / CONFIG_NAME).read_text())
        assert config["settings"]["message_retention"] == {"max_lifetime_days": 6}
