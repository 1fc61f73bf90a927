"""Typed, validated platform settings (environment variables prefixed ``C3_``)."""

from __future__ import annotations

import re
import secrets
from enum import StrEnum
from functools import lru_cache
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# The operator token grants everything; outside local mode it must be long enough not to guess.
MIN_OPERATOR_TOKEN_LENGTH = 32


class Mode(StrEnum):
    LOCAL = "local"
    PRODUCTION = "production"


# A tenant Synapse pod's metrics listener when C3_SYNAPSE_METRICS_PORT is unset.
KUBERNETES_SYNAPSE_METRICS_PORT = 9000


class BackendKind(StrEnum):
    LOCAL = "local"
    KUBERNETES = "kubernetes"
    # A stand-in homeserver process (provisioner.backends.fake) for lifecycle load and
    # crash tests and the provisioning-rate benchmark; never for serving clients.
    FAKE = "fake"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="C3_", extra="ignore")

    mode: Mode = Mode.LOCAL
    data_dir: Path = Path(".c3")
    database_url: str | None = None
    redis_url: str | None = None
    # Prefix of every Redis key and channel: lets several platforms (or test runs) share a server.
    redis_namespace: str = "c3"
    base_domain: str = "c3.localhost"
    secret_key: str | None = Field(default=None, repr=False)
    operator_token: str | None = Field(default=None, repr=False)
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    proxy_host: str = "127.0.0.1"
    proxy_port: int = 8080
    # Public base URL of the proxy as clients see it; derived from host/port when unset.
    proxy_public_url: str | None = None
    # Networks of the load balancers / reverse proxies in front of the proxy (comma-separated
    # CIDRs or addresses): only a peer in them is believed about X-Forwarded-For. Empty: the
    # socket peer is the client, whatever the request says.
    proxy_trusted_proxies: Annotated[list[IPv4Network | IPv6Network], NoDecode] = []
    # One client address (an IPv6 /64) of a tenant may hold at most this share of the tenant's
    # in-flight requests (at least 1), and gets its own rate bucket of this share of the
    # tenant's rate and burst; 1.0 turns the per-client limit off.
    proxy_client_concurrency_share: float = Field(default=0.25, gt=0, le=1)
    proxy_client_rate_share: float = Field(default=0.5, gt=0, le=1)
    # Public base URL of the API (e.g. https://api.example.com behind a TLS load balancer):
    # operation Locations and export links start with it; taken from each request when unset.
    api_public_url: str | None = None
    # The API's first gate (platform_core.http_wall and the body limit middleware): request
    # bodies above this are refused 413 before they are read (the largest legitimate body, a
    # plan or tenant settings, is a few KiB); a request head must arrive within the header
    # timeout, and a body may not stall longer than the body timeout between two reads.
    api_max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    # `c3 proxy`: a client that has not sent its whole request head in time gets 408 and is
    # closed (slowloris); a request body that stalls this long between reads is cut off.
    proxy_header_timeout_s: float = Field(default=10.0, gt=0)
    proxy_body_timeout_s: float = Field(default=60.0, gt=0)
    api_header_timeout_s: float = Field(default=10.0, gt=0)
    api_body_timeout_s: float = Field(default=60.0, gt=0)
    backend: BackendKind = BackendKind.LOCAL
    # Interpreter that runs Synapse for the local backend (defaults to the one running C3).
    synapse_python: str | None = None
    homeserver_start_timeout_s: float = 60.0
    # The local backend's homeserver ports, "LOW-HIGH" (each homeserver takes an even client
    # port and the metrics port after it). Empty: from 10000 up to the kernel's ephemeral range
    # (net.ipv4.ip_local_port_range), or above it when fewer than 1,000 pairs fit below; every
    # outgoing connection draws its local port from that range, so a sleeping homeserver's
    # port outside it is never taken by a passing connection (docs/hibernation.md "Ports").
    homeserver_ports: str = ""
    # When set (postgresql://…, a role allowed to CREATE ROLE and CREATE DATABASE), every
    # tenant's Synapse gets its own PostgreSQL database and role; SQLite per tenant otherwise.
    tenant_database_url: str | None = Field(default=None, repr=False)
    # Lifecycle operations: attempts before `failed`, and the capped, jittered backoff
    # between attempts (base * 2**attempt, at most cap).
    operation_max_attempts: int = Field(default=5, ge=1, le=100)
    operation_retry_base_s: float = Field(default=1.0, gt=0)
    operation_retry_cap_s: float = Field(default=60.0, gt=0)
    # A running operation holds its tenant's lease, renewed every third of this: a worker
    # that dies (kill -9) frees the tenant for the redelivered task after at most this long.
    operation_lease_ttl_s: float = Field(default=30.0, ge=1)
    # Reconcile enqueues an unfinished operation again when nothing touched it for this long
    # (its task was lost with a killed worker or a broker restart), unless its lease is held
    # or its scheduled retry is not yet due.
    operation_stuck_after_s: float = Field(default=60.0, gt=0)
    # Fake backend only (lifecycle crash tests, the provisioning-rate benchmark): how long a
    # stand-in homeserver takes to boot, and comma-separated server names or slugs whose
    # homeserver start always fails (a temporary error) or kills the worker attempting it.
    fake_homeserver_boot_s: float = Field(default=0.0, ge=0)
    fake_backend_fail: str = ""
    fake_backend_crash: str = ""
    # Tenant exports: how long a download link (and the archive behind it) lives.
    export_link_ttl_s: int = Field(default=24 * 3600, ge=60)
    # At most this many ready-or-pending exports per tenant (each a full copy of its data on
    # disk until its link expires); one more is refused with 429 until the oldest expires.
    exports_per_tenant_max: int = Field(default=5, ge=1, le=1000)
    usage_flush_interval_s: float = 1.0
    # Usage entries the consumer cannot parse are parked in <ns>:usage:dead for inspection;
    # the stream keeps the newest this many (older ones are dropped and counted in /metrics).
    usage_dead_letter_max: int = Field(default=10_000, ge=1)
    reconcile_interval_s: float = 30.0
    # Billed usage vs each homeserver's own records (provisioner.usage_reconciliation).
    usage_reconcile_interval_s: float = 300.0
    # A deleted tenant's homeserver archive is purged this long after deletion.
    archive_retention_days: float = 30.0
    # Invoices of a month are finalized this long after it ends (late usage still lands).
    invoice_grace_period_h: float = 72.0
    invoice_finalize_interval_s: float = 3600.0
    # API sign-in: access JWT lifetime, refresh token lifetime, signing key ids (rotation:
    # new id in JWT_KEY_ID, the old one in JWT_PREVIOUS_KEY_ID for one access token lifetime).
    access_token_ttl_s: int = 900
    refresh_token_ttl_s: int = 30 * 24 * 3600
    jwt_key_id: str = "k1"
    jwt_previous_key_id: str | None = None
    # Sign-in throttle (fixed windows in Redis, shared by every API replica): an account
    # (by email) is locked for the rest of its window after this many failed sign-ins, and a
    # client address after this many failed credentials of any kind (passwords, refresh
    # tokens, API keys, access tokens, the operator token). Locked: 429 with Retry-After.
    signin_account_max_failures: int = Field(default=10, ge=1)
    signin_account_window_s: int = Field(default=900, ge=1)
    auth_address_max_failures: int = Field(default=100, ge=1)
    auth_address_window_s: int = Field(default=900, ge=1)
    # Password hashing (argon2id) runs in worker threads, at most this many at once; sign-ins
    # beyond this many waiting get a quick 503 with Retry-After instead of queueing.
    password_hash_concurrency: int = Field(default=2, ge=1, le=64)
    password_hash_max_waiting: int = Field(default=32, ge=0)
    # Networks (comma-separated CIDRs) that tenants' homeservers may reach although they are
    # internal (loopback, private, link-local, ...): a tenant's OIDC issuer may then be there,
    # and Synapse's ip_range_whitelist lets its outbound HTTP through. Empty: none.
    outbound_allowed_networks: Annotated[list[IPv4Network | IPv6Network], NoDecode] = []
    # --- Portal (tenant_api/portal) ---------------------------------------------------
    # A portal sign-in ends after this long without a page view, and after portal_session_max_s
    # at the latest; the next page then asks to sign in again and returns to where it was.
    portal_session_idle_s: int = Field(default=1800, ge=60, le=7 * 86400)
    portal_session_max_s: int = Field(default=12 * 3600, ge=300, le=30 * 86400)

    # --- Object storage and the proxy spool (issue 12, "state that survives a pod") ---------
    # Exports, deletion archives and database dumps (platform_core.object_store): an
    # S3-compatible endpoint (https://s3.eu-central-1.amazonaws.com, http://minio:9000);
    # empty: the data directory holds them (local runs). Credentials: both or neither
    # (neither: boto3's own chain, e.g. a pod's web identity).
    object_store_url: str | None = None
    object_store_bucket: str | None = None
    object_store_region: str = "us-east-1"
    object_store_access_key_id: str | None = Field(default=None, repr=False)
    object_store_secret_access_key: SecretStr | None = Field(default=None, repr=False)
    # Every key goes under this prefix (one bucket shared by several platforms).
    object_store_prefix: str = ""
    # The proxy spools a chunked request body past 1 MiB to a file in this directory (the
    # system temp directory when unset); all spools of one proxy process together may hold
    # at most the budget: a request that would pass it gets 503 M_LIMIT_EXCEEDED first.
    proxy_spool_dir: Path | None = None
    proxy_spool_budget_bytes: int = Field(default=512 * 1024 * 1024, ge=1024 * 1024)
    # Parked long-polls (homeserver_proxy.heap): `c3 proxy` gives memory back to the system
    # once a crowd of long-polls has ended; wholly only on glibc's allocator (PYTHONMALLOC=malloc
    # in its environment, as the chart sets it), else it warns at start.
    proxy_return_memory: bool = True
    # The proxy's fast lane (homeserver_proxy.relay): plain client requests relayed at the
    # protocol level; off, every request goes through the ASGI app and aiohttp.
    proxy_relay: bool = True

    @field_validator("object_store_url")
    @classmethod
    def _object_store_url(cls, v: str | None) -> str | None:
        if not v or not v.strip():
            return None
        parts = urlsplit(v.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                "C3_OBJECT_STORE_URL must be the S3 endpoint's http(s) URL, "
                "such as https://s3.eu-central-1.amazonaws.com"
            )
        return v.strip().rstrip("/")

    @field_validator("object_store_prefix")
    @classmethod
    def _object_store_prefix(cls, v: str) -> str:
        v = v.strip().strip("/")
        if v and any(part in ("", ".", "..") for part in v.split("/")):
            raise ValueError("C3_OBJECT_STORE_PREFIX must be a plain path such as c3/prod")
        return v

    @model_validator(mode="after")
    def _check_object_store(self) -> Settings:
        if self.object_store_url:
            if not self.object_store_bucket:
                raise ValueError("C3_OBJECT_STORE_URL needs C3_OBJECT_STORE_BUCKET")
            if bool(self.object_store_access_key_id) != bool(self.object_store_secret_access_key):
                raise ValueError(
                    "C3_OBJECT_STORE_ACCESS_KEY_ID and C3_OBJECT_STORE_SECRET_ACCESS_KEY go "
                    "together (or leave both unset for the environment's own credentials)"
                )
            if self.export_link_ttl_s > 7 * 24 * 3600:
                raise ValueError(
                    "C3_EXPORT_LINK_TTL_S may be at most 7 days (604800) with an object store: "
                    "presigned S3 links live no longer"
                )
        if (
            self.mode is Mode.PRODUCTION
            and self.backend is BackendKind.KUBERNETES
            and not self.object_store_url
        ):
            raise ValueError(
                "production mode with C3_BACKEND=kubernetes needs C3_OBJECT_STORE_URL (and "
                "C3_OBJECT_STORE_BUCKET): pods do not share a disk, so exports, archives and "
                "dumps must go to object storage"
            )
        return self

    # --- end of object storage and proxy spool ---------------------------------------------

    # --- Contexts (issue 14): application service, external participants, expiry ----------
    # Base URL at which tenant homeservers reach the API's application service receiver
    # (/_c3/appservice/{tenant}/…); it must be reachable from the homeservers (in Kubernetes,
    # the API's cluster Service). Unset: the API's own http://C3_API_HOST:C3_API_PORT.
    contexts_appservice_url: str | None = None
    # The longest life an external participant's credential may be given (ttl_s), and the
    # one it gets when the request names none.
    contexts_external_ttl_max_s: int = Field(default=30 * 24 * 3600, ge=60)
    contexts_external_ttl_default_s: int = Field(default=24 * 3600, ge=60)
    # How often the beat task deactivates external accounts whose credential expired (a crash
    # may have left some behind; their tokens already stopped working at expiry).
    contexts_expiry_interval_s: float = Field(default=30.0, gt=0)
    # --- end contexts ---------------------------------------------------------------------

    # --- Webhooks (issue 15: Standard Webhooks 1.0; tenant_api/webhooks) ------------------
    # Delays before each retry after the first, immediate attempt (comma-separated seconds):
    # the spec's 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h. Each is stretched or shrunk by up
    # to the jitter share so that many failing deliveries do not retry in lockstep.
    webhook_retry_schedule_s: Annotated[list[float], NoDecode] = [
        5.0,
        300.0,
        1800.0,
        7200.0,
        18000.0,
        36000.0,
        36000.0,
    ]
    webhook_retry_jitter: float = Field(default=0.1, ge=0, lt=1)
    # After POST …/rotate-secret, deliveries are signed with the old secret too for this long.
    webhook_secret_overlap_s: int = Field(default=24 * 3600, ge=0, le=30 * 86400)
    # An endpoint whose deliveries have failed without a success for this long is disabled.
    webhook_disable_after_s: float = Field(default=5 * 86400, gt=0)
    # Production mode refuses endpoints on internal networks (loopback, private, link-local,
    # CGNAT, multicast, ULA, ...), at creation and after resolving at delivery; these networks
    # (comma-separated CIDRs) are let through anyway (tests, an in-cluster receiver).
    webhook_allowed_networks: Annotated[list[IPv4Network | IPv6Network], NoDecode] = []
    # The beat task that fans new events out to endpoints and re-enqueues due deliveries
    # (retries, and those whose worker died mid-send once their lease lapsed).
    webhook_dispatch_interval_s: float = Field(default=1.0, gt=0)
    # A worker sending a delivery holds it this long at most (longer than the send timeout).
    webhook_lease_ttl_s: float = Field(default=60.0, ge=1)
    webhook_timeout_s: float = Field(default=15.0, gt=0, le=300)
    # How often usage is compared with the plans' included units (usage.threshold events).
    webhook_usage_check_interval_s: float = Field(default=60.0, gt=0)
    # Retention: deliveries that ended (succeeded, or failed for good) with their attempts,
    # fanned-out events with no delivery left, and context outbox rows copied to webhooks
    # are deleted this long after they were settled, in bounded batches by a beat task run
    # every C3_WEBHOOK_RETENTION_INTERVAL_S. Nothing still due is ever deleted.
    webhook_retention_days: float = Field(default=30.0, gt=0)
    webhook_retention_interval_s: float = Field(default=3600.0, gt=0)

    @field_validator("webhook_retry_schedule_s", mode="before")
    @classmethod
    def _retry_schedule(cls, v: Any) -> Any:
        if not isinstance(v, str):
            return v
        try:
            return [float(item) for item in v.split(",") if item.strip()]
        except ValueError:
            raise ValueError(
                "C3_WEBHOOK_RETRY_SCHEDULE_S must be comma-separated seconds such as 5,300,1800"
            ) from None

    # --- end webhooks ---------------------------------------------------------------------

    # --- Sleeping homeservers (issue 16; provisioner/hibernation.py, homeserver_proxy/wake.py)
    # A tenant whose plan sets limits.idle_after_seconds sleeps once its homeserver served
    # nothing that long and has nothing due. The beat's sleep pass runs this often: a
    # homeserver sleeps idle_after plus up to one pass after its last request, so about a third
    # of a short idle_after (measured in docs/benchmarks.md, density); a pass that finds
    # nothing idle is one query and one Redis read.
    sleep_check_interval_s: float = Field(default=10.0, gt=0)
    # The proxy holds a sleeping (or restarting) tenant's requests at most this long while it
    # wakes; past it they get 503 M_UNKNOWN with Retry-After.
    wake_timeout_s: float = Field(default=20.0, gt=0, le=300)
    # Daily maintenance window: at this hour (UTC) every sleeping homeserver is woken for its
    # scheduled jobs (retention purges, federation retries) and kept up this long, then falls
    # asleep again by the normal rule. None: no maintenance wake.
    sleep_maintenance_hour_utc: int | None = Field(default=3, ge=0, le=23)
    sleep_maintenance_stay_s: float = Field(default=900.0, ge=0)

    @field_validator("sleep_maintenance_hour_utc", mode="before")
    @classmethod
    def _maintenance_off(cls, v: Any) -> Any:
        """``C3_SLEEP_MAINTENANCE_HOUR_UTC=off`` (or empty) turns the maintenance wake off."""
        return None if isinstance(v, str) and v.strip().lower() in ("", "off", "none") else v

    # --- end of sleeping homeservers ------------------------------------------------------

    # --- Sleeping homeservers at scale (issue 16: sleepgaps; provisioner/hibernation.py) ----
    # The sleep pass stops this many idle homeservers at once (each a SIGTERM and a wait of
    # up to 15 s, or a scale to 0 and the pod's exit), each still under its own lease.
    sleep_stop_concurrency: int = Field(default=8, ge=1, le=64)
    # The maintenance window wakes sleepers in waves: at most this many homeservers awake for
    # maintenance at once (~125 MiB RSS and a Synapse start of several CPU seconds each). 40:
    # ≤ 5 GiB, and a window of 1,000 sleepers done in ~6.6 h with the default stay
    # (docs/hibernation.md#maintenance-window).
    sleep_maintenance_concurrency: int = Field(default=40, ge=1, le=1000)
    # true: wakes have a lane of their own (platform_core.celery.WAKE_LANE_TASKS): `c3 up` runs
    # `c3 worker --lane wake` (the chart: a second container in the worker pod) and `c3 worker`
    # leaves its queue alone; false: no lane, `c3 worker` carries out wakes too.
    wake_lane: bool = True
    # Threads of `c3 worker --lane wake`: wakes it carries out at once (each mostly waits for a
    # homeserver to start: ~0.3-2 s local, a pod start on kubernetes).
    wake_lane_threads: int = Field(default=8, ge=1, le=64)
    # --- end of sleeping homeservers at scale -------------------------------------------

    # --- Logs and client readiness (issue 13: readiness) --------------------------------
    # text: human lines on stderr; json: one JSON object per line on stdout (ts, level,
    # logger, message, request_id, tenant_id when known, exception) for log collectors.
    log_format: Literal["text", "json"] = "text"
    # One line per proxied request (method, path without its query, status, duration,
    # request id). Off by default: it is the hot path, and a line per /sync is a lot of log.
    proxy_access_log: bool = False
    # GET /v1/tenants/{id}/readiness: each check (one or two HTTP requests, a TURN probe) gives
    # up after this long, and they run at once, so the whole answer takes about this long at most.
    readiness_timeout_s: float = Field(default=5.0, gt=0, le=30)
    # Where the API connects to reach the proxy for the readiness checks (e.g. the in-cluster
    # Service http://c3-proxy:8080), sending each tenant's public Host as a client would.
    # Unset: the proxy's own address in local mode, else the public URL through DNS.
    readiness_proxy_url: str | None = None

    @field_validator("readiness_proxy_url")
    @classmethod
    def _readiness_proxy_origin(cls, v: str | None) -> str | None:
        if v is None:
            return None
        parts = urlsplit(v)
        if (
            parts.scheme not in ("http", "https")
            or not parts.hostname
            or parts.path not in ("", "/")
        ):
            raise ValueError(
                "C3_READINESS_PROXY_URL must be an http(s) origin such as http://c3-proxy:8080"
            )
        return v.rstrip("/")

    # --- end of logs and client readiness -----------------------------------------------

    # --- Tenant API request rate limits (issue 15; tenant_api/rate_limit.py) ---------------
    # Per credential, in Redis (shared by every API replica), as requests per minute with a
    # burst (how many an idle credential may send at once). Tenant-scoped credentials (tenant
    # admins' access tokens, tenant keys) take their plan's `api_requests_per_minute` and
    # `api_burst`; these two are the default for plans that set none (a plan setting only the
    # rate gets a burst of one minute's worth). Operators (accounts, operator-organisation keys,
    # the bootstrap token) take the operator pair; requests without a valid credential the
    # anonymous pair, per client address. Generous: they stop runaway clients, not ration.
    api_rate_per_minute: int = Field(default=600, ge=1, le=1_000_000)
    api_rate_burst: int = Field(default=600, ge=1, le=1_000_000)
    api_operator_rate_per_minute: int = Field(default=6000, ge=1, le=1_000_000)
    api_operator_rate_burst: int = Field(default=3000, ge=1, le=1_000_000)
    api_anonymous_rate_per_minute: int = Field(default=600, ge=1, le=1_000_000)
    api_anonymous_rate_burst: int = Field(default=600, ge=1, le=1_000_000)
    # --- end of tenant API request rate limits ---------------------------------------------

    # --- Platform status and homeserver logs (issue 15: the SDK and the `c3` CLI) --------
    # GET /v1/status: each direct check (database, Redis, proxy, the workers' ping) gives up
    # after status_check_timeout_s. GET /v1/status (homeservers) and GET /v1/tenants/{id}/logs
    # ask a worker, since only workers reach homeservers, and wait this long for its answer.
    status_check_timeout_s: float = Field(default=2.0, gt=0, le=30)
    worker_answer_timeout_s: float = Field(default=10.0, gt=0, le=60)
    # --- end of platform status and homeserver logs ---------------------------------------

    # --- Observability (metrics) -------------------------------------------------------
    # The proxy's and the worker's Prometheus endpoints: a listener of their own (GET /metrics
    # on host:port), never the proxy's public port. Unset: no metrics listener.
    proxy_metrics_port: int | None = Field(default=None, ge=1, le=65535)
    proxy_metrics_host: str = "127.0.0.1"
    worker_metrics_port: int | None = Field(default=None, ge=1, le=65535)
    worker_metrics_host: str = "127.0.0.1"
    # Every tenant's Synapse serves its own metrics on a `metrics` listener at this port
    # (the kubernetes backend: 9000, the container's metrics port). Unset: the homeserver's
    # client port + 1 (the local backend allocates both).
    synapse_metrics_port: int | None = Field(default=None, ge=1, le=65535)

    # --- Kubernetes backend (C3_BACKEND=kubernetes; provisioner/backends/kubernetes.py) -----
    # Each tenant's Synapse runs in namespace c3-t-<tenant id>; the worker reaches the API
    # server through KUBECONFIG (or ~/.kube/config) or the pod's service account.
    # The Synapse image every tenant's StatefulSet pins (the release the suite runs locally).
    kubernetes_synapse_image: str = "ghcr.io/element-hq/synapse:v1.163.2"
    # The platform's Helm release: labels tenant objects and selects the proxy and worker pods
    # that a tenant's NetworkPolicy lets in.
    kubernetes_release: str = "c3"
    # Namespace the platform's pods (proxy, worker) run in.
    kubernetes_platform_namespace: str = "c3"
    # StorageClass of each tenant's data volume; None: the cluster's default class.
    kubernetes_storage_class: str | None = None
    # The only network (besides DNS) a tenant's pod may reach: the tenant database's address,
    # port 5432 (e.g. 10.0.0.5/32). None: no egress but DNS, so Synapse cannot reach its database.
    kubernetes_database_cidr: IPv4Network | IPv6Network | None = None
    kubernetes_cluster_domain: str = "cluster.local"
    # A Prometheus in another namespace than the platform's that scrapes the tenants' Synapse
    # metrics (port 9000): each tenant's NetworkPolicy lets that namespace in too. None: only
    # the platform namespace reaches the metrics port.
    kubernetes_monitoring_namespace: str | None = None

    @field_validator(
        "kubernetes_release", "kubernetes_platform_namespace", "kubernetes_monitoring_namespace"
    )
    @classmethod
    def _kubernetes_name(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None and not cls._is_dns_label(v):
            raise ValueError(
                f"C3_{(info.field_name or '').upper()} must be a DNS label (lower-case letters, "
                f"digits and '-', at most 63 characters): {v!r} is not"
            )
        return v

    @field_validator("kubernetes_cluster_domain")
    @classmethod
    def _kubernetes_domain(cls, v: str) -> str:
        v = v.strip().lower().rstrip(".")
        if not v or not all(cls._is_dns_label(part) for part in v.split(".")):
            raise ValueError(f"C3_KUBERNETES_CLUSTER_DOMAIN must be a DNS name: {v!r} is not")
        return v

    @field_validator("homeserver_ports")
    @classmethod
    def _homeserver_ports(cls, v: str) -> str:
        v = v.strip()
        if not v:
            return v
        m = re.fullmatch(r"(\d+)\s*-\s*(\d+)", v)
        if m is None or not 1024 <= int(m[1]) < int(m[2]) <= 65535:
            raise ValueError(
                "C3_HOMESERVER_PORTS must be LOW-HIGH with 1024 <= LOW < HIGH <= 65535,"
                f" e.g. 10000-29999; got {v!r}"
            )
        return f"{int(m[1])}-{int(m[2])}"

    @field_validator("kubernetes_synapse_image")
    @classmethod
    def _kubernetes_image(cls, v: str) -> str:
        if not v.strip() or any(c.isspace() for c in v):
            raise ValueError("C3_KUBERNETES_SYNAPSE_IMAGE must be an image reference")
        return v

    @staticmethod
    def _is_dns_label(value: str) -> bool:
        """An RFC 1123 label, as Kubernetes names namespaces and label values of ours."""
        return re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", value) is not None

    @property
    def homeserver_metrics_port(self) -> int | None:
        """The port every tenant Synapse's metrics listener has: C3_SYNAPSE_METRICS_PORT, else
        9000 on the kubernetes backend (the pod's and its Service's ``metrics`` port); None:
        the local backend's client port + 1."""
        if self.synapse_metrics_port is not None:
            return self.synapse_metrics_port
        return KUBERNETES_SYNAPSE_METRICS_PORT if self.backend is BackendKind.KUBERNETES else None

    # --- end of the Kubernetes backend's settings -------------------------------------------

    # --- Synapse's footprint (issue 16; docs/benchmarks.md "Synapse's footprint") ------------
    # true: every tenant's Synapse runs with jemalloc preloaded (LD_PRELOAD, MALLOC_CONF from
    # provisioner.malloc): the local backend uses Debian's libjemalloc2 when installed
    # (scripts/system_deps and the image install it), the kubernetes backend the one Synapse's
    # image ships. Off by default: measured (docs/benchmarks.md), jemalloc saves ~2.5 MiB PSS per
    # homeserver forked from the zygote but costs 4-7 % more CPU per message, and CPU is what
    # limits wakes. On for large, long-running tenants, and for plans with cache autotuning
    # (synapse_cache_max_memory_mib), which needs jemalloc.
    synapse_jemalloc: bool = False
    # true: the local backend forks every homeserver from a zygote that imported Synapse once
    # (provisioner/backends/zygote_server.py), so a start or a wake skips the import (most of a start: 1.3 s of
    # CPU on a quiet machine, 5-11 s under load). false: each homeserver is a fresh
    # `python -m synapse.app.homeserver` (also the fallback when the zygote fails).
    synapse_zygote: bool = True
    # How often each homeserver forked from the zygote checks whether a garbage collection is
    # due (Synapse's own timer: 0.1 s, ten wake-ups a second in every idle homeserver). 1 s
    # measured an idle homeserver's CPU down from 0.0031 to 0.0013 of a core (docs/benchmarks.md);
    # a due collection runs at most this much later. 0.1: Synapse's own period.
    synapse_gc_check_s: float = Field(default=1.0, ge=0.1, le=10.0)
    # --- end of Synapse's footprint ----------------------------------------------------------

    # --- The proxy's route table (issue 16; homeserver_proxy/routing.py) -------------------
    # A route change reaches every proxy as a pub/sub message naming the changed fields, and
    # each proxy re-reads only those. As a safety net against a lost message, each proxy also
    # re-reads the whole table (HGETALL, O(tenants)) this often (docs/hibernation.md).
    proxy_route_reload_interval_s: float = Field(default=10.0, gt=0)
    # --- end of the proxy's route table -----------------------------------------------------

    @field_validator("base_domain")
    @classmethod
    def _domain_lower(cls, v: str) -> str:
        v = v.strip().lower().rstrip(".")
        if not v or any(not part for part in v.split(".")):
            raise ValueError("C3_BASE_DOMAIN must be a DNS name such as c3.example.com")
        return v

    @field_validator(
        "proxy_trusted_proxies",
        "outbound_allowed_networks",
        "webhook_allowed_networks",
        mode="before",
    )
    @classmethod
    def _networks(cls, v: Any, info: ValidationInfo) -> Any:
        """Comma-separated CIDRs or addresses (environment) → networks."""
        if not isinstance(v, str):
            return v
        networks = []
        for item in v.split(","):
            if item.strip():
                try:
                    networks.append(ip_network(item.strip(), strict=False))
                except ValueError:
                    setting = f"C3_{(info.field_name or '').upper()}"
                    raise ValueError(
                        f"{setting} must be comma-separated CIDRs or addresses: "
                        f"{item.strip()!r} is neither"
                    ) from None
        return networks

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.mode is Mode.PRODUCTION:
            missing = [
                name
                for name in ("database_url", "redis_url", "secret_key", "operator_token")
                if not getattr(self, name)
            ]
            if missing:
                names = ", ".join("C3_" + m.upper() for m in missing)
                raise ValueError(f"production mode needs explicit {names}; no defaults exist")
            if self.database_url and self.database_url.startswith("sqlite"):
                raise ValueError("production mode needs PostgreSQL, not SQLite (C3_DATABASE_URL)")
            if self.backend is BackendKind.FAKE:
                raise ValueError("the fake backend serves no clients; not in production mode")
            if self.operator_token and len(self.operator_token) < MIN_OPERATOR_TOKEN_LENGTH:
                raise ValueError(
                    f"C3_OPERATOR_TOKEN must be at least {MIN_OPERATOR_TOKEN_LENGTH} characters "
                    "outside local mode (generate one: python -c 'import secrets; "
                    "print(secrets.token_urlsafe(32))')"
                )
        if self.backend is not BackendKind.FAKE and (
            self.fake_backend_fail or self.fake_backend_crash
        ):
            raise ValueError("C3_FAKE_BACKEND_FAIL/CRASH need C3_BACKEND=fake")
        if self.secret_key is not None and len(self.secret_key) < 32:
            raise ValueError("C3_SECRET_KEY must be at least 32 characters")
        if self.contexts_external_ttl_default_s > self.contexts_external_ttl_max_s:
            raise ValueError(
                "C3_CONTEXTS_EXTERNAL_TTL_DEFAULT_S may not exceed C3_CONTEXTS_EXTERNAL_TTL_MAX_S"
            )
        if self.api_port == self.proxy_port and self.api_host == self.proxy_host:
            raise ValueError("C3_API_PORT and C3_PROXY_PORT must differ")
        if self.proxy_metrics_port is not None and self.proxy_metrics_port == self.proxy_port:
            raise ValueError(
                "C3_PROXY_METRICS_PORT must differ from C3_PROXY_PORT: tenants' clients must "
                "never reach the platform's metrics"
            )
        return self

    # Derived values -------------------------------------------------------------------

    @property
    def data_path(self) -> Path:
        return self.data_dir.resolve()

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_path / 'platform.db'}"

    @property
    def effective_proxy_public_url(self) -> str:
        if self.proxy_public_url:
            return self.proxy_public_url.rstrip("/")
        return f"http://{self.proxy_host}:{self.proxy_port}"

    def homeserver_url(self, server_name: str) -> str:
        """Public base URL of a tenant's homeserver through the proxy (Host routing): the
        proxy's public scheme and port with the tenant's server name."""
        public = urlsplit(self.effective_proxy_public_url)
        default_port = {"http": 80, "https": 443}.get(public.scheme)
        port = f":{public.port}" if public.port and public.port != default_port else ""
        return f"{public.scheme}://{server_name}{port}"

    @property
    def contexts_receiver_base_url(self) -> str:
        if self.contexts_appservice_url:
            return self.contexts_appservice_url.rstrip("/")
        return f"http://{self.api_host}:{self.api_port}"

    def require_secret_key(self) -> str:
        if not self.secret_key:
            raise RuntimeError("C3_SECRET_KEY is not set (c3 up generates one for local runs)")
        return self.secret_key

    def require_redis_url(self) -> str:
        if not self.redis_url:
            raise RuntimeError("C3_REDIS_URL is not set (c3 up starts an embedded Redis)")
        return self.redis_url


def generate_secret() -> str:
    return secrets.token_urlsafe(32)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
