"""Idempotent lifecycle steps for one tenant's homeserver.

Each step reads what exists and does only what is missing: a homeserver record with secrets and
a port, rendered config, a running and healthy process, a registered platform admin, a
published route. Running a step twice changes nothing the second time.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from functools import cached_property, lru_cache
from typing import Any
from urllib.parse import urlsplit

import httpx
import redis
from sqlalchemy.orm import Session

from platform_core import appservice, object_store, outbound
from platform_core.crypto import SecretBox
from platform_core.errors import Conflict, PermanentError, TemporaryError
from platform_core.homeserver_settings import effective_max_upload_bytes, federation_mode
from platform_core.models import (
    Homeserver,
    HomeserverDesiredState,
    Plan,
    Tenant,
)
from platform_core.object_store import ObjectStore
from platform_core.redis import RedisKeys, keys_for
from platform_core.routes import Route, publish_route, withdraw_route
from platform_core.settings import BackendKind, Settings, get_settings
from platform_core.synapse_admin import (
    PLATFORM_ADMIN_LOCALPART,
    SynapseAdminClient,
    login_with_password,
)
from provisioner import repository, tenant_databases
from provisioner.backends import fake
from provisioner.backends.base import Backend, HomeserverTarget
from provisioner.backends.fake import FakeBackend
from provisioner.backends.local import LocalBackend
from provisioner.synapse_config import HomeserverSecrets, effective_limits

log = logging.getLogger(__name__)


class Context:
    """What a task works with: the settings, and the backend — made on first use, so a
    backend that cannot be made (no cluster access, say) fails the operation that needs it,
    with its reason, instead of the task before it could record anything."""

    def __init__(self, settings: Settings, backend: Backend | None = None) -> None:
        self.settings = settings
        self._backend = backend

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            self._backend = make_backend(self.settings)
        return self._backend

    @cached_property
    def box(self) -> SecretBox:
        return SecretBox(self.settings.require_secret_key())

    @cached_property
    def redis(self) -> redis.Redis:
        # Timeouts: a Redis that hangs (rather than refuses) must fail a step, which then
        # retries, instead of holding the worker forever.
        return redis.Redis.from_url(
            self.settings.require_redis_url(), socket_timeout=10, socket_connect_timeout=5
        )

    @cached_property
    def keys(self) -> RedisKeys:
        return keys_for(self.settings)

    @cached_property
    def store(self) -> ObjectStore:
        """Where exports, deletion archives and database dumps go."""
        return object_store.from_settings(self.settings)


def make_backend(settings: Settings) -> Backend:
    if settings.backend is BackendKind.LOCAL:
        return LocalBackend(
            settings.data_path,
            python=settings.synapse_python,
            jemalloc=settings.synapse_jemalloc,
            zygote=settings.synapse_zygote,
            gc_check_s=settings.synapse_gc_check_s,
            start_timeout_s=settings.homeserver_start_timeout_s,
            ports=settings.homeserver_ports,
        )
    if settings.backend is BackendKind.FAKE:
        return FakeBackend(
            settings.data_path,
            boot_s=settings.fake_homeserver_boot_s,
            fail=fake.names(settings.fake_backend_fail),
            crash=fake.names(settings.fake_backend_crash),
        )
    if settings.backend is BackendKind.KUBERNETES:
        # Imported here: lightkube is needed only where this backend runs.
        from provisioner.backends.kubernetes import KubernetesBackend

        return KubernetesBackend(settings)
    raise PermanentError(f"backend {settings.backend.value!r} is not available in this build")


_context: Context | None = None
_context_lock = threading.Lock()  # the wake lane runs tasks in threads


def context() -> Context:
    global _context
    if _context is None:
        with _context_lock:
            if _context is None:
                _context = Context(get_settings())
    return _context


# Record -------------------------------------------------------------------------------


def ensure_homeserver_record(session: Session, ctx: Context, tenant: Tenant) -> Homeserver:
    hs = repository.get_homeserver(session, tenant.id)
    if hs is None:
        hs = Homeserver(
            tenant_id=tenant.id,
            backend=ctx.backend.name,
            desired_state=HomeserverDesiredState.RUNNING,
            secrets_encrypted=ctx.box.encrypt_json(HomeserverSecrets.generate().to_dict()),
            database_name=tenant_databases.choose_database(ctx.settings, tenant.id),
        )
        session.add(hs)
    if hs.port is None:
        hs.port = ctx.backend.allocate_port(repository.taken_ports(session))
    hs.desired_state = HomeserverDesiredState.RUNNING
    session.flush()
    return hs


def target_for(ctx: Context, tenant: Tenant, plan: Plan, hs: Homeserver) -> HomeserverTarget:
    if hs.secrets_encrypted is None:
        raise PermanentError("homeserver record has no secrets")
    hs_secrets = HomeserverSecrets.from_dict(ctx.box.decrypt_json(hs.secrets_encrypted))
    if not hs_secrets.appservice_as_token:
        # A homeserver made before contexts existed: its application service tokens are made
        # once and kept with its other secrets (the caller's transaction commits them).
        hs_secrets = hs_secrets.with_appservice_tokens()
        hs.secrets_encrypted = ctx.box.encrypt_json(hs_secrets.to_dict())
    return HomeserverTarget(
        tenant_id=str(tenant.id),
        server_name=tenant.server_name,
        public_baseurl=ctx.settings.homeserver_url(tenant.server_name) + "/",
        port=hs.port,
        limits=dict(plan.limits or {}),
        secrets=hs_secrets,
        settings=dict(tenant.homeserver_settings or {}),
        setting_secrets=_setting_secrets(ctx, tenant),
        database=tenant_databases.synapse_database(ctx.settings, hs.database_name, hs_secrets),
        outbound_allowed_networks=tuple(str(n) for n in ctx.settings.outbound_allowed_networks),
        appservice_url=appservice.receiver_url(
            ctx.settings.contexts_receiver_base_url, str(tenant.id)
        ),
        plan_code=plan.code,
    )


def _setting_secrets(ctx: Context, tenant: Tenant) -> dict[str, str]:
    if tenant.settings_secrets_encrypted is None:
        return {}
    stored = ctx.box.decrypt_json(tenant.settings_secrets_encrypted)
    return {key: str(value) for key, value in stored.items()}


def ensure_port_usable(session: Session, ctx: Context, hs: Homeserver) -> None:
    """A stopped homeserver whose port another program took, or whose port lies outside the
    backend's homeserver ports (C3_HOMESERVER_PORTS), gets a new port."""
    if hs.port is None or ctx.backend.is_running(str(hs.tenant_id)):
        return
    if not ctx.backend.port_is_free(hs.port):
        taken = repository.taken_ports(session)
        old, hs.port = hs.port, ctx.backend.allocate_port(taken | {hs.port})
        log.warning(
            "tenant %s: port %s is taken by another program or outside the homeserver ports;"
            " moved to %s",
            hs.tenant_id,
            old,
            hs.port,
        )
        session.flush()


