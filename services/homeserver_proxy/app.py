"""The proxy's pure ASGI app: dispatches each request — resolve the tenant, guard the path,
limit, forward, meter (the layers in order: see the package docstring)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from urllib.parse import urlsplit

import redis.asyncio as aioredis

from homeserver_proxy import billable, errors
from homeserver_proxy.access_log import access_line
from homeserver_proxy.asgi import Message, Receive, Scope, Send
from homeserver_proxy.billable import Kind
from homeserver_proxy.client_address import client_address
from homeserver_proxy.client_urls import (
    is_login,
    login_answer_for,
    media_server_name,
    starts_sso,
)
from homeserver_proxy.confinement import Confinement
from homeserver_proxy.federation import (
    FEDERATION_MAX_BODY,
    federates,
    public_port,
    server_delegation,
)
from homeserver_proxy.forwarding import ClientGone, Forwarder, SpoolBudget, is_long_poll
from homeserver_proxy.guard import Verdict, classify
from homeserver_proxy.heap import HeapTrimmer, settle_heap
from homeserver_proxy.identity import TokenUsers, whoami
from homeserver_proxy.limits import TenantLimiter
from homeserver_proxy.metering import ExchangeMeter, UsageFlusher, UsageMeter
from homeserver_proxy.proxy_metrics import MetricsListener, ProxyMetrics, RouteClass, route_class
from homeserver_proxy.relay import UpstreamPool
from homeserver_proxy.routing import RouteTable, normalize_host, split_slug_prefix, valid_host
from homeserver_proxy.wake import Waker
from platform_core.logging import request_context, request_id_from, tenant_id_var
from platform_core.redis import keys_for
from platform_core.routes import Route
from platform_core.settings import Settings, get_settings

log = logging.getLogger(__name__)


class ProxyApp:
    def __init__(self, settings: Settings, *, metering: bool = True, tune_gc: bool = False) -> None:
        """``tune_gc``: ``heap.settle_heap()`` once started, and (``C3_PROXY_RETURN_MEMORY``)
        memory given back after crowds of long-polls (``c3 proxy``, a process of its own; not
        for an app embedded in another process, e.g. the tests')."""
        self.settings = settings
        self._tune_gc = tune_gc
        self.keys = keys_for(settings)
        self.redis = aioredis.from_url(settings.require_redis_url())
        self.routes = RouteTable(
            self.redis, self.keys, refresh_interval=settings.proxy_route_reload_interval_s
        )
        public_scheme = urlsplit(settings.effective_proxy_public_url).scheme
        self.forwarder = Forwarder(
            public_scheme=public_scheme,
            spool_budget=SpoolBudget(settings.proxy_spool_budget_bytes, settings.proxy_spool_dir),
        )
        # The fast lane's (relay.RelayProtocol) connections to the homeservers.
        self.relay_pool = UpstreamPool()
        self.public_scheme = (public_scheme or "http").encode()
        self.meter = UsageMeter()
        # Each client address gets a share of its tenant's budget: one client (however many
        # connections it opens) cannot use up what the tenant's other users need.
        self.limiter = TenantLimiter(
            client_concurrency_share=settings.proxy_client_concurrency_share,
            client_rate_share=settings.proxy_client_rate_share,
        )
        # Remote servers get buckets of their own (same plan limits): a flood of federation
        # traffic cannot use up the tenant's clients' rate, nor the other way round. Not split
        # per address: a few big servers are most of a tenant's federation traffic.
        self.federation_limiter = TenantLimiter()
        self._trusted_proxies = settings.proxy_trusted_proxies
        self.metering = metering
        self.token_users = TokenUsers(
            lambda upstream, token: whoami(self.forwarder.session, upstream, token)
        )
        self.exchange_meter = ExchangeMeter(self.meter, self.token_users)
        # External context participants: no other profiles, no media of other rooms.
        self.confinement = Confinement(self.redis, self.keys)
        self.metrics = ProxyMetrics()
        self.flusher = UsageFlusher(
            self.meter,
            self.redis,
            self.keys,
            interval=settings.usage_flush_interval_s,
            on_flushed=self.metrics.batch_flushed,
        )
        self.metrics.pending_batches_from(lambda: self.flusher.queued_batches)
        self._metrics_listener = (
            MetricsListener(
                self.metrics.registry, settings.proxy_metrics_host, settings.proxy_metrics_port
            )
            if settings.proxy_metrics_port is not None
            else None
        )
        # Sleeping homeservers: held requests, one wake, heal on a refused connection.
        self.wake = Waker(
            self.redis,
            self.keys,
            lambda: self.forwarder.session,
            timeout_s=settings.wake_timeout_s,
            flush_interval_s=settings.usage_flush_interval_s,
        )
        self.trimmer = (
            HeapTrimmer(lambda: self.metrics.open_long_polls)
            if tune_gc and settings.proxy_return_memory
            else None
        )
        self._public_base = settings.effective_proxy_public_url
        self._federation_port = public_port(self._public_base)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        else:  # websocket: Matrix clients do not use it
            await send({"type": "websocket.close", "code": 1008})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.forwarder.start()
                await self.routes.start()
                if self._metrics_listener is not None:
                    self._metrics_listener.start()
                if self.metering:
                    self.flusher.start()
                self.wake.start()
                if self.trimmer is not None:
                    self.trimmer.start()
                if self._tune_gc:  # last: everything start-up made is frozen
                    settle_heap()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.routes.stop()
                await self.wake.stop()
                if self.trimmer is not None:
                    await self.trimmer.stop()
                await self.token_users.settle(deadline_s=2.0)
                await self.flusher.stop()
                self.relay_pool.close()
                await self.forwarder.stop()
                await self.redis.aclose()
                if self._metrics_listener is not None:
                    self._metrics_listener.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = request_id_from(_request_id_header(scope))
        # Upstream gets the same id (its header replaced, never repeated); the client gets it
        # back; every log line of this request carries it.
        scope["headers"] = [
            *(h for h in scope["headers"] if h[0] != b"x-request-id"),
            (b"x-request-id", request_id.encode()),
        ]
        id_header = (b"x-request-id", request_id.encode())
        began = time.perf_counter()
        route = route_class(scope["path"])
        status = 0  # the answer's, once its head is sent

        async def tracking_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *(h for h in message.get("headers", []) if h[0].lower() != b"x-request-id"),
                    id_header,
                ]
            await send(message)

        with request_context(request_id):
            try:
                await self._dispatch(
                    scope, receive, tracking_send, route, started=lambda: status != 0
                )
            finally:
                elapsed = time.perf_counter() - began
                if status:
                    self.metrics.answered(route, status, elapsed)
                if self.settings.proxy_access_log:
                    access_line(scope, status, elapsed)

    async def _dispatch(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        route: RouteClass,
        *,
        started: Callable[[], bool],
    ) -> None:
        try:
            await self._handle(scope, receive, send)
        except ClientGone:
            return
        except errors.MatrixError as exc:
            self._count_error(route, exc)
            if started():
                raise  # mid-stream failure: closing the connection is the only honest signal
            await exc.send(send)
        except Exception:
            log.exception("proxy error on %s", scope.get("method"))
            if started():
                raise
            await errors.MatrixError(
                502, "M_UNKNOWN", "The proxy could not handle this request"
            ).send(send)

    def _count_error(self, route: RouteClass, exc: errors.MatrixError) -> None:
        if exc.reason.startswith("upstream_"):
            self.metrics.upstream_error(route, exc.reason.removeprefix("upstream_"))
        else:
            self.metrics.refused(exc.reason)

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Resolve the tenant, guard the path, then answer, redirect or forward."""
        path = _raw_path(scope)
        host = _checked_head(scope)
        if path == "/_c3/health":
            # The proxy's own liveness; never forwarded (no tenant prefix reaches it).
            await errors.send_json(send, 200, {"status": "ok"})
            return
        target = await self._resolve(scope["method"], path, host)
        tenant_id_var.set(target.route.tenant_id)
        verdict = classify(target.path)
        if verdict is Verdict.WELL_KNOWN_CLIENT:
            await errors.send_json(send, 200, {"m.homeserver": {"base_url": target.base_url}})
            return
        if verdict is Verdict.WELL_KNOWN_SERVER:
            if not federates(target.route):
                raise errors.does_not_federate(well_known=True)
            delegation = server_delegation(target.route, self._federation_port)
            await errors.send_json(send, 200, delegation)
            return
        _refuse_unless_forwarded(verdict, target)
        route, path = target.route, target.path
        if verdict is Verdict.FEDERATION:
            await self._federate(route, scope, receive, send, path)
        elif target.by_prefix and starts_sso(scope["method"], path):
            # Single sign-on ends at the tenant's host name (Synapse's public_baseurl, where
            # the identity provider calls back): it must start there too.
            location = (self.settings.homeserver_url(route.server_name) + path).encode()
            query = scope.get("query_string", b"")
            await errors.send_redirect(send, location + (b"?" + query if query else b""))
        else:
            await self.confinement.check(scope, path)
            await self._forward(route, scope, receive, send, path, base_url=target.base_url)

    async def _resolve(self, method: str, path: str, host: str | None) -> _Target:
        """The tenant a request is for: by the ``/t/<slug>`` prefix, else by exact Host, else
        (media only) by the server name in the path."""
        prefixed = split_slug_prefix(path)
        if prefixed is not None:
            slug, path = prefixed
            route = await self.routes.by_slug(slug)
            if route is None:
                raise errors.unknown_tenant_slug()
            return _Target(route, path, f"{self._public_base}/t/{route.slug}", by_prefix=True)
        if host is None:
            raise errors.bad_framing("Missing Host header")
        host_name = normalize_host(host)
        route = await self.routes.by_host(host_name)
        if route is not None:
            # The name the client used (its server name or a custom domain), on the proxy's
            # public scheme and port.
            return _Target(route, path, self.settings.homeserver_url(host_name))
        route = await self._media_owner(method, path)
        if route is None:
            raise errors.unknown_tenant_host()
        return _Target(route, path, self.settings.homeserver_url(route.server_name))

    async def _media_owner(self, method: str, path: str) -> Route | None:
        """The tenant whose server name a media download/thumbnail path names, for a request
        that names no tenant by Host or prefix (SDKs that build media URLs from the origin
        alone). Only a tenant's own server name matches: never a custom domain, never a
        server name with a port. A Host or prefix that names a tenant always wins over this
        (a tenant's client fetching a remote server's media goes to its own homeserver)."""
        server_name = media_server_name(method, path)
        if server_name is None:
            return None
        route = await self.routes.by_host(server_name)
        return route if route is not None and route.server_name == server_name else None

    async def _forward(
        self,
        route: Route,
        scope: Scope,
        receive: Receive,
        send: Send,
        path: str,
        *,
        base_url: str,
    ) -> None:
        """A client request: limited, forwarded, metered. A login answer's ``well_known``
        names ``base_url``, the way this client came in (as our /.well-known does)."""
        long_poll = is_long_poll(path)
        client = client_address(scope, self._trusted_proxies)
        # Refused here (429/503) means never forwarded and never billed: a tenant does not pay
        # for requests we turned away.
        admission = self.limiter.admit(route, client, long_poll=long_poll)
        kind = billable.kind_of(scope["method"], path) if self.metering else Kind.OTHER
        if long_poll:
            self.metrics.long_poll_opened()
        try:
            # A sleeping homeserver wakes first (a client leaving meanwhile is ClientGone).
            route, receive = await self.wake.ready(route, receive)
            result = await self.forwarder.forward(
                scope,
                receive,
                send,
                upstream=route.upstream,
                path=path,
                max_body=route.max_upload_bytes,
                client_address=client,
                before_upstream=admission.take_tenant_slot,
                capture=kind.captures_response,
                rewrite=(
                    partial(login_answer_for, base_url) if is_login(scope["method"], path) else None
                ),
            )
        except errors.MatrixError as exc:
            raise self.wake.after_failure(route, exc) from None
        finally:
            admission.release()
            if long_poll:
                self.metrics.long_poll_closed()
        if result.first_byte_s is not None:
            self.metrics.first_byte(route_class(path), result.first_byte_s)
        if self.metering:
            self.exchange_meter.record(route, scope, path, kind, result)

    async def _federate(
        self, route: Route, scope: Scope, receive: Receive, send: Send, path: str
    ) -> None:
        """A server-server request: limited and forwarded, never metered. Remote servers start
        it, not the tenant's users: counted, it would let any server on the internet run up a
        tenant's bill, and its events (messages from other servers, remote users) are neither
        the tenant's sent messages nor its active users."""
        client = client_address(scope, self._trusted_proxies)
        admission = self.federation_limiter.admit(route, client, long_poll=False)
        try:
            route, receive = await self.wake.ready(route, receive)
            await self.forwarder.forward(
                scope,
                receive,
                send,
                upstream=route.upstream,
                path=path,
                max_body=max(route.max_upload_bytes, FEDERATION_MAX_BODY),
                client_address=client,
                before_upstream=admission.take_tenant_slot,
            )
        except errors.MatrixError as exc:
            raise self.wake.after_failure(route, exc) from None
        finally:
            admission.release()


