"""Render a tenant homeserver's Synapse configuration from its tenant, plan and secrets.

We write ``homeserver.yaml``, the log config and the signing key ourselves: it is
deterministic (same inputs, same files — so re-running a step is a no-op) and avoids
``--generate-config`` (1.3–1.5 s a call).
"""

from __future__ import annotations

import io
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from signedjson.key import generate_signing_key, write_signing_keys

from platform_core import appservice
from platform_core.errors import PermanentError
from platform_core.homeserver_settings import (
    DEFAULT_MAX_UPLOAD_SIZE_BYTES,
    OIDC_CLIENT_SECRET,
    TURN_SHARED_SECRET,
    FederationMode,
    RegistrationPolicy,
    effective_max_upload_bytes,
    federation_mode,
    registration_policy,
)
from platform_core.outbound import OUTBOUND_BLOCKED_NETWORKS
from platform_core.private_files import write_private
from platform_core.routes import (
    DEFAULT_PROXY_MAX_CONCURRENT,
    DEFAULT_PROXY_RATE_BURST,
    DEFAULT_PROXY_RATE_PER_SECOND,
)

# Synapse's memory per plan (issue 16, "Synapse's own footprint"; measured in
# docs/benchmarks.md with benchmarks/synapse_footprint_bench.py):
#   synapse_cache_factor          caches.global_factor: scales every cache's size (Synapse: 0.5)
#   synapse_event_cache_size      event_cache_size: events kept in memory (Synapse: 10000)
#   synapse_cache_max_memory_mib  caches.cache_autotuning: above this many MiB of jemalloc
#                                 heap Synapse evicts cache entries down to 3/4 of it (only with
#                                 jemalloc loaded, C3_SYNAPSE_JEMALLOC; 0 or absent: none)
# The defaults are Synapse's own: measured, factors 0.1-1.0, a 5x smaller event cache and
# autotuning changed a tenant's RSS by at most 1.5 MiB (its caches never fill), so nothing
# smaller is worth the cache misses a busy tenant would pay.
FOOTPRINT_DEFAULTS: dict[str, Any] = {
    "synapse_cache_factor": 0.5,
    "synapse_event_cache_size": 10_000,
    "synapse_cache_max_memory_mib": 0,
}

DEFAULT_LIMITS: dict[str, Any] = {
    "max_upload_size_bytes": DEFAULT_MAX_UPLOAD_SIZE_BYTES,
    # Synapse's own default rc_message (0.2/s, burst 10) is far too low for an enterprise.
    "rc_message_per_second": 20.0,
    "rc_message_burst": 200,
    "rc_login_per_second": 5.0,
    "rc_login_burst": 50,
    "rc_joins_per_second": 5.0,
    "rc_joins_burst": 50,
    "rc_invites_per_second": 5.0,
    "rc_invites_burst": 50,
    # Enforced by each proxy instance, not by Synapse: the Route defaults.
    "proxy_rate_per_second": DEFAULT_PROXY_RATE_PER_SECOND,
    "proxy_rate_burst": DEFAULT_PROXY_RATE_BURST,
    "proxy_max_concurrent": DEFAULT_PROXY_MAX_CONCURRENT,
    **FOOTPRINT_DEFAULTS,
}