# Process ------------------------------------------------------------------------------


def check_outbound_hosts(target: HomeserverTarget) -> None:
    """The tenant's OIDC issuer was checked when it was set; its name may resolve elsewhere
    now. A homeserver is never (re)configured to connect into an internal network."""
    issuer = (target.settings.get("oidc") or {}).get("issuer")
    if not issuer:
        return
    try:
        outbound.check_host(
            urlsplit(issuer).hostname or "",
            outbound.parse_networks(target.outbound_allowed_networks),
        )
    except outbound.OutboundRefused as exc:
        raise PermanentError(
            f"oidc.issuer refused: {exc}; set another issuer or remove SSO (PATCH oidc)"
        ) from None


def ensure_running(ctx: Context, target: HomeserverTarget) -> bool:
    """Render config, (re)start if needed, and wait until the homeserver is healthy; True if a
    running homeserver was restarted because its config changed."""
    check_outbound_hosts(target)
    changed = ctx.backend.render(target)
    restarted = changed and ctx.backend.is_running(target.tenant_id)
    if restarted:
        log.info("tenant %s: config changed; restarting homeserver", target.tenant_id)
        ctx.backend.stop(target.tenant_id)
    ctx.backend.start(target)
    wait_healthy(ctx, target)
    return restarted


def ensure_awake(
    ctx: Context, target: HomeserverTarget, marks: list[tuple[str, float]] | None = None
) -> None:
    """Wake a sleeping homeserver from its current config (a reconfigure while it slept only
    rendered it) and wait until it is healthy; ``marks`` gets when each step ended."""
    marks = [] if marks is None else marks
    check_outbound_hosts(target)
    ctx.backend.render(target)
    marks.append(("render", time.monotonic()))
    ctx.backend.wake(target)
    marks.append(("start", time.monotonic()))
    wait_healthy(ctx, target)
    marks.append(("healthy", time.monotonic()))


