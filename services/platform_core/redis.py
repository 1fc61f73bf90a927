"""Redis connection helpers and every key, stream and channel name the platform uses."""

from __future__ import annotations

from dataclasses import dataclass

from platform_core.settings import Settings


@dataclass(frozen=True)
class RedisKeys:
    namespace: str

    @property
    def routes(self) -> str:
        """Hash: ``host:<host>`` / ``slug:<slug>`` -> route JSON (see platform_core.routes)."""
        return f"{self.namespace}:routes"

    @property
    def routes_changed(self) -> str:
        """Pub/sub channel: a message (the changed field, or ``*``) per route table change."""
        return f"{self.namespace}:routes:changed"

    @property
    def usage_stream(self) -> str:
        """Stream of usage batches written by proxies, applied by the usage consumer."""
        return f"{self.namespace}:usage"

    @property
    def usage_dead(self) -> str:
        """Stream of usage entries the consumer could not parse, kept for inspection."""
        return f"{self.namespace}:usage:dead"

    @property
    def usage_group(self) -> str:
        return "usage-appliers"

    @property
    def reconcile_metrics(self) -> str:
        """Hash: reconcile passes, actions and the last pass's time (platform_core.metrics)."""
        return f"{self.namespace}:metrics:reconcile"

    @property
    def usage_metrics(self) -> str:
        """Hash: usage consumer counters, e.g. dead-lettered and dropped entries
        (platform_core.metrics)."""
        return f"{self.namespace}:metrics:usage"

    def tenant_lease(self, tenant_id: str) -> str:
        return f"{self.namespace}:lease:tenant:{tenant_id}"


def keys_for(settings: Settings) -> RedisKeys:
    return RedisKeys(settings.redis_namespace)