@dataclass(frozen=True)
class HomeserverSecrets:
    registration_shared_secret: str
    macaroon_secret_key: str
    form_secret: str
    signing_key: str  # "ed25519 a_XXXX <seed>" as Synapse reads it from signing.key
    admin_password: str
    # The tenant's PostgreSQL role password (provisioner.tenant_databases); records made before
    # it existed load with "" and stay on SQLite.
    database_password: str = ""
    # The platform's application service (platform_core.appservice): the token it acts with
    # and the token the homeserver proves itself with when it pushes transactions. Records
    # made before contexts existed load with "" and get theirs from steps.target_for.
    appservice_as_token: str = ""
    appservice_hs_token: str = ""

    @classmethod
    def generate(cls) -> HomeserverSecrets:
        key = generate_signing_key("a_" + secrets.token_hex(2))
        buffer = io.StringIO()
        write_signing_keys(buffer, [key])
        return cls(
            registration_shared_secret=secrets.token_urlsafe(32),
            macaroon_secret_key=secrets.token_urlsafe(32),
            form_secret=secrets.token_urlsafe(32),
            signing_key=buffer.getvalue().strip(),
            admin_password=secrets.token_urlsafe(24),
            database_password=secrets.token_urlsafe(32),
            appservice_as_token=secrets.token_urlsafe(32),
            appservice_hs_token=secrets.token_urlsafe(32),
        )

    def with_appservice_tokens(self) -> HomeserverSecrets:
        """These secrets, with application service tokens if they had none yet."""
        if self.appservice_as_token and self.appservice_hs_token:
            return self
        return HomeserverSecrets.from_dict(
            {
                **self.to_dict(),
                "appservice_as_token": secrets.token_urlsafe(32),
                "appservice_hs_token": secrets.token_urlsafe(32),
            }
        )

    def to_dict(self) -> dict[str, str]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HomeserverSecrets:
        return cls(**{k: str(data[k]) for k in cls.__dataclass_fields__ if k in data})


@dataclass(frozen=True)
class FileLayout:
    """Where the homeserver's files are as Synapse sees them. The local backend keeps them all
    in one directory; a Kubernetes pod mounts config, secrets and data separately."""

    config_dir: Path  # the log config (homeserver.yaml beside it)
    secrets_dir: Path  # signing.key
    data_dir: Path  # media_store/, the pid file, the SQLite database if any
    log_config_name: str = "log.config"
    # Where Synapse writes its log file; None: standard error (a pod's log, read by the platform).
    log_dir: Path | None = None

    @classmethod
    def single_directory(cls, directory: Path) -> FileLayout:
        return cls(directory, directory, directory, log_dir=directory)


@dataclass(frozen=True)
class HomeserverSpec:
    """What one tenant's homeserver config depends on."""

    server_name: str
    public_baseurl: str
    port: int
    bind_address: str
    data_dir: Path
    limits: dict[str, Any]
    settings: dict[str, Any] = field(default_factory=dict)
    setting_secrets: dict[str, str] = field(default_factory=dict)
    database: dict[str, Any] | None = None  # None: SQLite under data_dir
    outbound_allowed_networks: tuple[str, ...] = ()  # C3_OUTBOUND_ALLOWED_NETWORKS
    # Where the homeserver pushes the platform application service's transactions
    # (platform_core.appservice.receiver_url); None: no application service (stand-ins).
    appservice_url: str | None = None
    # Synapse's own Prometheus metrics, on a listener of their own that only the platform
    # reaches (the local backend: the client port + 1 on loopback; kubernetes: 9000 on the
    # pod, C3_SYNAPSE_METRICS_PORT); None: no metrics listener.
    metrics_port: int | None = None
    metrics_bind_address: str | None = None  # None: bind_address
    layout: FileLayout | None = None  # None: everything in data_dir (the local backend)

    @property
    def files(self) -> FileLayout:
        return self.layout or FileLayout.single_directory(self.data_dir)


def effective_limits(plan_limits: dict[str, Any]) -> dict[str, Any]:
    return {**DEFAULT_LIMITS, **(plan_limits or {})}


def _rate(per_second: float, burst: int) -> dict[str, Any]:
    return {"per_second": float(per_second), "burst_count": int(burst)}


