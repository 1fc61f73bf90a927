"""Where homeservers run: the interface every backend implements (local processes, Kubernetes)."""

from __future__ import annotations

import abc
import os
import tarfile
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from platform_core import object_store
from platform_core.object_store import ObjectStore
from platform_core.private_files import create_private, private_temp_dir
from provisioner.synapse_config import HomeserverSecrets, HomeserverSpec

# What the proxy bills as messages: every timeline (non-state) event a client sent with
# ``PUT …/send``. Redactions have their own endpoint and are not billed; outliers and
# rejected events are not part of any room's timeline. Same SQL on SQLite and PostgreSQL.
HOMESERVER_MESSAGES_SQL = (
    "SELECT count(*) FROM events WHERE state_key IS NULL AND NOT outlier"
    " AND rejection_reason IS NULL AND type <> 'm.room.redaction'"
)
HOMESERVER_MEDIA_BYTES_SQL = (
    "SELECT coalesce(sum(media_length), 0) FROM local_media_repository WHERE url_cache IS NULL"
)
# What a homeserver still has to do by itself, so it must not be put to sleep: delayed events
# not yet sent (MSC4140: a sleeping server would leave ghost call members behind) and its own
# background jobs (database migrations Synapse runs after start-up; the admin API's
# background_updates/status reads the same table).
HOMESERVER_DUE_WORK_SQL = {
    "delayed_events": "SELECT count(*) FROM delayed_events WHERE NOT is_processed",
    "background_updates": "SELECT count(*) FROM background_updates",
}


# libyaml's parser where PyYAML has it (its wheels do): the usage check and the sleep pass read
# every homeserver's config, and the pure-Python parser took ~4.5 ms of CPU a config, more
# than the database queries they make (docs/benchmarks.md, "The usage check's CPU").
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def database_section(homeserver_yaml: str) -> dict[str, Any]:
    """Synapse's ``database`` section of a rendered ``homeserver.yaml`` ({} when it has none):
    which database the homeserver itself uses, for reading its own records."""
    config = yaml.load(homeserver_yaml, Loader=_YAML_LOADER) or {}  # a safe loader
    section = config.get("database") if isinstance(config, dict) else None
    return section if isinstance(section, dict) else {}


@dataclass(frozen=True)
class HomeserverTarget:
    """Everything a backend needs to run one tenant's homeserver."""

    tenant_id: str
    server_name: str
    public_baseurl: str
    port: int | None
    limits: dict[str, Any]
    secrets: HomeserverSecrets
    # Tenant.homeserver_settings (federation, registration, retention, TURN, OIDC, ...) and the
    # decrypted secrets that go with them (TURN shared secret, OIDC client secret).
    settings: dict[str, Any] = field(default_factory=dict)
    setting_secrets: dict[str, str] = field(default_factory=dict)
    # Synapse's ``database`` section for the tenant's own PostgreSQL database
    # ({"name": "psycopg2", "args": {...}}); None: SQLite in the homeserver's data directory.
    database: dict[str, Any] | None = None
    # C3_OUTBOUND_ALLOWED_NETWORKS: internal networks the homeserver may still reach.
    outbound_allowed_networks: tuple[str, ...] = ()
    # Where the homeserver pushes the platform application service's transactions.
    appservice_url: str | None = None
    plan_code: str = ""  # the tenant's plan (labels the tenant's Kubernetes objects)


def spec_for(target: HomeserverTarget, **placement: Any) -> HomeserverSpec:
    """The homeserver config ``target`` asks for, placed where a backend runs it: ``port``,
    ``bind_address``, ``data_dir`` and, where they differ, ``layout`` and the metrics listener."""
    return HomeserverSpec(
        server_name=target.server_name,
        public_baseurl=target.public_baseurl,
        limits=target.limits,
        settings=target.settings,
        setting_secrets=target.setting_secrets,
        database=target.database,
        outbound_allowed_networks=target.outbound_allowed_networks,
        appservice_url=target.appservice_url,
        **placement,
    )