@dataclass(frozen=True)
class _Target:
    """Where a request goes: its tenant, its path there (without a ``/t/<slug>`` prefix) and
    the base URL the client came in by."""

    route: Route
    path: str
    base_url: str
    by_prefix: bool = False


def _raw_path(scope: Scope) -> str:
    """The request path as the client sent it (undecoded), without a query."""
    raw_path = scope.get("raw_path") or scope["path"].encode()
    try:
        path: str = raw_path.decode("ascii")
    except UnicodeDecodeError:
        raise errors.bad_path() from None
    if "?" in path:  # some servers leave the query on raw_path
        path = path.split("?", 1)[0]
    return path


def _refuse_unless_forwarded(verdict: Verdict, target: _Target) -> None:
    """Raise the Matrix error for a request that is not to be forwarded: a malformed or
    unserved path, server-server traffic for a tenant that does not federate (or under
    ``/t/<slug>``: remote servers address a tenant by Host), a tenant that is not active."""
    if verdict is Verdict.MALFORMED:
        raise errors.bad_path()
    if verdict is Verdict.FEDERATION:
        if target.by_prefix or not federates(target.route):
            raise errors.does_not_federate()
    elif verdict is not Verdict.FORWARD:
        raise errors.not_served()
    if target.route.status != "active":
        raise errors.tenant_unavailable(target.route.status)


