"""Settings: validated at start-up, no default secrets outside local mode."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from platform_core.settings import Settings


@pytest.fixture(autouse=True)
def no_c3_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests build Settings from arguments only, whatever this session exported."""
    for name in [n for n in os.environ if n.startswith("C3_")]:
        monkeypatch.delenv(name)


def production(**changes: object) -> Settings:
    """Production settings that start (PostgreSQL, Redis, long secrets), with ``changes``."""
    valid: dict[str, object] = {
        "mode": "production",
        "database_url": "postgresql://db/c3",
        "redis_url": "redis://r",
        "secret_key": "k" * 32,
        "operator_token": "t" * 32,
    }
    return Settings(**{**valid, **changes})  # type: ignore[arg-type]


def test_production_refuses_to_start_without_explicit_secrets_and_services() -> None:
    with pytest.raises(ValidationError) as error:
        Settings(mode="production")
    message = str(error.value)
    for name in ("C3_DATABASE_URL", "C3_REDIS_URL", "C3_SECRET_KEY", "C3_OPERATOR_TOKEN"):
        assert name in message


def test_production_refuses_sqlite() -> None:
    with pytest.raises(ValidationError, match="PostgreSQL"):
        production(database_url="sqlite:///x.db")


def test_the_fake_backend_and_its_failure_injection_stay_out_of_real_runs() -> None:
    with pytest.raises(ValidationError, match="C3_BACKEND=fake"):
        Settings(fake_backend_fail="acme")
    with pytest.raises(ValidationError, match="not in production"):
        production(backend="fake")
    assert Settings(backend="fake", fake_backend_crash="acme").fake_backend_crash == "acme"


def test_short_secret_keys_and_clashing_ports_fail_fast() -> None:
    with pytest.raises(ValidationError, match="32 characters"):
        Settings(secret_key="short")
    with pytest.raises(ValidationError, match="must differ"):
        Settings(api_port=9000, proxy_port=9000)


def test_homeserver_ports_are_a_range_within_the_unprivileged_ports() -> None:
    assert Settings(homeserver_ports=" 20000 - 29999 ").homeserver_ports == "20000-29999"
    for bad in ("20000", "29999-20000", "80-9000", "20000-70000", "a-b"):
        with pytest.raises(ValidationError, match="C3_HOMESERVER_PORTS must be LOW-HIGH"):
            Settings(homeserver_ports=bad)


@pytest.mark.parametrize(
    ("public", "expected"),
    [
        (None, "http://acme.c3.localhost:8080"),
        ("https://chat.example.com", "https://acme.chat.example.com"),
        ("https://chat.example.com:443/", "https://acme.chat.example.com"),
        ("http://proxy.internal:8443", "http://acme.chat.example.com:8443"),
    ],
)
def test_homeserver_url_follows_the_public_proxy_url(public: str | None, expected: str) -> None:
    base_domain = "c3.localhost" if public is None else "chat.example.com"
    settings = Settings(proxy_public_url=public, base_domain=base_domain)
    assert settings.homeserver_url(f"acme.{base_domain}") == expected


def test_base_domain_is_normalised() -> None:
    assert Settings(base_domain="Chat.Example.COM.").base_domain == "chat.example.com"
    with pytest.raises(ValidationError, match="DNS name"):
        Settings(base_domain="bad..domain")


def test_production_needs_an_operator_token_too_long_to_guess() -> None:
    with pytest.raises(ValidationError, match="C3_OPERATOR_TOKEN must be at least 32 characters"):
        production(operator_token="hunter2-but-longer")
    assert production().operator_token
    assert Settings(operator_token="short").operator_token == "short"  # local mode: fine


def test_outbound_allowed_networks_are_comma_separated_cidrs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert Settings().outbound_allowed_networks == []  # nothing internal is allowed by default
    monkeypatch.setenv("C3_OUTBOUND_ALLOWED_NETWORKS", "127.0.0.1/32, 10.20.0.0/16,fd00::/8")
    assert [str(n) for n in Settings().outbound_allowed_networks] == [
        "127.0.0.1/32",
        "10.20.0.0/16",
        "fd00::/8",
    ]
    monkeypatch.setenv("C3_OUTBOUND_ALLOWED_NETWORKS", "127.0.0.1/32,intranet")
    with pytest.raises(ValidationError, match="C3_OUTBOUND_ALLOWED_NETWORKS must be"):
        Settings()


def test_an_object_store_url_needs_a_bucket_and_both_credentials() -> None:
    with pytest.raises(ValidationError, match="C3_OBJECT_STORE_BUCKET"):
        Settings(object_store_url="https://s3.example.com")
    with pytest.raises(ValidationError, match="go together"):
        Settings(
            object_store_url="https://s3.example.com",
            object_store_bucket="b",
            object_store_access_key_id="AKIA1",
        )
    with pytest.raises(ValidationError, match="http"):
        Settings(object_store_url="s3://bucket", object_store_bucket="b")
    with pytest.raises(ValidationError, match="C3_OBJECT_STORE_PREFIX"):
        Settings(
            object_store_url="https://s3.example.com",
            object_store_bucket="b",
            object_store_prefix="a/../b",
        )
    with pytest.raises(ValidationError, match="7 days"):
        Settings(
            object_store_url="https://s3.example.com",
            object_store_bucket="b",
            export_link_ttl_s=8 * 24 * 3600,
        )
    empty = Settings(object_store_url="")  # the chart's empty default: the data directory
    assert empty.object_store_url is None


def test_the_object_store_secret_is_never_shown() -> None:
    settings = Settings(
        object_store_url="https://s3.example.com/",
        object_store_bucket="b",
        object_store_access_key_id="AKIA1",
        object_store_secret_access_key="very-secret-s3-key",
        object_store_prefix="/c3/prod/",
    )
    assert settings.object_store_url == "https://s3.example.com"
    assert settings.object_store_prefix == "c3/prod"
    assert "very-secret-s3-key" not in repr(settings) + str(settings)
    assert "very-secret-s3-key" not in settings.model_dump_json()


def test_production_on_kubernetes_needs_an_object_store() -> None:
    with pytest.raises(ValidationError, match="C3_OBJECT_STORE_URL"):
        production(backend="kubernetes")
    production(
        backend="kubernetes", object_store_url="https://s3.example.com", object_store_bucket="b"
    )
