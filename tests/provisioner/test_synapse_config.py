"""Rendering a tenant's Synapse config: what the homeserver will actually enforce."""

from __future__ import annotations

from pathlib import Path

import yaml
from signedjson.key import read_signing_keys

from provisioner.synapse_config import (
    HomeserverSecrets,
    HomeserverSpec,
    render_homeserver_config,
    write_homeserver_files,
)


def spec(tmp_path: Path, **limits: object) -> HomeserverSpec:
    return HomeserverSpec(
        server_name="acme.c3.test",
        public_baseurl="https://acme.c3.test/",
        port=41234,
        bind_address="127.0.0.1",
        data_dir=tmp_path / "hs",
        limits=dict(limits),
    )


def test_config_locks_the_homeserver_down(tmp_path: Path) -> None:
    config = render_homeserver_config(spec(tmp_path), HomeserverSecrets.generate())
    [listener] = config["listeners"]
    assert listener["bind_addresses"] == ["127.0.0.1"] and listener["port"] == 41234
    assert listener["x_forwarded"] is True
    assert {n for r in listener["resources"] for n in r["names"]} == {"client", "media"}
    assert "federation" not in str(listener["resources"])
    assert config["federation_domain_whitelist"] == []
    assert config["trusted_key_servers"] == []
    assert config["enable_registration"] is False
    assert config["url_preview_enabled"] is False
    assert config["report_stats"] is False
    assert config["server_name"] == "acme.c3.test"
    assert config["public_baseurl"] == "https://acme.c3.test/"


def test_plan_limits_become_synapse_rate_limits(tmp_path: Path) -> None:
    config = render_homeserver_config(
        spec(
            tmp_path,
            rc_message_per_second=50,
            rc_message_burst=500,
            max_upload_size_bytes=10 * 1024 * 1024,
            max_mau=250,
        ),
        HomeserverSecrets.generate(),
    )
    assert config["rc_message"] == {"per_second": 50.0, "burst_count": 500}
    assert config["max_upload_size"] == str(10 * 1024 * 1024)
    assert config["limit_usage_by_mau"] is True and config["max_mau_value"] == 250


def test_default_message_rate_is_enterprise_grade_not_synapse_default(tmp_path: Path) -> None:
    config = render_homeserver_config(spec(tmp_path), HomeserverSecrets.generate())
    assert config["rc_message"]["per_second"] >= 10  # Synapse's own default is 0.2/s
    assert "limit_usage_by_mau" not in config


def test_every_tenant_gets_its_own_secrets_and_signing_key() -> None:
    a, b = HomeserverSecrets.generate(), HomeserverSecrets.generate()
    for field in (
        "registration_shared_secret",
        "macaroon_secret_key",
        "form_secret",
        "signing_key",
    ):
        assert getattr(a, field) != getattr(b, field)
    assert HomeserverSecrets.from_dict(a.to_dict()) == a


def test_files_are_written_once_readable_by_synapse_and_private(tmp_path: Path) -> None:
    hs_secrets = HomeserverSecrets.generate()
    assert write_homeserver_files(spec(tmp_path), hs_secrets) is True
    assert write_homeserver_files(spec(tmp_path), hs_secrets) is False  # idempotent
    directory = tmp_path / "hs"
    config = yaml.safe_load((directory / "homeserver.yaml").read_text())
    assert config["registration_shared_secret"] == hs_secrets.registration_shared_secret
    [key] = read_signing_keys((directory / "signing.key").read_text().splitlines())
    assert key.alg == "ed25519" and key.version.startswith("a_")
    for name in ("homeserver.yaml", "signing.key"):
        assert (directory / name).stat().st_mode & 0o077 == 0
    assert write_homeserver_files(spec(tmp_path, rc_message_burst=7), hs_secrets) is True
