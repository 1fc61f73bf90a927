"""The route table shared by the provisioner (writer) and the proxy (reader) through Redis.

The table is one Redis hash (``RedisKeys.routes``): each route under its ``host:<server name>``
and ``slug:<slug>`` fields. Every write is followed by a PUBLISH on ``RedisKeys.routes_changed``
whose message is the JSON list of the fields written or removed (``change_message``), so a proxy
re-reads just those (HMGET) instead of the whole table: sleeping homeservers publish on every
sleep and wake, and a whole-table reload per change costs O(tenants). A message that is not such
a list (``"*"`` from a publisher older than this) means "reload everything"; proxies older than
this reload everything on any message: tolerant both ways during a rolling upgrade.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import asdict, dataclass
from typing import Any

# Per-tenant limits each proxy instance enforces (plan limits ``proxy_*``), by default: the one
# definition, used by the provisioner's default plan limits and for routes published before the
# fields existed. Generous: a busy enterprise tenant stays well below them; they exist to stop a
# runaway client, not to ration.
DEFAULT_PROXY_RATE_PER_SECOND = 200.0
DEFAULT_PROXY_RATE_BURST = 400
DEFAULT_PROXY_MAX_CONCURRENT = 256

log = logging.getLogger(__name__)

# Fields per HSCAN round trip of a whole load: ~10 ms of parsing each at most.
_SCAN_COUNT = 500


@dataclass(frozen=True)
class Route:
    tenant_id: str
    slug: str
    server_name: str
    upstream: str  # base URL of the tenant's homeserver, e.g. http://127.0.0.1:43121
    status: str  # tenant status: only "active" is forwarded
    max_upload_bytes: int
    # Requests per second (token bucket refill rate) and bucket size, per proxy instance.
    rate_per_second: float = DEFAULT_PROXY_RATE_PER_SECOND
    rate_burst: int = DEFAULT_PROXY_RATE_BURST
    # Requests in flight per proxy instance; long-polls (/sync, /events) are not counted.
    max_concurrent: int = DEFAULT_PROXY_MAX_CONCURRENT
    # Federation mode of the homeserver ("off", "allowlist", "open"): the proxy forwards
    # /_matrix/federation and /_matrix/key and serves /.well-known/matrix/server only if not "off".
    federation: str = "off"
    # The homeserver sleeps (idle, stopped by the worker; the tenant is still "active"): the
    # proxy holds the tenant's requests, asks for one wake and forwards once it is awake
    # (homeserver_proxy.wake).
    asleep: bool = False

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, raw: str | bytes) -> Route:
        """Tolerant both ways during a rolling upgrade: fields missing from an older writer take
        their defaults, fields added by a newer writer are ignored."""
        data: dict[str, Any] = json.loads(raw)
        return cls(**{k: v for k, v in data.items() if k in _FIELDS})

    def fields(self) -> list[str]:
        """The route-table fields under which this route is published."""
        return [host_field(self.server_name), slug_field(self.slug)]

    def differs_from(self, payload: str | bytes) -> set[str]:
        """The fields of this route that a published ``payload`` has otherwise (or lacks)."""
        published: dict[str, Any] = json.loads(payload)
        return {k for k, v in asdict(self).items() if published.get(k) != v}


_FIELDS = frozenset(f.name for f in dataclasses.fields(Route))


def host_field(host: str) -> str:
    return f"host:{host}"


def slug_field(slug: str) -> str:
    return f"slug:{slug}"


def published_payloads(redis_client, keys, route: Route) -> list[bytes | None]:  # type: ignore[no-untyped-def]
    """What is published under each of ``route``'s fields, as stored (None where nothing is);
    equal to ``route.to_json().encode()`` where the published route is current."""
    return [redis_client.hget(keys.routes, field) for field in route.fields()]


_HMGET_FIELDS = 2000  # fields read per HMGET by ``published_under``


def published_under(redis_client, keys, fields: list[str]) -> dict[str, bytes | str | None]:  # type: ignore[no-untyped-def]
    """What is published under each of ``fields``, as stored (None where nothing is): one
    ``HMGET`` per ``_HMGET_FIELDS`` fields, for a pass over many tenants' routes."""
    published: dict[str, bytes | str | None] = {}
    for at in range(0, len(fields), _HMGET_FIELDS):
        chunk = fields[at : at + _HMGET_FIELDS]
        published.update(zip(chunk, redis_client.hmget(keys.routes, chunk), strict=True))
    return published


