"""Rendering a tenant's Synapse config: what the homeserver will actually enforce."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from signedjson.key import read_signing_keys
from synapse.config.homeserver import HomeServerConfig

from platform_core.errors import PermanentError
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


# Tenant homeserver settings (PATCH /v1/tenants/{id}) → Synapse options ---------------------

OIDC = {
    "issuer": "https://login.acme.example/realms/staff",
    "client_id": "c3-acme",
    "display_name": "Acme SSO",
    "scopes": ["openid", "profile"],
}
SETTING_SECRETS = {"turn_shared_secret": "turn-static-auth-secret", "oidc_client_secret": "oidc-s"}
SECRETS = HomeserverSecrets.generate()


def with_settings(tmp_path: Path, settings: dict, **limits: object) -> HomeserverSpec:
    return replace(spec(tmp_path, **limits), settings=settings, setting_secrets=SETTING_SECRETS)


def render(tmp_path: Path, settings: dict, **limits: object) -> dict:
    return render_homeserver_config(with_settings(tmp_path, settings, **limits), SECRETS)


def resource_names(config: dict) -> set[str]:
    [listener] = config["listeners"]
    return {name for resource in listener["resources"] for name in resource["names"]}


def test_federation_off_allowlist_and_open(tmp_path: Path) -> None:
    off = render(tmp_path, {})
    assert off["federation_domain_whitelist"] == [] and "federation" not in resource_names(off)
    assert off["federation_sender_instances"] == []  # nothing to send to: no sender runs
    allow = render(
        tmp_path,
        {"federation": {"mode": "allowlist", "allowed_servers": ["b.example", "a.example"]}},
    )
    assert allow["federation_domain_whitelist"] == ["a.example", "b.example"]
    assert "federation_sender_instances" not in allow  # Synapse's default: it sends itself
    assert resource_names(allow) == {"client", "federation", "media"}
    public = render(tmp_path, {"federation": {"mode": "open", "allowed_servers": []}})
    assert "federation_domain_whitelist" not in public  # no whitelist: any server
    assert "federation_sender_instances" not in public
    assert "federation" in resource_names(public)
    assert public["allow_public_rooms_over_federation"] is False


def test_registration_policies(tmp_path: Path) -> None:
    closed = render(tmp_path, {"registration": "closed"})
    assert closed["enable_registration"] is False
    token = render(tmp_path, {"registration": "token"})
    assert token["enable_registration"] is True and token["registration_requires_token"] is True
    assert "enable_registration_without_verification" not in token
    public = render(tmp_path, {"registration": "open"})
    assert public["enable_registration"] is True
    assert public["enable_registration_without_verification"] is True


def test_message_retention_is_a_default_policy_rooms_cannot_lengthen(tmp_path: Path) -> None:
    assert "retention" not in render(tmp_path, {})
    config = render(tmp_path, {"message_retention": {"max_lifetime_days": 30}})
    assert config["retention"]["enabled"] is True
    assert config["retention"]["default_policy"] == {"max_lifetime": "30d"}
    assert config["retention"]["allowed_lifetime_max"] == "30d"
    assert config["retention"]["purge_jobs"]
    assert config["experimental_features"] == {"msc1763_enabled": True}  # clients can read it


def test_the_smaller_of_plan_and_tenant_upload_cap_applies(tmp_path: Path) -> None:
    plan = {"max_upload_size_bytes": 10 * 1024 * 1024}
    lower = render(tmp_path, {"max_upload_size_bytes": 2 * 1024 * 1024}, **plan)
    assert lower["max_upload_size"] == str(2 * 1024 * 1024)
    # A plan moved below the tenant's own cap wins.
    higher = render(tmp_path, {"max_upload_size_bytes": 20 * 1024 * 1024}, **plan)
    assert higher["max_upload_size"] == str(10 * 1024 * 1024)


def test_turn_and_oidc_carry_their_secrets(tmp_path: Path) -> None:
    config = render(
        tmp_path,
        {"turn": {"uris": ["turns:turn.acme.example:443"], "user_lifetime_s": 600}, "oidc": OIDC},
    )
    assert config["turn_uris"] == ["turns:turn.acme.example:443"]
    assert config["turn_shared_secret"] == "turn-static-auth-secret"
    assert config["turn_user_lifetime"] == "600s" and config["turn_allow_guests"] is False
    [provider] = config["oidc_providers"]
    assert provider["idp_id"] == "oidc" and provider["idp_name"] == "Acme SSO"
    assert provider["issuer"] == OIDC["issuer"] and provider["client_secret"] == "oidc-s"
    assert provider["discover"] is True
    template = provider["user_mapping_provider"]["config"]["localpart_template"]
    assert "preferred_username" in template and "sub" in template


def test_a_missing_setting_secret_fails_clearly(tmp_path: Path) -> None:
    bare = replace(spec(tmp_path), settings={"oidc": OIDC})
    with pytest.raises(PermanentError, match="oidc_client_secret"):
        render_homeserver_config(bare, SECRETS)


ALL_SETTINGS = {
    "federation": {"mode": "allowlist", "allowed_servers": ["partner.example"]},
    "registration": "token",
    "message_retention": {"max_lifetime_days": 7},
    "max_upload_size_bytes": 4096,
    "turn": {"uris": ["turn:turn.acme.example:3478?transport=udp"], "user_lifetime_s": 3600},
    "oidc": OIDC,
}


def test_same_settings_same_files(tmp_path: Path) -> None:
    assert write_homeserver_files(with_settings(tmp_path, ALL_SETTINGS), SECRETS) is True
    assert write_homeserver_files(with_settings(tmp_path, dict(ALL_SETTINGS)), SECRETS) is False
    reordered = {
        **ALL_SETTINGS,
        "federation": {"mode": "allowlist", "allowed_servers": ["partner.example"] * 2},
    }
    assert write_homeserver_files(with_settings(tmp_path, reordered), SECRETS) is False
    changed = {**ALL_SETTINGS, "registration": "open"}
    assert write_homeserver_files(with_settings(tmp_path, changed), SECRETS) is True


def test_synapse_itself_accepts_the_rendered_settings(tmp_path: Path) -> None:
    """Synapse's own config loader (the one `synapse.app.homeserver` runs) reads it back."""
    write_homeserver_files(with_settings(tmp_path, ALL_SETTINGS), SECRETS)
    loaded = HomeServerConfig.load_config("c3", ["-c", str(tmp_path / "hs" / "homeserver.yaml")])
    assert set(loaded.federation.federation_domain_whitelist or {}) == {"partner.example"}
    assert loaded.worker.send_federation is True  # a federating homeserver sends itself
    assert loaded.registration.registration_requires_token is True
    assert loaded.retention.retention_default_max_lifetime == 7 * 86400 * 1000
    assert loaded.media.max_upload_size == 4096
    assert loaded.voip.turn_user_lifetime == 3600 * 1000
    assert [p.idp_id for p in loaded.oidc.oidc_providers] == ["oidc"]


