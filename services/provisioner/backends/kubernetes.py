"""Kubernetes backend: each tenant's Synapse in its own namespace ``c3-t-<tenant id>``.

The objects (``kubernetes_manifests``) are server-side applied by one field manager,
``c3-provisioner``, with ``force`` on the fields it owns: applying twice changes nothing, and
re-applying repairs whatever someone changed or deleted. Suspend scales the StatefulSet to 0 and
resume to 1; delete archives the tenant's config and secrets, deletes the namespace and waits
until the cluster has removed it. What the cluster observes (ready replicas, the pod's phase and
restarts, the warnings of a crash loop) answers ``is_running`` and ``log_tail``, so the same
steps and reconciler drive this backend as the local one.

Why lightkube: typed models of every kind we apply (checked by mypy, validated by the tests
against the Kubernetes schemas), server-side apply as one call (``Client.apply`` with
``field_manager`` and ``force``), kubeconfig / in-cluster service account loading, and a small
synchronous client — where the official ``kubernetes`` client needs hand-built patch bodies and
content types for server-side apply, and brings a generated client of every API group.

The worker cannot read a pod's volume: ``data_dir`` is None. An export of a tenant here holds its
database, its config and signing key (from the ConfigMap and Secret) and its local media, which
``provisioner.media_copy`` downloads through the homeserver's own APIs with the platform admin's
token into Synapse's media_store layout (the tenant's NetworkPolicy lets workers reach port
8008). A deletion archive holds the config, secrets and media the same way: it is made by
``archive_running`` *before* the deletion stops the homeserver and drops its database (media
can only be listed and read from a running Synapse); ``archive`` then finds it and only deletes
the namespace. A suspended homeserver is scaled to one replica for the copy and back to zero.
"""

from __future__ import annotations

import base64
import io
import os
import tarfile
import time
import uuid
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx2
import yaml
from lightkube import Client
from lightkube.config.kubeconfig import KubeConfig
from lightkube.core.exceptions import ApiError, ConfigError
from lightkube.resources.apps_v1 import StatefulSet
from lightkube.resources.core_v1 import ConfigMap, Event, Namespace, Pod, Secret
from lightkube.types import PatchType

from platform_core import object_store
from platform_core.crypto import SecretBox
from platform_core.db import task_session
from platform_core.errors import PermanentError, TemporaryError, UpstreamError
from platform_core.object_store import ObjectStore
from platform_core.private_files import private_temp_dir, work_root, write_private
from platform_core.settings import Settings
from provisioner import repository
from provisioner.backends import kubernetes_manifests as manifests
from provisioner.backends.base import (
    HOMESERVER_DUE_WORK_SQL,
    Backend,
    HomeserverTarget,
    database_section,
    store_archive,
)
from provisioner.backends.local import postgres_counts, postgres_usage_counts
from provisioner.media_copy import MediaAccess, copy_local_media

FIELD_MANAGER = "c3-provisioner"
POD = f"{manifests.NAME}-0"  # the StatefulSet's only pod
_API_TIMEOUT_S = 15.0
_POLL_S = 0.2

R = TypeVar("R")


def load_kubeconfig() -> KubeConfig:
    """The in-cluster service account, else KUBECONFIG (else ~/.kube/config); a clear
    PermanentError when none is usable."""
    try:
        return KubeConfig.from_env()
    except ConfigError as exc:
        raise PermanentError(
            "C3_BACKEND=kubernetes needs access to a cluster: no in-cluster service account "
            "(/var/run/secrets/kubernetes.io/serviceaccount) and no usable kubeconfig "
            f"(KUBECONFIG={os.environ.get('KUBECONFIG', '~/.kube/config')}): {exc}"
        ) from None
    except (OSError, ValueError, KeyError, yaml.YAMLError) as exc:
        raise PermanentError(
            f"C3_BACKEND=kubernetes: the kubeconfig cannot be read ({type(exc).__name__}: {exc})"
        ) from None