def is_published(redis_client, keys, *, server_name: str, slug: str) -> bool:  # type: ignore[no-untyped-def]
    """Whether anything is published under the server name or the slug."""
    return bool(
        redis_client.hexists(keys.routes, host_field(server_name))
        or redis_client.hexists(keys.routes, slug_field(slug))
    )


async def read_route(redis_client, keys, field: str) -> Route | None:  # type: ignore[no-untyped-def]
    """The route published under ``field`` (async client: the proxy's hot path), if any."""
    raw = await redis_client.hget(keys.routes, field)
    return None if raw is None else Route.from_json(raw)


async def read_fields(redis_client, keys, fields: list[str]) -> dict[str, Route | None]:  # type: ignore[no-untyped-def]
    """The routes published under ``fields`` (async client, one HMGET); None where nothing is
    published any more, or where the entry is malformed (logged)."""
    payloads = await redis_client.hmget(keys.routes, fields)
    found: dict[str, Route | None] = {}
    for name, payload in zip(fields, payloads, strict=True):
        try:
            found[name] = None if payload is None else Route.from_json(payload)
        except (ValueError, TypeError):
            log.error("ignoring malformed route entry %s", name)
            found[name] = None
    return found


def change_message(fields: list[str]) -> str:
    """The ``routes_changed`` message telling proxies which fields changed."""
    return json.dumps(fields)


def changed_fields(message: str | bytes) -> list[str] | None:
    """The fields a ``routes_changed`` message names; None when it names none that this
    reader understands (an older publisher's ``"*"``, anything malformed): reload everything."""
    try:
        fields = json.loads(message)
    except ValueError:  # UnicodeDecodeError and JSONDecodeError included
        return None
    if not isinstance(fields, list) or not all(
        isinstance(f, str) and f.startswith(("host:", "slug:")) for f in fields
    ):
        return None
    return fields


async def read_routes(redis_client, keys) -> dict[str, Route]:  # type: ignore[no-untyped-def]
    """Every published route by field (async client); a malformed entry is logged and left
    out rather than hiding the others.

    Read with HSCAN, ``_SCAN_COUNT`` fields a round trip, not one HGETALL: at 10,000 tenants an
    HGETALL answer takes a proxy's event loop ~0.3 s to parse in one piece (every request
    waits meanwhile); in pieces, requests are served between them. A route written or removed
    during the scan may be missed or still seen: its change notification, handled after the
    load, puts it right. A tenant's host and slug fields hold the same payload: it is parsed
    once and both fields share the Route."""
    table: dict[str, Route] = {}
    parsed: dict[bytes | str, Route] = {}
    async for field, payload in redis_client.hscan_iter(keys.routes, count=_SCAN_COUNT):
        name = field.decode() if isinstance(field, bytes) else field
        route = parsed.get(payload)
        if route is None:
            try:
                route = parsed[payload] = Route.from_json(payload)
            except (ValueError, TypeError):
                log.error("ignoring malformed route entry %s", name)
                continue
        table[name] = route
    return table


def publish_route(redis_client, keys, route: Route) -> None:  # type: ignore[no-untyped-def]
    """Write ``route`` under its host and slug, then tell every proxy."""
    payload = route.to_json()
    fields = route.fields()
    pipe = redis_client.pipeline()
    pipe.hset(keys.routes, mapping={field: payload for field in fields})
    pipe.publish(keys.routes_changed, change_message(fields))
    pipe.execute()


def withdraw_route(redis_client, keys, *, server_name: str, slug: str) -> None:  # type: ignore[no-untyped-def]
    fields = [host_field(server_name), slug_field(slug)]
    pipe = redis_client.pipeline()
    pipe.hdel(keys.routes, *fields)
    pipe.publish(keys.routes_changed, change_message(fields))
    pipe.execute()
