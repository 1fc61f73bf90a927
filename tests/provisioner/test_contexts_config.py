"""Every tenant homeserver gets the platform's application service and the confinement
module, and a homeserver made before contexts existed gets its tokens once."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import yaml
from sqlalchemy import select
from synapse.config.homeserver import HomeServerConfig

from platform_core import appservice
from platform_core.crypto import SecretBox
from platform_core.db import task_session
from platform_core.models import Homeserver, HomeserverDesiredState, Plan, Tenant
from platform_core.settings import get_settings
from provisioner import steps
from provisioner.synapse_config import (
    APPSERVICE_FILE,
    HomeserverSecrets,
    HomeserverSpec,
    write_homeserver_files,
)
from tests.helpers.factories import make_tenant

URL = "http://127.0.0.1:8000/_c3/appservice/t-1"


def _spec(tmp_path: Path) -> HomeserverSpec:
    return HomeserverSpec(
        server_name="acme.c3.test",
        public_baseurl="https://acme.c3.test/",
        port=41234,
        bind_address="127.0.0.1",
        data_dir=tmp_path / "hs",
        limits={},
        appservice_url=URL,
    )


def test_synapse_loads_the_application_service_and_the_module(tmp_path: Path) -> None:
    secrets = HomeserverSecrets.generate()
    write_homeserver_files(_spec(tmp_path), secrets)
    registration = yaml.safe_load((tmp_path / "hs" / APPSERVICE_FILE).read_text())
    assert registration["url"] == URL
    assert registration["as_token"] == secrets.appservice_as_token
    assert registration["hs_token"] == secrets.appservice_hs_token
    assert registration["sender_localpart"] == appservice.SERVICE_LOCALPART
    [users] = registration["namespaces"]["users"]
    assert users["exclusive"] is True
    assert (tmp_path / "hs" / APPSERVICE_FILE).stat().st_mode & 0o077 == 0  # holds tokens

    loaded = HomeServerConfig.load_config("c3", ["-c", str(tmp_path / "hs" / "homeserver.yaml")])
    assert loaded.appservice.app_service_config_files == [str(tmp_path / "hs" / APPSERVICE_FILE)]
    [(module, config)] = loaded.modules.loaded_modules
    assert f"{module.__module__}.{module.__qualname__}" == appservice.CONFINEMENT_MODULE
    assert config["service_user_id"] == "@c3-context:acme.c3.test"


def test_a_stand_in_without_an_appservice_url_gets_neither(tmp_path: Path) -> None:
    write_homeserver_files(
        replace(_spec(tmp_path), appservice_url=None), HomeserverSecrets.generate()
    )
    config = yaml.safe_load((tmp_path / "hs" / "homeserver.yaml").read_text())
    assert "app_service_config_files" not in config and "modules" not in config


def test_older_secrets_get_appservice_tokens_once() -> None:
    old = HomeserverSecrets.from_dict(
        {k: v for k, v in HomeserverSecrets.generate().to_dict().items() if "appservice" not in k}
    )
    assert old.appservice_as_token == ""
    upgraded = old.with_appservice_tokens()
    assert upgraded.appservice_as_token and upgraded.appservice_hs_token
    assert upgraded.appservice_as_token != upgraded.appservice_hs_token
    assert upgraded.with_appservice_tokens() is upgraded
    assert upgraded.registration_shared_secret == old.registration_shared_secret


def test_external_users_are_recognised_by_their_namespace() -> None:
    assert appservice.is_external_user("@c3x-ab12:acme.c3.test", "acme.c3.test")
    assert not appservice.is_external_user("@c3x-ab12:other.c3.test", "acme.c3.test")
    assert not appservice.is_external_user("@alice:acme.c3.test", "acme.c3.test")
    assert not appservice.is_external_user("@c3-context:acme.c3.test", "acme.c3.test")


def test_an_existing_homeserver_gets_its_application_service_on_its_next_render(
    platform_env: dict[str, str],
) -> None:
    """A homeserver made before contexts: the next reconfigure or reconcile pass (both go
    through ``target_for``) gives it tokens, kept from then on, and the receiver's URL."""
    tenant_id = make_tenant()
    settings = get_settings()
    box = SecretBox(settings.require_secret_key())
    before = {
        k: v for k, v in HomeserverSecrets.generate().to_dict().items() if "appservice" not in k
    }
    with task_session() as session:
        session.add(
            Homeserver(
                tenant_id=tenant_id,
                backend="local",
                desired_state=HomeserverDesiredState.RUNNING,
                secrets_encrypted=box.encrypt_json(before),
            )
        )
    ctx = steps.Context(settings, steps.make_backend(settings))
    tokens = []
    for _ in range(2):
        with task_session() as session:
            tenant = session.get(Tenant, tenant_id)
            hs = session.scalars(select(Homeserver).where(Homeserver.tenant_id == tenant_id)).one()
            assert tenant is not None
            target = steps.target_for(ctx, tenant, session.get(Plan, tenant.plan_id), hs)  # type: ignore[arg-type]
            tokens.append(target.secrets.appservice_as_token)
            assert target.appservice_url == (
                f"http://{settings.api_host}:{settings.api_port}/_c3/appservice/{tenant_id}"
            )
    assert tokens[0] and tokens[0] == tokens[1]  # made once, then kept
    with task_session() as session:
        hs = session.scalars(select(Homeserver).where(Homeserver.tenant_id == tenant_id)).one()
        stored = box.decrypt_json(hs.secrets_encrypted or "")
    assert stored["appservice_as_token"] == tokens[0]
    assert stored["registration_shared_secret"] == before["registration_shared_secret"]