def test_a_homeserver_that_does_not_federate_runs_no_federation_sender(tmp_path: Path) -> None:
    """Synapse reads the rendered config back as "another process sends federation": the
    homeserver starts no sender reading every event back for remote servers it cannot have."""
    write_homeserver_files(spec(tmp_path), SECRETS)
    loaded = HomeServerConfig.load_config("c3", ["-c", str(tmp_path / "hs" / "homeserver.yaml")])
    assert loaded.worker.send_federation is False
    assert loaded.worker.worker_app is None  # still the one main process, not a worker
    assert not loaded.federation.federation_domain_whitelist  # and no server to send to


def test_synapse_reaches_no_internal_network_unless_the_operator_allows_it(
    tmp_path: Path,
) -> None:
    """Federation, push gateways, URL previews and modules go through Synapse's IP
    blocklist: the loopback, link-local (cloud metadata), private and unique-local ranges are in
    it for every tenant; only C3_OUTBOUND_ALLOWED_NETWORKS is let through."""
    write_homeserver_files(spec(tmp_path), SECRETS)
    loaded = HomeServerConfig.load_config("c3", ["-c", str(tmp_path / "hs" / "homeserver.yaml")])
    for internal in ("127.0.0.1", "169.254.169.254", "10.1.2.3", "172.16.0.1", "192.168.1.1",
                     "100.64.0.1", "0.0.0.0", "::1", "fd00::1", "fe80::1", "::ffff:127.0.0.1"):  # fmt: skip
        assert internal in loaded.server.ip_range_blocklist, internal
    assert "93.184.215.14" not in loaded.server.ip_range_blocklist
    assert "127.0.0.1" not in loaded.server.ip_range_allowlist

    allowed = replace(spec(tmp_path), outbound_allowed_networks=("127.0.0.1/32",))
    write_homeserver_files(allowed, SECRETS)
    loaded = HomeServerConfig.load_config("c3", ["-c", str(tmp_path / "hs" / "homeserver.yaml")])
    assert "127.0.0.1" in loaded.server.ip_range_allowlist
    assert "127.0.0.2" not in loaded.server.ip_range_allowlist