def render_homeserver_config(spec: HomeserverSpec, hs_secrets: HomeserverSecrets) -> dict[str, Any]:
    limits = effective_limits(spec.limits)
    files = spec.files
    d = files.data_dir
    config: dict[str, Any] = {
        "server_name": spec.server_name,
        "public_baseurl": spec.public_baseurl,
        "pid_file": str(d / "homeserver.pid"),
        "report_stats": False,
        "listeners": [
            {
                "port": spec.port,
                "bind_addresses": [spec.bind_address],
                "type": "http",
                "tls": False,
                # The proxy overwrites X-Forwarded-For with the real client address.
                "x_forwarded": True,
                # The proxy sends every request's id (platform_core.logging): Synapse's log
                # lines of that request carry it ("GET-<id>"), so one id traces a request
                # from the client through the proxy into the homeserver.
                "request_id_header": "X-Request-ID",
                "resources": [{"names": _listener_resources(spec.settings), "compress": False}],
            }
        ],
        "database": spec.database
        or {"name": "sqlite3", "args": {"database": str(d / "homeserver.db")}},
        "log_config": str(files.config_dir / files.log_config_name),
        "media_store_path": str(d / "media_store"),
        "signing_key_path": str(files.secrets_dir / "signing.key"),
        "registration_shared_secret": hs_secrets.registration_shared_secret,
        "macaroon_secret_key": hs_secrets.macaroon_secret_key,
        "form_secret": hs_secrets.form_secret,
        # A federating tenant fetches remote servers' keys from those servers themselves, never
        # through a notary such as matrix.org (federation itself: _federation_config).
        "trusted_key_servers": [],
        "suppress_key_server_warning": True,
        "allow_public_rooms_over_federation": False,
        "url_preview_enabled": False,
        # Delayed events (MSC4140: Element Call's "leave the call if I vanish" member events).
        # Kept in the homeserver's database, where the sleep pass sees them: a homeserver
        # with one pending never sleeps (provisioner.hibernation).
        "max_event_delay_duration": "24h",
        # Synapse's outbound HTTP (federation, push gateways, URL previews, modules) never
        # reaches internal networks; only what the operator allowed (C3_OUTBOUND_ALLOWED_
        # NETWORKS). Its OIDC client ignores these lists: the issuer is checked by us instead.
        "ip_range_blacklist": list(OUTBOUND_BLOCKED_NETWORKS),
        "ip_range_whitelist": list(spec.outbound_allowed_networks),
        "serve_server_wellknown": False,
        "enable_metrics": spec.metrics_port is not None,
        "max_upload_size": str(effective_max_upload_bytes(limits, spec.settings)),
        "rc_message": _rate(limits["rc_message_per_second"], limits["rc_message_burst"]),
        "rc_login": {
            "address": _rate(limits["rc_login_per_second"], limits["rc_login_burst"]),
            "account": _rate(limits["rc_login_per_second"], limits["rc_login_burst"]),
            "failed_attempts": _rate(limits["rc_login_per_second"], limits["rc_login_burst"]),
        },
        "rc_joins": {
            "local": _rate(limits["rc_joins_per_second"], limits["rc_joins_burst"]),
            "remote": _rate(limits["rc_joins_per_second"], limits["rc_joins_burst"]),
        },
        "rc_invites": {
            "per_room": _rate(limits["rc_invites_per_second"], limits["rc_invites_burst"]),
            "per_user": _rate(limits["rc_invites_per_second"], limits["rc_invites_burst"]),
            "per_issuer": _rate(limits["rc_invites_per_second"], limits["rc_invites_burst"]),
        },
    }
    if spec.metrics_port is not None:
        config["listeners"].append(
            {
                "port": spec.metrics_port,
                "bind_addresses": [spec.metrics_bind_address or spec.bind_address],
                "type": "metrics",
                "tls": False,
            }
        )
    if limits.get("max_mau"):
        config["limit_usage_by_mau"] = True
        config["max_mau_value"] = int(limits["max_mau"])
    config.update(_cache_config(limits))
    config.update(_federation_config(spec.settings))
    config.update(_registration_config(spec.settings))
    config.update(_retention_config(spec.settings))
    config.update(_turn_config(spec.settings, spec.setting_secrets))
    config.update(_oidc_config(spec.settings, spec.setting_secrets))
    config.update(_contexts_config(spec))
    return config


def _cache_config(limits: dict[str, Any]) -> dict[str, Any]:
    """Synapse's caches from the plan: the largest share of a working homeserver's memory
    that configuration controls (its code and interpreter are the rest)."""
    caches: dict[str, Any] = {"global_factor": float(limits["synapse_cache_factor"])}
    max_mib = int(limits.get("synapse_cache_max_memory_mib") or 0)
    if max_mib > 0:
        # Synapse needs all three options or none; it evicts down to the target once the
        # jemalloc heap passes the maximum, but never entries younger than min_cache_ttl.
        caches["cache_autotuning"] = {
            "max_cache_memory_usage": f"{max_mib}M",
            "target_cache_memory_usage": f"{max(1, max_mib * 3 // 4)}M",
            "min_cache_ttl": "5m",
        }
    return {"caches": caches, "event_cache_size": int(limits["synapse_event_cache_size"])}


