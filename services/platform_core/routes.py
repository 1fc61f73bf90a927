"""The route table shared by the provisioner (writer) and the proxy (reader) through Redis."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Route:
    tenant_id: str
    slug: str
    server_name: str
    upstream: str  # base URL of the tenant's homeserver, e.g. http://127.0.0.1:43121
    status: str  # tenant status: only "active" is forwarded
    max_upload_bytes: int

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, raw: str | bytes) -> Route:
        return cls(**json.loads(raw))

    def fields(self) -> list[str]:
        """The route-table fields under which this route is published."""
        return [host_field(self.server_name), slug_field(self.slug)]


def host_field(host: str) -> str:
    return f"host:{host}"


def slug_field(slug: str) -> str:
    return f"slug:{slug}"


def publish_route(redis_client, keys, route: Route) -> None:  # type: ignore[no-untyped-def]
    """Write ``route`` under its host and slug, then tell every proxy."""
    payload = route.to_json()
    pipe = redis_client.pipeline()
    pipe.hset(keys.routes, mapping={field: payload for field in route.fields()})
    pipe.publish(keys.routes_changed, "*")
    pipe.execute()


def withdraw_route(redis_client, keys, *, server_name: str, slug: str) -> None:  # type: ignore[no-untyped-def]
    pipe = redis_client.pipeline()
    pipe.hdel(keys.routes, host_field(server_name), slug_field(slug))
    pipe.publish(keys.routes_changed, "*")
    pipe.execute()