class Backend(abc.ABC):
    name: str

    @abc.abstractmethod
    def allocate_port(self, taken: set[int]) -> int | None:
        """A port for a new homeserver (None when the backend does not need one)."""

    @abc.abstractmethod
    def render(self, target: HomeserverTarget) -> bool:
        """Write the homeserver's config; True if anything changed. Idempotent."""

    @abc.abstractmethod
    def start(self, target: HomeserverTarget) -> None:
        """Start the homeserver unless it runs already. Idempotent."""

    @abc.abstractmethod
    def is_running(self, tenant_id: str) -> bool:
        """True if the homeserver's process exists (healthy or not)."""

    def running_among(self, tenant_ids: Collection[str]) -> set[str]:
        """Those of ``tenant_ids`` whose homeserver ``is_running``, asked all at once where a
        backend can (Kubernetes: two list calls, not two reads per tenant)."""
        return {tenant_id for tenant_id in tenant_ids if self.is_running(tenant_id)}

    @abc.abstractmethod
    def port_is_free(self, port: int) -> bool:
        """True if the tenant's homeserver can keep ``port``: the backend hands such ports out
        and nothing but this tenant's own homeserver holds it."""

    @abc.abstractmethod
    def upstream_url(self, target: HomeserverTarget) -> str:
        """Base URL at which the proxy and the platform reach this homeserver."""

    @abc.abstractmethod
    def stop(self, tenant_id: str) -> None:
        """Stop the homeserver if it runs. Idempotent."""

    @abc.abstractmethod
    def sleep(self, tenant_id: str) -> None:
        """Stop an idle homeserver so that it takes no memory, keeping everything it needs to
        ``wake`` quickly (its tenant stays active). Idempotent."""

    @abc.abstractmethod
    def wake(self, target: HomeserverTarget) -> None:
        """Start a sleeping homeserver again from its rendered config (the caller waits until
        it is healthy). Idempotent."""

    def due_work(self, tenant_id: str) -> dict[str, int] | None:
        """What the homeserver still has to do by itself (``HOMESERVER_DUE_WORK_SQL``: pending
        delayed events, background jobs), read from its database; None when it has no
        database yet (nothing can be due)."""
        return None

    @abc.abstractmethod
    def archive(self, tenant_id: str, store: ObjectStore) -> str | None:
        """Move the homeserver's data out of service into a ``.tar.gz`` in ``store`` under
        ``object_store.archive_key(tenant_id, ".tar.gz")`` (build it in a private work
        directory, put it, remove the local copy); returns its key, or None when there was
        nothing to archive. Idempotent: once the data is archived, a second call returns the
        newest archive's key and makes no other."""

    def archive_running(self, tenant_id: str, store: ObjectStore) -> str | None:
        """Before a deletion stops the homeserver: archive what can only be read while it
        runs (kubernetes: media, served by Synapse), as ``archive`` would; ``archive`` then
        finds that archive. Returns its key, or None (the default: ``archive`` takes
        everything after the stop). Idempotent."""
        return None

    def warm(self) -> None:
        """Get ready to start homeservers fast (a worker calls it when it starts; the local
        backend starts its Synapse zygote). Never raises; the default does nothing."""
        return None

    @abc.abstractmethod
    def stop_all(self) -> list[str]:
        """Stop every homeserver this backend runs (local shutdown); returns tenant ids."""

    @abc.abstractmethod
    def usage_counts(self, tenant_id: str) -> dict[str, int] | None:
        """The homeserver's own record of billable usage, read from its database:
        ``messages`` (timeline events) and ``media_bytes`` (local uploads). None when the
        homeserver has no database yet."""

    @abc.abstractmethod
    def data_dir(self, tenant_id: str) -> Path | None:
        """The homeserver's files (config, signing key, media; its SQLite database if it has
        no PostgreSQL one) on this worker's filesystem, for exports; None when the backend
        keeps them where a worker cannot read them as files."""

    @abc.abstractmethod
    def log_tail(self, tenant_id: str) -> str:
        """The last lines the homeserver wrote (why it exited during start-up), short
        enough for an operation's error."""

    @abc.abstractmethod
    def log_lines(self, tenant_id: str, lines: int) -> list[str]:
        """The homeserver's last ``lines`` log lines as it wrote them (not redacted: the
        caller redacts before they leave the worker); [] when it has written none."""

    def purge_archives(
        self, tenant_id: str, store: ObjectStore, *, older_than: datetime | None = None
    ) -> int:
        """Delete the tenant's archives and database dumps from ``store`` (all, or those
        stored before ``older_than``); returns how many. Idempotent. Every backend keeps them
        under ``object_store.archive_prefix``, so this one implementation serves all."""
        purged = 0
        for item in store.list(object_store.archive_prefix(tenant_id)):
            if older_than is None or item.modified < older_than:
                store.delete(item.key)
                purged += 1
        return purged

    def export_files(self, tenant_id: str, into: Path) -> Path | None:
        """A directory with the homeserver's ``homeserver.yaml``, ``signing.key`` and
        ``media_store/`` for an export: its data directory, or (when the worker cannot read that)
        what the backend can copy into ``into``. None: the homeserver has none."""
        return self.data_dir(tenant_id)

    def drift(self, target: HomeserverTarget) -> list[str]:
        """What someone changed of the homeserver's deployment since it was applied (the next
        ``render``/``start`` repairs it), for the reconciler's record; [] when nothing did or
        the backend cannot tell."""
        return []


def store_archive(
    store: ObjectStore, work_root: Path, tenant_id: str, fill: Callable[[tarfile.TarFile], None]
) -> str:
    """Write a deletion archive (``fill`` adds its members to a gzipped tar) in a private work
    directory, put it in ``store`` under a fresh archive key, and return the key. The file is
    private from its creation: an archive holds the tenant's messages and secrets."""
    key = object_store.archive_key(tenant_id, ".tar.gz")
    with private_temp_dir(work_root, prefix="archive-") as work:
        local = work / "data.tar.gz"
        with (
            os.fdopen(create_private(local), "wb") as raw,
            tarfile.open(fileobj=raw, mode="w:gz") as tar,
        ):
            fill(tar)
        store.put_file(key, local)
    return key