@dataclass
class Observed:
    """A tenant's homeserver as the API server reports it."""

    exists: bool = False  # the StatefulSet
    desired_replicas: int = 0
    ready_replicas: int = 0
    pod_phase: str | None = None  # None: no pod
    restarts: int = 0
    waiting_reason: str | None = None  # e.g. CrashLoopBackOff
    last_exit: str | None = None
    warnings: list[str] = field(default_factory=list)  # Warning events of the pod, newest last

    @property
    def crash_looping(self) -> bool:
        return self.waiting_reason == "CrashLoopBackOff" or self.pod_phase == "Failed"

    @property
    def running(self) -> bool:
        """The StatefulSet wants its pod and the pod is not crash-looping; or, scaled to 0,
        the pod has not terminated yet."""
        if self.crash_looping:
            return False
        return self.desired_replicas > 0 or self.pod_phase is not None

    def describe(self) -> str:
        if not self.exists:
            return "no StatefulSet"
        parts = [
            f"replicas {self.ready_replicas}/{self.desired_replicas} ready",
            f"pod {POD} {self.pod_phase or 'absent'}",
        ]
        if self.restarts:
            parts.append(f"{self.restarts} restarts")
        if self.waiting_reason:
            parts.append(self.waiting_reason)
        if self.last_exit:
            parts.append(f"last exit: {self.last_exit}")
        if self.warnings:
            parts.append("events: " + "; ".join(self.warnings[-3:]))
        return ", ".join(parts)


def _observed(stateful_set: StatefulSet, pod: Pod | None) -> Observed:
    """What a tenant's StatefulSet and its pod (None: none) say, events aside."""
    seen = Observed(exists=True)
    seen.desired_replicas = (stateful_set.spec.replicas if stateful_set.spec else 0) or 0
    seen.ready_replicas = (stateful_set.status.readyReplicas if stateful_set.status else 0) or 0
    if pod is not None and pod.status is not None:
        seen.pod_phase = pod.status.phase
        for status in pod.status.containerStatuses or []:
            seen.restarts += status.restartCount or 0
            if status.state and status.state.waiting:
                seen.waiting_reason = status.state.waiting.reason
            terminated = status.lastState.terminated if status.lastState else None
            if terminated is not None:
                seen.last_exit = (
                    f"code {terminated.exitCode} {terminated.reason or ''}"
                    f" {terminated.message or ''}".strip()
                )
    return seen