APPSERVICE_FILE = "appservice-c3.yaml"


def _contexts_config(spec: HomeserverSpec) -> dict[str, Any]:
    """The platform's application service and the module confining external participants
    (docs/contexts.md): on every tenant homeserver, new and existing."""
    if spec.appservice_url is None:
        return {}
    return {
        # It holds the as/hs tokens: beside the other secrets (a pod's Secret volume).
        "app_service_config_files": [str(spec.files.secrets_dir / APPSERVICE_FILE)],
        "modules": [appservice.confinement_module(spec.server_name)],
    }


def render_appservice_registration(spec: HomeserverSpec, hs_secrets: HomeserverSecrets) -> str:
    if not (hs_secrets.appservice_as_token and hs_secrets.appservice_hs_token):
        raise PermanentError("homeserver secrets have no application service tokens")
    registration = appservice.registration(
        server_name=spec.server_name,
        url=spec.appservice_url or "",
        as_token=hs_secrets.appservice_as_token,
        hs_token=hs_secrets.appservice_hs_token,
    )
    return yaml.safe_dump(registration, sort_keys=True)


# Tenant settings (platform_core.homeserver_settings) → Synapse options ------------------


def _listener_resources(settings: dict[str, Any]) -> list[str]:
    """The ``federation`` resource also serves ``/_matrix/key``; it exists only when the
    tenant federates, so a non-federating homeserver has no server-server surface at all."""
    if federation_mode(settings) is FederationMode.OFF:
        return ["client", "media"]
    return ["client", "federation", "media"]


def _federation_config(settings: dict[str, Any]) -> dict[str, Any]:
    mode = federation_mode(settings)
    if mode is FederationMode.OFF:
        # No remote server, in or out; and no federation sender in the process. Synapse's
        # sender otherwise reads every new event back to find its remote servers (five of a
        # message's ~41 transactions, ~7 % of a send-and-sync's CPU, docs/benchmarks.md),
        # where there can be none. An empty instance list is Synapse's own "another process
        # sends federation": the homeserver keeps only a small in-memory queue, emptied
        # after five minutes. A tenant that starts federating is re-rendered without it; its
        # sender then reads back once every event since it last ran (~0.9 ms an event, in the
        # background), finding no remote server for any.
        return {"federation_domain_whitelist": [], "federation_sender_instances": []}
    if mode is FederationMode.ALLOWLIST:
        servers = (settings.get("federation") or {}).get("allowed_servers") or []
        return {"federation_domain_whitelist": sorted(set(servers))}
    return {}  # open: Synapse federates with anyone when there is no whitelist


def _registration_config(settings: dict[str, Any]) -> dict[str, Any]:
    policy = registration_policy(settings)
    if policy is RegistrationPolicy.CLOSED:
        return {"enable_registration": False}
    if policy is RegistrationPolicy.TOKEN:
        return {"enable_registration": True, "registration_requires_token": True}
    # Synapse refuses to start with open registration unless told that no verification
    # (e-mail, captcha, token) is wanted.
    return {"enable_registration": True, "enable_registration_without_verification": True}


def _retention_config(settings: dict[str, Any]) -> dict[str, Any]:
    """A default policy every room gets; rooms may shorten it, never lengthen it (the
    tenant's limit is a compliance promise). MSC1763's endpoint lets clients read it."""
    retention = settings.get("message_retention")
    if not retention:
        return {}
    lifetime = f"{int(retention['max_lifetime_days'])}d"
    return {
        "retention": {
            "enabled": True,
            "default_policy": {"max_lifetime": lifetime},
            "allowed_lifetime_max": lifetime,
            "purge_jobs": [{"interval": "12h"}],
        },
        "experimental_features": {"msc1763_enabled": True},
    }