def _checked_head(scope: Scope) -> str | None:
    """The request's Host (None if absent), after refusing what the HTTP parser lets through
    but a server behind us could read differently: a repeated or invalid Host, a repeated or
    non-decimal Content-Length, Content-Length with Transfer-Encoding, a transfer coding
    other than plain ``chunked`` (or any on HTTP/1.0), an HTTP version other than 1.0 and
    1.1. (llhttp refuses most of these already; this keeps the proxy safe under any server.)"""
    version = scope.get("http_version", "1.1")
    if version not in ("1.1", "1.0"):
        raise errors.bad_framing(f"Unsupported HTTP version {version}")
    host: bytes | None = None
    hosts = lengths = codings = 0
    coding = length = b""
    for name, value in scope["headers"]:
        if name == b"host":
            hosts += 1
            host = value
        elif name == b"content-length":
            lengths += 1
            length = value
        elif name == b"transfer-encoding":
            codings += 1
            coding = value
    if hosts > 1:
        raise errors.bad_framing("Repeated Host header")
    if host is not None and not valid_host(host):
        raise errors.bad_framing("Invalid Host header")
    if host is None and version == "1.1":
        raise errors.bad_framing("Missing Host header")
    if lengths > 1 or (lengths and codings) or (lengths and not length.isdigit()):
        raise errors.bad_framing("Ambiguous request body length")
    if codings and (codings > 1 or version == "1.0" or coding.strip().lower() != b"chunked"):
        raise errors.bad_framing("Unsupported Transfer-Encoding")
    return host.decode("latin-1") if host is not None else None


def _request_id_header(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            return str(value.decode("latin-1"))
    return None


def create_app(settings: Settings | None = None) -> ProxyApp:
    return ProxyApp(settings or get_settings())
