"""The homeserver proxy: a pure ASGI app — resolve tenant, guard path, forward, meter."""

from __future__ import annotations

import logging

import redis.asyncio as aioredis

from homeserver_proxy import errors
from homeserver_proxy.asgi import Message, Receive, Scope, Send
from homeserver_proxy.forwarding import ClientGone, Forwarder
from homeserver_proxy.guard import Verdict, classify
from homeserver_proxy.metering import UsageFlusher, UsageMeter
from homeserver_proxy.routing import RouteTable, normalize_host, split_slug_prefix
from platform_core.redis import keys_for
from platform_core.routes import Route
from platform_core.settings import Settings, get_settings

log = logging.getLogger(__name__)


class ProxyApp:
    def __init__(self, settings: Settings, *, metering: bool = True) -> None:
        self.settings = settings
        self.keys = keys_for(settings)
        self.redis = aioredis.from_url(settings.require_redis_url())
        self.routes = RouteTable(self.redis, self.keys)
        self.forwarder = Forwarder()
        self.meter = UsageMeter()
        self.metering = metering
        self.flusher = UsageFlusher(
            self.meter, self.redis, self.keys, interval=settings.usage_flush_interval_s
        )
        self._public_base = settings.effective_proxy_public_url

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
                if self.metering:
                    self.flusher.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.routes.stop()
                await self.flusher.stop()
                await self.forwarder.stop()
                await self.redis.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self._handle(scope, receive, tracking_send)
        except ClientGone:
            return
        except errors.MatrixError as exc:
            if started:
                raise  # mid-stream failure: closing the connection is the only honest signal
            await exc.send(send)
        except Exception:
            log.exception("proxy error on %s", scope.get("method"))
            if started:
                raise
            await errors.MatrixError(
                502, "M_UNKNOWN", "The proxy could not handle this request"
            ).send(send)

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw_path = scope.get("raw_path") or scope["path"].encode()
        try:
            path = raw_path.decode("ascii")
        except UnicodeDecodeError:
            raise errors.bad_path() from None
        if "?" in path:  # some servers leave the query on raw_path
            path = path.split("?", 1)[0]

        if path == "/_c3/health":
            # The proxy's own liveness; never forwarded (no tenant prefix reaches it).
            await errors.send_json(send, 200, {"status": "ok"})
            return

        prefixed = split_slug_prefix(path)
        route: Route | None
        if prefixed is not None:
            slug, path = prefixed
            route = await self.routes.by_slug(slug)
            if route is None:
                raise errors.unknown_tenant_slug()
            base_url = f"{self._public_base}/t/{route.slug}"
        else:
            host = _single_header(scope, b"host")
            if not host:
                raise errors.MatrixError(400, "M_UNRECOGNIZED", "Missing or repeated Host header")
            route = await self.routes.by_host(normalize_host(host))
            if route is None:
                raise errors.unknown_tenant_host()
            base_url = self.settings.homeserver_url(route.server_name)

        verdict = classify(path)
        if verdict is Verdict.WELL_KNOWN_CLIENT:
            await errors.send_json(send, 200, {"m.homeserver": {"base_url": base_url}})
            return
        if verdict is Verdict.WELL_KNOWN_SERVER:
            # Federation is off for every tenant today, so no server delegation is published.
            raise errors.MatrixError(404, "M_NOT_FOUND", "This homeserver does not federate")
        if verdict is Verdict.MALFORMED:
            raise errors.bad_path()
        if verdict is not Verdict.FORWARD:
            raise errors.not_served()
        if route.status != "active":
            raise errors.tenant_unavailable(route.status)

        result = await self.forwarder.forward(
            scope,
            receive,
            send,
            upstream=route.upstream,
            path=path,
            max_body=route.max_upload_bytes,
        )
        if self.metering:
            self.meter.record_request(route.tenant_id, result.bytes_in, result.bytes_out)
            if result.message_event_id is not None:
                self.meter.record_message(route.tenant_id, result.message_event_id)


def _single_header(scope: Scope, name: bytes) -> str | None:
    found = [value for key, value in scope["headers"] if key == name]
    if len(found) != 1:
        return None
    return found[0].decode("latin-1")


def create_app(settings: Settings | None = None) -> ProxyApp:
    return ProxyApp(settings or get_settings())