def _required_secret(secrets_: dict[str, str], key: str) -> str:
    value = secrets_.get(key)
    if not value:
        raise PermanentError(f"homeserver setting secret {key} is missing; set it again")
    return value


def _turn_config(settings: dict[str, Any], secrets_: dict[str, str]) -> dict[str, Any]:
    turn = settings.get("turn")
    if not turn:
        return {}
    return {
        "turn_uris": list(turn["uris"]),
        "turn_shared_secret": _required_secret(secrets_, TURN_SHARED_SECRET),
        "turn_user_lifetime": f"{int(turn['user_lifetime_s'])}s",
        "turn_allow_guests": False,
    }


# Users signing in through the IdP get the localpart of their preferred_username, or of
# their subject when the IdP sends none (Synapse maps invalid characters itself).
OIDC_LOCALPART_TEMPLATE = "{{ user.preferred_username or user.sub }}"


def _oidc_config(settings: dict[str, Any], secrets_: dict[str, str]) -> dict[str, Any]:
    oidc = settings.get("oidc")
    if not oidc:
        return {}
    provider = {
        "idp_id": "oidc",
        "idp_name": oidc.get("display_name") or "SSO",
        "issuer": oidc["issuer"],
        "client_id": oidc["client_id"],
        "client_secret": _required_secret(secrets_, OIDC_CLIENT_SECRET),
        "scopes": list(oidc["scopes"]),
        "discover": True,
        "user_mapping_provider": {"config": {"localpart_template": OIDC_LOCALPART_TEMPLATE}},
    }
    return {"oidc_providers": [provider]}


def render_log_config(log_dir: Path | None) -> dict[str, Any]:
    """Synapse's logging: a rotated ``homeserver.log`` in ``log_dir`` (local), or standard
    error when None (a pod's log)."""
    handler: dict[str, Any] = {
        "class": "logging.StreamHandler",
        "formatter": "precise",
        "filters": ["context"],
    }
    if log_dir is not None:
        handler = {
            "class": "logging.handlers.RotatingFileHandler",
            "formatter": "precise",
            "filename": str(log_dir / "homeserver.log"),
            "maxBytes": 10 * 1024 * 1024,
            "backupCount": 3,
            "filters": ["context"],
            "encoding": "utf8",
        }
    return {
        "version": 1,
        "formatters": {
            "precise": {
                "format": "%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - "
                "%(request)s - %(message)s"
            }
        },
        "filters": {
            "context": {"()": "synapse.logging.context.LoggingContextFilter", "request": ""}
        },
        "handlers": {"file": handler},
        "loggers": {"synapse.storage.SQL": {"level": "WARNING"}},
        "root": {"level": "INFO", "handlers": ["file"]},
        "disable_existing_loggers": False,
    }


def write_if_changed(path: Path, content: str, *, mode: int = 0o600) -> bool:
    """Write ``content`` atomically unless the file already holds it; True if written.
    The file is private (``mode``) from its creation: it may hold secrets."""
    if path.exists() and path.read_text() == content:
        return False
    write_private(path, content, mode=mode)
    return True


def write_homeserver_files(spec: HomeserverSpec, hs_secrets: HomeserverSecrets) -> bool:
    """Write config, log config and signing key under ``spec.data_dir``; True if any changed."""
    spec.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    (spec.data_dir / "media_store").mkdir(mode=0o700, exist_ok=True)
    config = yaml.safe_dump(render_homeserver_config(spec, hs_secrets), sort_keys=True)
    log_config = yaml.safe_dump(render_log_config(spec.files.log_dir), sort_keys=True)
    changed = write_if_changed(spec.data_dir / "homeserver.yaml", config)
    changed |= write_if_changed(spec.data_dir / "log.config", log_config)
    changed |= write_if_changed(spec.data_dir / "signing.key", hs_secrets.signing_key + "\n")
    if spec.appservice_url is not None:
        registration = render_appservice_registration(spec, hs_secrets)
        changed |= write_if_changed(spec.data_dir / APPSERVICE_FILE, registration)
    return changed