class KubernetesBackend(Backend):
    name = "kubernetes"

    def __init__(
        self,
        settings: Settings,
        *,
        client: Client | None = None,
        stop_timeout_s: float = 120.0,
        namespace_gone_timeout_s: float = 300.0,
        media_access: Callable[[str], MediaAccess | None] | None = None,
    ) -> None:
        if not settings.tenant_database_url:
            raise PermanentError(
                "C3_BACKEND=kubernetes needs C3_TENANT_DATABASE_URL: homeservers in a cluster "
                "keep their data in their own PostgreSQL database (there is no SQLite fallback)"
            )
        self.settings = settings
        self.client = client or Client(
            config=load_kubeconfig(),
            field_manager=FIELD_MANAGER,
            timeout=httpx2.Timeout(_API_TIMEOUT_S),
        )
        self.work_root = work_root(settings.data_path)
        self.stop_timeout_s = stop_timeout_s
        self.namespace_gone_timeout_s = namespace_gone_timeout_s
        # How the worker reaches a tenant's Synapse to copy its media (tests give their own).
        self.media_access = media_access or self._media_access_from_database

    # Talking to the API server -----------------------------------------------------------

    def _call(self, what: str, call: Any, *args: Any, **kwargs: Any) -> Any:
        """One API call. Not found (404) is raised as it is, for the caller to decide; an
        unreachable or failing API server, a conflict or throttling is a temporary error (the
        step retries); any other refusal a permanent one."""
        try:
            return call(*args, **kwargs)
        except ApiError as exc:
            code = exc.status.code or 0
            if code == 404:
                raise
            detail = f"Kubernetes API refused to {what}: {code} {exc.status.reason}: {exc}"
            if code in (409, 429) or code >= 500:
                raise TemporaryError(detail) from None
            raise PermanentError(detail) from None
        except httpx2.HTTPError as exc:
            raise TemporaryError(
                f"Kubernetes API unreachable ({what}): {type(exc).__name__}: {exc}"
            ) from None

    def _get(self, kind: type[R], name: str, namespace: str | None = None) -> R | None:
        try:
            found: R = self._call(
                f"read {kind.__name__} {name}", self.client.get, kind, name, namespace=namespace
            )
        except ApiError:
            return None  # 404
        return found

    def apply(self, obj: manifests.TenantObject) -> Any:
        """Server-side apply: our field manager, forcing our own fields back."""
        meta = obj.metadata
        assert meta is not None
        return self._call(
            f"apply {obj.kind} {meta.name}",
            self.client.apply,
            obj,
            field_manager=FIELD_MANAGER,
            force=True,
        )

    # Backend -----------------------------------------------------------------------------

    def allocate_port(self, taken: set[int]) -> None:
        return None  # every homeserver listens on 8008 behind its own Service

    def port_is_free(self, port: int) -> bool:
        return True

    def upstream_url(self, target: HomeserverTarget) -> str:
        host = manifests.service_host(target.tenant_id, self.settings.kubernetes_cluster_domain)
        return f"http://{host}:{manifests.PORT}"

    def objects_for(self, target: HomeserverTarget) -> manifests.TenantManifests:
        """The tenant's objects as this backend applies them (one replica)."""
        return manifests.build(self.settings, target)

    def render(self, target: HomeserverTarget) -> bool:
        """Apply everything but the StatefulSet (``start`` applies it). True when the
        StatefulSet's pod runs with another config than this one."""
        objects = self.objects_for(target)
        for obj in objects.in_order()[:-1]:
            self.apply(obj)
        running = self._get(StatefulSet, manifests.NAME, manifests.namespace_name(target.tenant_id))
        if running is None or running.spec is None:
            return False
        annotations = (
            running.spec.template.metadata.annotations if running.spec.template.metadata else None
        )
        wanted = objects.stateful_set.spec.template.metadata.annotations  # type: ignore[union-attr]
        return (annotations or {}).get(manifests.CONFIG_HASH_ANNOTATION) != (wanted or {}).get(
            manifests.CONFIG_HASH_ANNOTATION
        )

    def start(self, target: HomeserverTarget) -> None:
        self.apply(self.objects_for(target).stateful_set)

    def observe(self, tenant_id: str) -> Observed:
        namespace = manifests.namespace_name(tenant_id)
        stateful_set = self._get(StatefulSet, manifests.NAME, namespace)
        if stateful_set is None:
            return Observed()
        seen = _observed(stateful_set, self._get(Pod, POD, namespace))
        if seen.restarts or seen.crash_looping:
            seen.warnings = self._warnings(namespace)
        return seen

    def _warnings(self, namespace: str) -> list[str]:
        events = self._call(
            "list events", lambda: list(self.client.list(Event, namespace=namespace))
        )
        warnings = [
            e
            for e in events
            if e.type == "Warning" and e.involvedObject.name in (POD, manifests.NAME)
        ]
        warnings.sort(
            key=lambda e: (
                e.lastTimestamp
                or e.eventTime
                or e.metadata.creationTimestamp
                or datetime.min.replace(tzinfo=UTC)
            )
        )
        return [
            f"{e.reason}: {e.message}" + (f" (x{e.count})" if e.count and e.count > 1 else "")
            for e in warnings
        ]

    def is_running(self, tenant_id: str) -> bool:
        return self.observe(tenant_id).running

    def running_among(self, tenant_ids: Collection[str]) -> set[str]:
        """``is_running`` for many tenants in two list calls over every tenant namespace (the
        StatefulSets and the pods C3 manages), where asking each would take two reads per
        tenant: the reconcile pass asks after every suspended and deleted tenant each time."""
        namespaces = {manifests.namespace_name(tenant_id): tenant_id for tenant_id in tenant_ids}
        if not namespaces:
            return set()
        ours: dict[str, Any] = dict(manifests.MANAGED_BY)
        stateful_sets = {
            found.metadata.namespace: found
            for found in self._call(
                "list StatefulSets",
                lambda: list(self.client.list(StatefulSet, namespace="*", labels=ours)),
            )
            if found.metadata is not None and found.metadata.name == manifests.NAME
        }
        pods = {
            found.metadata.namespace: found
            for found in self._call(
                "list pods", lambda: list(self.client.list(Pod, namespace="*", labels=ours))
            )
            if found.metadata is not None and found.metadata.name == POD
        }
        return {
            tenant_id
            for namespace, tenant_id in namespaces.items()
            if namespace in stateful_sets
            and _observed(stateful_sets[namespace], pods.get(namespace)).running
        }

    def stop(self, tenant_id: str) -> None:
        """Scale to 0 and wait until the pod is gone (its volume stays)."""
        namespace = manifests.namespace_name(tenant_id)
        if self._get(StatefulSet, manifests.NAME, namespace) is None:
            return
        try:
            self._scale(namespace, 0)
        except ApiError:
            return  # deleted meanwhile
        deadline = time.monotonic() + self.stop_timeout_s
        while self._get(Pod, POD, namespace) is not None:
            if time.monotonic() > deadline:
                raise TemporaryError(
                    f"homeserver pod {namespace}/{POD} still terminating after "
                    f"{self.stop_timeout_s:.0f}s"
                )
            time.sleep(_POLL_S)

    def sleep(self, tenant_id: str) -> None:
        """Scale the StatefulSet to 0 and wait for the pod to go (as ``stop``): its memory is
        freed, its volume, config and Service stay, so ``wake`` only scales back to 1."""
        self.stop(tenant_id)

    def wake(self, target: HomeserverTarget) -> None:
        """Scale the StatefulSet back to 1 (re-applied: one replica is what it asks for)."""
        self.start(target)

    def due_work(self, tenant_id: str) -> dict[str, int] | None:
        config, secret_files = self._deployed_files(tenant_id)
        section = database_section(config.get("homeserver.yaml", ""))
        password = secret_files.get(manifests.DATABASE_PASSWORD_KEY)
        if section.get("name") != "psycopg2" or password is None:
            return None
        return postgres_counts(
            {**section["args"], "password": password.decode()}, HOMESERVER_DUE_WORK_SQL
        )

    def _scale(self, namespace: str, replicas: int) -> None:
        self._call(
            f"scale the homeserver to {replicas}",
            self.client.patch,
            StatefulSet.Scale,
            manifests.NAME,
            {"spec": {"replicas": replicas}},
            namespace=namespace,
            patch_type=PatchType.MERGE,
            field_manager=FIELD_MANAGER,
        )

    @staticmethod
    def _newest_archive(tenant_id: str, store: ObjectStore) -> str | None:
        existing = [
            item.key
            for item in store.list(object_store.archive_prefix(tenant_id))
            if item.key.endswith(".tar.gz")
        ]
        return existing[-1] if existing else None

    def archive_running(self, tenant_id: str, store: ObjectStore) -> str | None:
        """Before a deletion stops the homeserver: archive its config, secrets and media while
        Synapse can still serve the media (``archive`` then finds this archive). Idempotent."""
        archived = self._newest_archive(tenant_id, store)
        if archived is not None:
            return archived
        current = self._get(Namespace, manifests.namespace_name(tenant_id))
        if current is None or (current.metadata and current.metadata.deletionTimestamp):
            return None
        return self._archive_objects(tenant_id, store, with_media=True)

    def archive(self, tenant_id: str, store: ObjectStore) -> str | None:
        """Archive the config, secrets and media into ``store`` unless ``archive_running``
        did (the database is dumped beside by ``tenant_databases.retire``), then delete the
        namespace and wait until it is gone."""
        namespace = manifests.namespace_name(tenant_id)
        archived = self._newest_archive(tenant_id, store)
        current = self._get(Namespace, namespace)
        if current is None:
            return archived
        if current.metadata is None or current.metadata.deletionTimestamp is None:
            if archived is None:  # purged, or archive_running was not called
                archived = self._archive_objects(tenant_id, store, with_media=False)
            try:
                self._call(
                    f"delete namespace {namespace}", self.client.delete, Namespace, namespace
                )
            except ApiError:
                pass  # gone already
        self._wait_namespace_gone(namespace)
        return archived

    def _archive_objects(self, tenant_id: str, store: ObjectStore, *, with_media: bool) -> str:
        """The config, the secrets and (``<tenant>/media_store/…``) the media. A homeserver
        that cannot serve its media (it crash-loops, or never finished provisioning) must
        not block its deletion: the archive then says so in ``MEDIA_NOT_COPIED``."""
        config, secret_files = self._deployed_files(tenant_id)
        files = {
            **{f"config/{name}": text.encode() for name, text in config.items()},
            **{f"secrets/{name}": data for name, data in secret_files.items()},
        }
        with private_temp_dir(self.work_root, prefix="archive-media-") as work:
            media_store = work / "media_store"
            missing = (
                self._copy_media_if_served(tenant_id, media_store)
                if with_media
                else "the homeserver was stopped before it was archived"
            )
            if missing:
                files["MEDIA_NOT_COPIED"] = f"{missing}\n".encode()

            def fill(tar: tarfile.TarFile) -> None:
                for name, data in sorted(files.items()):
                    info = tarfile.TarInfo(f"{tenant_id}/{name}")
                    info.size, info.mode, info.mtime = len(data), 0o600, int(time.time())
                    tar.addfile(info, io.BytesIO(data))
                if media_store.is_dir():
                    tar.add(media_store, f"{tenant_id}/media_store", filter=_private_member)

            return store_archive(store, self.work_root, tenant_id, fill)

    def _copy_media_if_served(self, tenant_id: str, media_store: Path) -> str | None:
        """None when copied; else why not (a transient download failure still raises)."""
        try:
            self.copy_media(tenant_id, media_store)
        except (PermanentError, HomeserverNotServing) as exc:
            return str(exc)
        return None

    def _wait_namespace_gone(self, namespace: str) -> None:
        deadline = time.monotonic() + self.namespace_gone_timeout_s
        while self._get(Namespace, namespace) is not None:
            if time.monotonic() > deadline:
                raise TemporaryError(
                    f"namespace {namespace} still terminating after "
                    f"{self.namespace_gone_timeout_s:.0f}s; deletion goes on"
                )
            time.sleep(_POLL_S)

    def stop_all(self) -> list[str]:
        return []  # homeservers in the cluster outlive the platform process that started them

    def usage_counts(self, tenant_id: str) -> dict[str, int] | None:
        config, secret_files = self._deployed_files(tenant_id)
        section = database_section(config.get("homeserver.yaml", ""))
        password = secret_files.get(manifests.DATABASE_PASSWORD_KEY)
        if section.get("name") != "psycopg2" or password is None:
            return None
        return postgres_usage_counts({**section["args"], "password": password.decode()})

    def _deployed_files(self, tenant_id: str) -> tuple[dict[str, str], dict[str, bytes]]:
        """The ConfigMap's and the Secret's files as the cluster holds them ({} if absent)."""
        namespace = manifests.namespace_name(tenant_id)
        config = self._get(ConfigMap, manifests.CONFIG_MAP, namespace)
        secret = self._get(Secret, manifests.SECRET, namespace)
        return (
            dict((config.data or {}) if config else {}),
            {k: base64.b64decode(v) for k, v in ((secret.data or {}) if secret else {}).items()},
        )

    def data_dir(self, tenant_id: str) -> None:
        return None  # on the pod's volume: not files this worker can read

    def export_files(self, tenant_id: str, into: Path) -> Path | None:
        """``homeserver.yaml`` (the ConfigMap's: it holds no secret, only paths to them),
        ``signing.key`` and ``media_store/`` with every local upload, downloaded from the
        homeserver (a suspended one is scaled up for it, then down again)."""
        config, secret_files = self._deployed_files(tenant_id)
        if "homeserver.yaml" not in config or "signing.key" not in secret_files:
            return None
        into.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_private(into / "homeserver.yaml", config["homeserver.yaml"])
        write_private(into / "signing.key", secret_files["signing.key"])
        try:
            self.copy_media(tenant_id, into / "media_store")
        except HomeserverNotServing as exc:
            raise TemporaryError(str(exc)) from None
        return into

    # Media, through the homeserver's own APIs ----------------------------------------------

    def copy_media(self, tenant_id: str, media_store: Path) -> None:
        """Every local upload of the tenant's homeserver into ``media_store`` (Synapse's
        layout). PermanentError: the homeserver has no platform admin to read it with."""
        access = self.media_access(tenant_id)
        if access is None:
            raise PermanentError("the homeserver has no platform admin token to copy media with")
        with self._serving(tenant_id):
            try:
                copy_local_media(access, media_store)
            except UpstreamError as exc:
                raise TemporaryError(f"copying media failed: {exc}") from None

    @contextmanager
    def _serving(self, tenant_id: str) -> Iterator[None]:
        """The homeserver serving for the block: a suspended one (scaled to 0) is scaled to 1
        and back to 0 afterwards (its route stays withdrawn: no client reaches it meanwhile)."""
        namespace = manifests.namespace_name(tenant_id)
        seen = self.observe(tenant_id)
        if not seen.exists:
            raise HomeserverNotServing(f"the homeserver of {namespace} is not deployed")
        scaled_up = seen.desired_replicas == 0
        if scaled_up:
            self._scale(namespace, 1)
        try:
            self._wait_ready(tenant_id)
            yield
        finally:
            if scaled_up:
                self.stop(tenant_id)

    def _wait_ready(self, tenant_id: str) -> None:
        deadline = time.monotonic() + self.settings.homeserver_start_timeout_s
        while (seen := self.observe(tenant_id)).ready_replicas < 1:
            if seen.crash_looping or time.monotonic() > deadline:
                raise HomeserverNotServing(f"the homeserver is not serving: {seen.describe()}")
            time.sleep(_POLL_S)

    def _media_access_from_database(self, tenant_id: str) -> MediaAccess | None:
        """The platform admin's token (decrypted) and where the worker reaches the homeserver."""
        with task_session() as session:
            tenant = repository.get_tenant(session, uuid.UUID(tenant_id))
            hs = repository.get_homeserver(session, uuid.UUID(tenant_id))
            if tenant is None or hs is None or hs.admin_token_encrypted is None:
                return None
            token = SecretBox(self.settings.require_secret_key()).decrypt(hs.admin_token_encrypted)
            base_url = (
                hs.upstream_url
                or f"http://{manifests.service_host(tenant_id, self.settings.kubernetes_cluster_domain)}:{manifests.PORT}"
            )
            return MediaAccess(
                base_url=base_url, access_token=token, server_name=tenant.server_name
            )

    def log_tail(self, tenant_id: str) -> str:
        seen = self.observe(tenant_id)
        try:
            lines = list(
                self.client.log(
                    POD,
                    namespace=manifests.namespace_name(tenant_id),
                    container=manifests.NAME,
                    tail_lines=3,
                )
            )
        except (ApiError, httpx2.HTTPError):
            lines = []  # no log (yet), or the API server keeps none
        # The last lines that say something (Synapse frames its start-up errors in ****).
        said = [line.strip() for line in lines if line.strip().strip("*")][-3:]
        log = " | ".join(said)[-240:]
        return seen.describe()[:260] + (f"; log: {log}" if log else "")

    def log_lines(self, tenant_id: str, lines: int) -> list[str]:
        """The Synapse container's last ``lines`` log lines (the pod's log: Synapse logs to
        standard error there); [] when the pod has none or is gone."""
        try:
            return [
                line.rstrip("\n")
                for line in self.client.log(
                    POD,
                    namespace=manifests.namespace_name(tenant_id),
                    container=manifests.NAME,
                    tail_lines=lines,
                )
            ]
        except (ApiError, httpx2.HTTPError):
            return []

    def drift(self, target: HomeserverTarget) -> list[str]:
        """What differs in the cluster from what was applied (before re-applying repairs it):
        a missing object, edited config or secrets, a StatefulSet scaled by someone else."""
        namespace = manifests.namespace_name(target.tenant_id)
        found: list[str] = []
        for wanted in self.objects_for(target).in_order():
            assert wanted.metadata is not None and wanted.metadata.name is not None
            name = wanted.metadata.name
            current: Any = self._get(
                type(wanted), name, None if isinstance(wanted, Namespace) else namespace
            )
            if current is None:
                found.append(f"{wanted.kind} {name} missing")
            elif isinstance(wanted, ConfigMap | Secret) and current.data != wanted.data:
                found.append(f"{wanted.kind} {name} edited")
            elif isinstance(wanted, StatefulSet) and current.spec.replicas != 1:
                found.append(f"{wanted.kind} {name} scaled to {current.spec.replicas}")
        return found


class HomeserverNotServing(TemporaryError):
    """The homeserver is not deployed, or did not become ready (crash loop, timeout)."""


def _private_member(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid, info.gid, info.uname, info.gname = 0, 0, "", ""
    info.mode = 0o700 if info.isdir() else 0o600
    return info