@lru_cache(maxsize=1)
def health_client() -> httpx.Client:
    """One client per worker process: building one loads the CA bundle (~60 ms), which was
    most of a reconcile pass that had nothing to do."""
    return httpx.Client(timeout=2.0)


# A forked homeserver (the zygote) answers ~0.2-0.4 s after its start: a coarse poll would
# be a good part of every wake.
_HEALTH_POLL_S = 0.025


def wait_healthy(ctx: Context, target: HomeserverTarget) -> None:
    url = ctx.backend.upstream_url(target) + "/health"
    deadline = time.monotonic() + ctx.settings.homeserver_start_timeout_s
    client = health_client()
    while time.monotonic() < deadline:
        try:
            if client.get(url).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if not ctx.backend.is_running(target.tenant_id):
            raise TemporaryError(
                "homeserver exited during start-up: " + ctx.backend.log_tail(target.tenant_id)
            )
        time.sleep(_HEALTH_POLL_S)
    raise TemporaryError(
        f"homeserver not healthy after {ctx.settings.homeserver_start_timeout_s:.0f}s"
    )


# Admin --------------------------------------------------------------------------------


def ensure_admin(ctx: Context, tenant: Tenant, hs: Homeserver, target: HomeserverTarget) -> None:
    """Register the platform's admin account on the homeserver once; keep its token encrypted."""
    if hs.admin_token_encrypted is not None:
        return
    base_url = ctx.backend.upstream_url(target)
    user_id = f"@{PLATFORM_ADMIN_LOCALPART}:{tenant.server_name}"

    async def register() -> str:
        async with SynapseAdminClient(base_url) as client:
            try:
                answer = await client.register_with_shared_secret(
                    shared_secret=target.secrets.registration_shared_secret,
                    username=PLATFORM_ADMIN_LOCALPART,
                    password=target.secrets.admin_password,
                    admin=True,
                )
            except Conflict:
                # Registered by an earlier attempt that died before saving the token.
                return await login_with_password(base_url, user_id, target.secrets.admin_password)
        return str(answer["access_token"])

    token = asyncio.run(register())
    hs.admin_user_id = user_id
    hs.admin_token_encrypted = ctx.box.encrypt(token)


# Route --------------------------------------------------------------------------------


def route_for(ctx: Context, tenant: Tenant, hs: Homeserver, target: HomeserverTarget) -> Route:
    upstream = hs.upstream_url or ctx.backend.upstream_url(target)
    return _route(tenant, hs, upstream, target.limits, target.settings)


def recorded_route(tenant: Tenant, plan: Plan, hs: Homeserver) -> Route | None:
    """``route_for`` from the records alone, without the homeserver's secrets (which a target
    needs decrypted): None when the homeserver's upstream is not recorded yet."""
    if not hs.upstream_url:
        return None
    limits = dict(plan.limits or {})  # as ``target_for`` reads them
    return _route(tenant, hs, hs.upstream_url, limits, dict(tenant.homeserver_settings or {}))


def _route(
    tenant: Tenant,
    hs: Homeserver,
    upstream: str,
    plan_limits: dict[str, Any],
    settings: dict[str, Any],
) -> Route:
    limits = effective_limits(plan_limits)
    return Route(
        tenant_id=str(tenant.id),
        slug=tenant.slug,
        server_name=tenant.server_name,
        upstream=upstream,
        status=tenant.status.value,
        max_upload_bytes=effective_max_upload_bytes(limits, settings),
        rate_per_second=float(limits["proxy_rate_per_second"]),
        rate_burst=int(limits["proxy_rate_burst"]),
        max_concurrent=int(limits["proxy_max_concurrent"]),
        federation=federation_mode(settings).value,
        asleep=hs.asleep_since is not None,
    )


def publish(ctx: Context, route: Route) -> None:
    try:
        publish_route(ctx.redis, ctx.keys, route)
    except redis.RedisError as exc:
        raise TemporaryError(
            f"route not published: Redis unavailable ({type(exc).__name__})"
        ) from exc


def withdraw(ctx: Context, tenant: Tenant) -> None:
    try:
        withdraw_route(ctx.redis, ctx.keys, server_name=tenant.server_name, slug=tenant.slug)
    except redis.RedisError as exc:
        raise TemporaryError(
            f"route not withdrawn: Redis unavailable ({type(exc).__name__})"
        ) from exc
