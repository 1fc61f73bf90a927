"""The in-memory API server's object store: resources, resourceVersions, generations, managed
fields (server-side apply with coarse field ownership), namespaces that take time to terminate,
and the Status errors a real API server answers with."""

from __future__ import annotations

import base64
import copy
import functools
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import jsonschema
import kubernetes_validate.utils as schema_check
from referencing import Registry, Resource

Obj = dict[str, Any]
Path = tuple[str, ...]
Manager = tuple[str, str]  # (field manager, operation: "Apply" | "Update")


@dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    kind: str
    plural: str
    namespaced: bool = True
    status: bool = False  # has a /status subresource (status is not written by the main verb)
    scale: bool = False  # has a /scale subresource
    generation: bool = True  # metadata.generation follows spec changes

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """How the real server names the resource in messages: ``statefulsets.apps``."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


RESOURCE_TYPES = [
    ResourceType(
        "", "v1", "Namespace", "namespaces", namespaced=False, status=True, generation=False
    ),
    ResourceType("", "v1", "Secret", "secrets", generation=False),
    ResourceType("", "v1", "ConfigMap", "configmaps", generation=False),
    ResourceType("", "v1", "Service", "services", status=True, generation=False),
    ResourceType("", "v1", "Pod", "pods", status=True, generation=False),
    ResourceType("", "v1", "Event", "events", generation=False),
    ResourceType("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims", status=True),
    ResourceType("", "v1", "ResourceQuota", "resourcequotas", status=True, generation=False),
    ResourceType("", "v1", "LimitRange", "limitranges", generation=False),
    ResourceType("", "v1", "ServiceAccount", "serviceaccounts", generation=False),
    ResourceType("apps", "v1", "StatefulSet", "statefulsets", status=True, scale=True),
    ResourceType("apps", "v1", "Deployment", "deployments", status=True, scale=True),
    ResourceType("networking.k8s.io", "v1", "NetworkPolicy", "networkpolicies"),
    ResourceType("policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets", status=True),
]
TYPES_BY_PATH = {(t.group, t.version, t.plural): t for t in RESOURCE_TYPES}
TYPES_BY_KIND = {t.kind: t for t in RESOURCE_TYPES}

# DNS-1123 subdomain (most names) and label (namespaces, services).
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_SERVER_METADATA = ("uid", "resourceVersion", "creationTimestamp", "generation", "managedFields")


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ApiStatus(Exception):
    """An error the API server answers with a ``Status`` object (code, reason, message)."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def body(self) -> Obj:
        status: Obj = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            status["details"] = self.details
        return status


def not_found(rtype: ResourceType, name: str) -> ApiStatus:
    return ApiStatus(
        404,
        "NotFound",
        f'{rtype.qualified} "{name}" not found',
        {"name": name, "group": rtype.group, "kind": rtype.plural},
    )


def invalid(rtype: ResourceType, name: str, causes: list[tuple[str, str, str]]) -> ApiStatus:
    """422 Invalid; ``causes`` are (reason, field, message)."""
    text = ", ".join(f"{field_}: {message}" for _, field_, message in causes)
    return ApiStatus(
        422,
        "Invalid",
        f'{rtype.kind}{"." + rtype.group if rtype.group else ""} "{name}" is invalid: {text}',
        {
            "name": name,
            "group": rtype.group,
            "kind": rtype.kind,
            "causes": [{"reason": r, "message": m, "field": f} for r, f, m in causes],
        },
    )


def bad_request(message: str) -> ApiStatus:
    return ApiStatus(400, "BadRequest", message)


# Field paths (coarse managed fields) -------------------------------------------------------


def field_paths(obj: Obj) -> set[Path]:
    """The fields a manager owns when it sets ``obj``: each label and annotation, each key
    of ``data``-like maps and of ``spec``, and any other top-level field as a whole."""
    paths: set[Path] = set()
    metadata = obj.get("metadata") or {}
    for section in ("labels", "annotations"):
        for key in metadata.get(section) or {}:
            paths.add(("metadata", section, key))
    for section in ("ownerReferences", "finalizers"):
        if metadata.get(section) is not None:
            paths.add(("metadata", section))
    for key, value in obj.items():
        if key in ("apiVersion", "kind", "metadata", "status"):
            continue
        if isinstance(value, dict):  # an empty map owns nothing (others' keys stay)
            paths.update((key, sub) for sub in value)
        elif value is not None:
            paths.add((key,))
    return paths


_MISSING = object()


def get_path(obj: Obj, path: Path) -> Any:
    node: Any = obj
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return _MISSING
        node = node[key]
    return node


def set_path(obj: Obj, path: Path, value: Any) -> None:
    node = obj
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = copy.deepcopy(value)


def delete_path(obj: Obj, path: Path) -> None:
    node: Any = obj
    for key in path[:-1]:
        node = node.get(key) if isinstance(node, dict) else None
        if node is None:
            return
    if isinstance(node, dict):
        node.pop(path[-1], None)


def dotted(path: Path) -> str:
    return "." + ".".join(path)


def fields_v1(paths: Iterable[Path]) -> Obj:
    tree: Obj = {}
    for path in sorted(paths):
        node = tree
        for key in path:
            node = node.setdefault(f"f:{key}", {})
    return tree


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (also used for strategic merge: lists are replaced)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# Selectors ---------------------------------------------------------------------------------

_TERM = re.compile(r"\s*([^,(]+(?:\([^)]*\))?)\s*(?:,|$)")


def _split_terms(selector: str) -> list[str]:
    return [m.group(1).strip() for m in _TERM.finditer(selector) if m.group(1).strip()]


def _term_matches(term: str, values: dict[str, str]) -> bool:
    m = re.fullmatch(r"([^\s!=]+)\s+(in|notin)\s+\(([^)]*)\)", term)
    if m:
        key, op, raw = m.groups()
        options = {v.strip() for v in raw.split(",")}
        return (values.get(key) in options) if op == "in" else (values.get(key) not in options)
    m = re.fullmatch(r"([^\s!=]+)\s*(==|=|!=)\s*(\S*)", term)
    if m:
        key, op, value = m.groups()
        return (values.get(key) == value) if op != "!=" else (values.get(key) != value)
    if term.startswith("!"):
        return term[1:].strip() not in values
    return term in values


def selector_matches(selector: str | None, values: dict[str, str]) -> bool:
    if not selector:
        return True
    return all(_term_matches(term, values) for term in _split_terms(selector))


def field_values(obj: Obj) -> dict[str, str]:
    """The fields a fieldSelector can name (flattened scalars, like ``involvedObject.name``)."""
    flat: dict[str, str] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}.{key}" if prefix else key)
        elif not isinstance(node, list):
            flat[prefix] = str(node)

    for section in ("metadata", "involvedObject", "status", "spec", "type", "reason"):
        if section in obj:
            walk(obj[section], section)
    return flat


# The store ---------------------------------------------------------------------------------


@dataclass
class Stored:
    obj: Obj
    owners: dict[Manager, set[Path]] = field(default_factory=dict)
    subresources: dict[Manager, str] = field(default_factory=dict)


@dataclass
class WatchEvent:
    revision: int
    type: str
    rtype: ResourceType
    obj: Obj


Key = tuple[str, str, str, str]  # (group, plural, namespace, name)


class Store:
    """Everything the API server keeps, behind one lock. Methods raise ``ApiStatus``."""

    def __init__(
        self, *, kubernetes_version: str, terminate_seconds: float, validate: bool
    ) -> None:
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.kubernetes_version = kubernetes_version
        self.terminate_seconds = terminate_seconds
        self.validate = validate
        self.revision = 0
        self.objects: dict[Key, Stored] = {}
        self.history: list[WatchEvent] = []
        self.terminating: dict[str, float] = {}  # namespace -> monotonic time it is gone
        self.on_namespace_gone: list[Callable[[str], None]] = []
        # Like namespace finalizers: a terminating namespace goes only when each says it may
        # (the kubelet stand-in, once its pods there are stopped).
        self.namespace_blockers: list[Callable[[str], bool]] = []
        # Each namespace's Services get one loopback address (the kubelet stand-in binds the
        # namespace's pods to it), so a Service's clusterIP is where its pods really answer.
        self.cluster_ip: Callable[[str], str] | None = None
        for name in ("default", "kube-system", "kube-public"):
            self.apply(
                TYPES_BY_KIND["Namespace"],
                None,
                name,
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
                "kube-apiserver",
                force=True,
            )

    # -- reading -----------------------------------------------------------------------------

    def get(self, rtype: ResourceType, namespace: str | None, name: str) -> Obj:
        with self.lock:
            self._settle()
            stored = self.objects.get(self._key(rtype, namespace, name))
            if stored is None:
                raise not_found(rtype, name)
            return copy.deepcopy(stored.obj)

    def find(self, rtype: ResourceType, namespace: str | None, name: str) -> Obj | None:
        try:
            return self.get(rtype, namespace, name)
        except ApiStatus:
            return None

    def list_objects(
        self,
        rtype: ResourceType,
        namespace: str | None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> tuple[int, list[Obj]]:
        with self.lock:
            self._settle()
            items = [
                copy.deepcopy(stored.obj)
                for key, stored in sorted(self.objects.items())
                if key[:2] == (rtype.group, rtype.plural)
                and (namespace is None or key[2] == namespace)
                and self._selected(stored.obj, label_selector, field_selector)
            ]
            return self.revision, items

    def _selected(self, obj: Obj, label_selector: str | None, field_selector: str | None) -> bool:
        labels = obj["metadata"].get("labels") or {}
        return selector_matches(label_selector, labels) and selector_matches(
            field_selector, field_values(obj)
        )

    def events_since(self, revision: int) -> list[WatchEvent]:
        with self.lock:
            if self.history and revision < self.history[0].revision - 1:
                raise ApiStatus(410, "Expired", f"too old resource version: {revision}")
            return [e for e in self.history if e.revision > revision]

    # -- writing -----------------------------------------------------------------------------

    def create(self, rtype: ResourceType, namespace: str | None, body: Obj, manager: str) -> Obj:
        with self.lock:
            self._settle()
            body = self._checked_body(rtype, namespace, body, name=None)
            name = body["metadata"]["name"]
            if self._key(rtype, namespace, name) in self.objects:
                raise ApiStatus(
                    409,
                    "AlreadyExists",
                    f'{rtype.qualified} "{name}" already exists',
                    {"name": name, "group": rtype.group, "kind": rtype.plural},
                )
            return self._insert(rtype, namespace, body, (manager, "Update"))

    def apply(
        self,
        rtype: ResourceType,
        namespace: str | None,
        name: str,
        body: Obj,
        manager: str,
        *,
        force: bool,
    ) -> Obj:
        """Server-side apply: create, or take the applied fields for ``manager``."""
        with self.lock:
            self._settle()
            body = self._checked_body(rtype, namespace, body, name=name)
            body.pop("status", None)
            key = self._key(rtype, namespace, name)
            stored = self.objects.get(key)
            if stored is None:
                return self._insert(rtype, namespace, body, (manager, "Apply"))
            applied = field_paths(body)
            mine: Manager = (manager, "Apply")
            owners = {m: set(p) for m, p in stored.owners.items()}
            self._take_ownership(rtype, stored, owners, body, applied, mine, force=force)
            new = copy.deepcopy(stored.obj)
            for path in owners.get(mine, set()) - applied:
                if not any(path in paths for m, paths in owners.items() if m != mine):
                    delete_path(new, path)
            for path in applied:
                set_path(new, path, get_path(body, path))
            owners[mine] = applied
            return self._commit(rtype, key, stored, new, owners)

    def replace(
        self, rtype: ResourceType, namespace: str | None, name: str, body: Obj, manager: str
    ) -> Obj:
        with self.lock:
            self._settle()
            key = self._key(rtype, namespace, name)
            stored = self._existing(rtype, key, name)
            if isinstance(body, dict):
                self._check_version(rtype, stored, body, name)
            body = self._checked_body(rtype, namespace, body, name=name)
            new = copy.deepcopy(body)
            for meta in _SERVER_METADATA + ("deletionTimestamp",):
                if meta in stored.obj["metadata"]:
                    new["metadata"][meta] = stored.obj["metadata"][meta]
            if rtype.status:
                new.pop("status", None)
                if "status" in stored.obj:
                    new["status"] = stored.obj["status"]
            return self._update(rtype, key, stored, new, manager)

    def patch(
        self,
        rtype: ResourceType,
        namespace: str | None,
        name: str,
        patch: Obj,
        manager: str,
        *,
        subresource: str = "",
    ) -> Obj:
        with self.lock:
            self._settle()
            key = self._key(rtype, namespace, name)
            stored = self._existing(rtype, key, name)
            if subresource == "status":
                patch = {"status": patch.get("status")} if "status" in patch else {}
            elif rtype.status:
                patch = {k: v for k, v in patch.items() if k != "status"}
            new = merge_patch(stored.obj, patch)
            if patch.get("metadata", {}).get("resourceVersion") is not None:
                self._check_version(rtype, stored, patch, name)
            for meta in _SERVER_METADATA:
                if meta in stored.obj["metadata"]:
                    new["metadata"][meta] = stored.obj["metadata"][meta]
            self._validate(rtype, name, new)
            return self._update(rtype, key, stored, new, manager, subresource=subresource)

    def replace_status(
        self, rtype: ResourceType, namespace: str | None, name: str, body: Obj, manager: str
    ) -> Obj:
        with self.lock:
            self._settle()
            key = self._key(rtype, namespace, name)
            stored = self._existing(rtype, key, name)
            self._check_version(rtype, stored, body, name)
            new = copy.deepcopy(stored.obj)
            new["status"] = copy.deepcopy(body.get("status") or {})
            return self._update(rtype, key, stored, new, manager, subresource="status")

    def set_status(
        self, rtype: ResourceType, namespace: str | None, name: str, status: Obj
    ) -> None:
        """What a controller (the kubelet stand-in) writes; a no-op when nothing changed."""
        with self.lock:
            stored = self.objects.get(self._key(rtype, namespace, name))
            if stored is None or stored.obj.get("status") == status:
                return
            new = copy.deepcopy(stored.obj)
            new["status"] = copy.deepcopy(status)
            self._commit(rtype, self._key(rtype, namespace, name), stored, new, stored.owners)

    def delete(self, rtype: ResourceType, namespace: str | None, name: str) -> Obj:
        with self.lock:
            self._settle()
            key = self._key(rtype, namespace, name)
            stored = self._existing(rtype, key, name)
            if rtype.kind == "Namespace":
                return self._start_terminating(key, stored)
            self._remove(key)
            if rtype.kind == "StatefulSet":
                self._remove_owned(namespace or "", stored.obj["metadata"]["uid"])
            return {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": {
                    "name": name,
                    "group": rtype.group,
                    "kind": rtype.plural,
                    "uid": stored.obj["metadata"]["uid"],
                },
            }

    # -- namespaces --------------------------------------------------------------------------

    def check_version(
        self, rtype: ResourceType, namespace: str | None, name: str, body: Obj
    ) -> None:
        """409 when ``body`` carries a resourceVersion that is no longer the object's."""
        with self.lock:
            key = self._key(rtype, namespace, name)
            self._check_version(rtype, self._existing(rtype, key, name), body, name)

    def namespace_phase(self, namespace: str) -> str | None:
        with self.lock:
            self._settle()
            stored = self.objects.get(("", "namespaces", "", namespace))
            return None if stored is None else stored.obj.get("status", {}).get("phase")

    def _start_terminating(self, key: Key, stored: Stored) -> Obj:
        name = key[3]
        if name not in self.terminating:
            self.terminating[name] = time.monotonic() + self.terminate_seconds
            new = copy.deepcopy(stored.obj)
            new["metadata"]["deletionTimestamp"] = now()
            new["status"] = {"phase": "Terminating"}
            self._commit(TYPES_BY_KIND["Namespace"], key, stored, new, stored.owners)
        return copy.deepcopy(self.objects[key].obj)

    def _settle(self) -> None:
        """Finish namespace deletions whose time has come (content first, then the namespace)."""
        due = [
            ns
            for ns, at in self.terminating.items()
            if at <= time.monotonic() and not any(blocks(ns) for blocks in self.namespace_blockers)
        ]
        for namespace in due:
            for callback in self.on_namespace_gone:
                callback(namespace)
            for key in [k for k in self.objects if k[2] == namespace]:
                self._remove(key)
            self._remove(("", "namespaces", "", namespace))
            del self.terminating[namespace]

    def settle(self) -> None:
        with self.lock:
            self._settle()

    # -- internals ---------------------------------------------------------------------------

    @staticmethod
    def _key(rtype: ResourceType, namespace: str | None, name: str) -> Key:
        return (rtype.group, rtype.plural, namespace or "" if rtype.namespaced else "", name)

    def _existing(self, rtype: ResourceType, key: Key, name: str) -> Stored:
        stored = self.objects.get(key)
        if stored is None:
            raise not_found(rtype, name)
        return stored

    def _check_version(self, rtype: ResourceType, stored: Stored, body: Obj, name: str) -> None:
        wanted = (body.get("metadata") or {}).get("resourceVersion")
        if wanted and wanted != stored.obj["metadata"]["resourceVersion"]:
            raise ApiStatus(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {rtype.qualified} "{name}": the object has '
                "been modified; please apply your changes to the latest version and try again",
                {"name": name, "group": rtype.group, "kind": rtype.plural},
            )

    def _checked_body(
        self, rtype: ResourceType, namespace: str | None, body: Obj, name: str | None
    ) -> Obj:
        if not isinstance(body, dict):
            raise bad_request("the request body is not an object")
        body = copy.deepcopy(body)
        if body.get("apiVersion") != rtype.api_version or body.get("kind") != rtype.kind:
            raise bad_request(
                f"the API version in the data ({body.get('apiVersion')}) and kind "
                f"({body.get('kind')}) do not match {rtype.api_version} {rtype.kind}"
            )
        metadata = body.setdefault("metadata", {})
        if not isinstance(metadata, dict):
            raise bad_request("metadata must be an object")
        if rtype.namespaced:
            if metadata.get("namespace") not in (None, namespace):
                raise bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request"
                )
            metadata["namespace"] = namespace
        if name is not None and metadata.get("name") not in (None, name):
            raise bad_request("the name of the object does not match the name on the URL")
        if name is not None:
            metadata["name"] = name
        if not metadata.get("name") and metadata.get("generateName"):
            metadata["name"] = metadata["generateName"] + uuid.uuid4().hex[:5]
        for meta in _SERVER_METADATA:
            metadata.pop(meta, None)
        if rtype.kind == "Secret" and "stringData" in body:
            data = body.setdefault("data", {})
            for k, v in (body.pop("stringData") or {}).items():
                data[k] = base64.b64encode(str(v).encode()).decode()
        self._validate(rtype, metadata.get("name") or "", body)
        return body

    def _validate(self, rtype: ResourceType, name: str, body: Obj) -> None:
        causes = self._metadata_causes(rtype, body["metadata"])
        if causes:
            raise invalid(rtype, name, causes)
        if not self.validate:
            return
        checked = {k: v for k, v in body.items() if k != "status"}
        checked["metadata"] = {
            k: v for k, v in body["metadata"].items() if k not in _SERVER_METADATA
        }
        validator = _validator(rtype.kind, rtype.api_version, self.kubernetes_version)
        error = (
            jsonschema.exceptions.best_match(validator.iter_errors(checked)) if validator else None
        )
        if error is not None:
            where = ".".join(str(p) for p in error.path) or "<root>"
            raise invalid(rtype, name, [("FieldValueInvalid", where, error.message)])
        self._check_semantics(rtype, name, body)

    @staticmethod
    def _metadata_causes(rtype: ResourceType, metadata: Obj) -> list[tuple[str, str, str]]:
        name = metadata.get("name")
        pattern = _LABEL if rtype.kind in ("Namespace", "Service") else _SUBDOMAIN
        causes = []
        if not name:
            causes.append(
                (
                    "FieldValueRequired",
                    "metadata.name",
                    "Required value: name or generateName is required",
                )
            )
        elif not pattern.match(name) or len(name) > (63 if pattern is _LABEL else 253):
            causes.append(
                (
                    "FieldValueInvalid",
                    "metadata.name",
                    f"Invalid value: \"{name}\": a lowercase RFC 1123 name must consist of lower case alphanumeric characters or '-'",
                )
            )
        for key, value in (metadata.get("labels") or {}).items():
            if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
                causes.append(
                    (
                        "FieldValueInvalid",
                        f"metadata.labels.{key}",
                        f"Invalid value: \"{value}\": a valid label must be 63 characters or less, alphanumeric, '-', '_' or '.'",
                    )
                )
        return causes

    @staticmethod
    def _check_semantics(rtype: ResourceType, name: str, body: Obj) -> None:
        """A few of the server's own rules that a JSON schema does not express."""
        if rtype.kind not in ("StatefulSet", "Deployment"):
            return
        spec = body.get("spec") or {}
        selector = (spec.get("selector") or {}).get("matchLabels") or {}
        labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
        if not selector:
            raise invalid(rtype, name, [("FieldValueRequired", "spec.selector", "Required value")])
        if any(labels.get(k) != v for k, v in selector.items()):
            raise invalid(
                rtype,
                name,
                [
                    (
                        "FieldValueInvalid",
                        "spec.template.metadata.labels",
                        "Invalid value: `selector` does not match template `labels`",
                    )
                ],
            )

    def _check_namespace(self, rtype: ResourceType, namespace: str | None, name: str) -> None:
        if not rtype.namespaced:
            return
        ns = self.objects.get(("", "namespaces", "", namespace or ""))
        if ns is None:
            raise ApiStatus(
                404,
                "NotFound",
                f'namespaces "{namespace}" not found',
                {"name": namespace, "kind": "namespaces"},
            )
        if namespace in self.terminating:
            message = f"unable to create new content in namespace {namespace} because it is being terminated"
            raise ApiStatus(
                403,
                "Forbidden",
                f'{rtype.qualified} "{name}" is forbidden: {message}',
                {
                    "name": name,
                    "group": rtype.group,
                    "kind": rtype.plural,
                    "causes": [
                        {
                            "reason": "NamespaceTerminating",
                            "message": message,
                            "field": "metadata.namespace",
                        }
                    ],
                },
            )

    def _insert(
        self, rtype: ResourceType, namespace: str | None, body: Obj, manager: Manager
    ) -> Obj:
        name = body["metadata"]["name"]
        self._check_namespace(rtype, namespace, name)
        new = copy.deepcopy(body)
        if rtype.status:
            new.pop("status", None)
        metadata = new["metadata"]
        metadata["uid"] = str(uuid.uuid4())
        metadata["creationTimestamp"] = now()
        if rtype.generation:
            metadata["generation"] = 1
        stored = Stored(obj={}, owners={manager: field_paths(body)})
        self._commit(
            rtype, self._key(rtype, namespace, name), stored, new, stored.owners, created=True
        )
        return copy.deepcopy(self.objects[self._key(rtype, namespace, name)].obj)

    def _take_ownership(
        self,
        rtype: ResourceType,
        stored: Stored,
        owners: dict[Manager, set[Path]],
        body: Obj,
        applied: set[Path],
        mine: Manager,
        *,
        force: bool,
    ) -> None:
        """Conflicts are applied fields another manager set to a different value; ``force``
        takes them from that manager (in ``owners``), otherwise 409 lists them."""
        conflicts: list[tuple[str, Path]] = []
        for other, paths in owners.items():
            if other == mine:
                continue
            for path in sorted(paths & applied):
                if get_path(stored.obj, path) != get_path(body, path):
                    conflicts.append((other[0], path))
        if not conflicts:
            return
        if force:
            for other_name, path in conflicts:
                for other, paths in owners.items():
                    if other[0] == other_name and other != mine:
                        paths.discard(path)
            return
        name = stored.obj["metadata"]["name"]
        lines = [f'conflict with "{who}": {dotted(path)}' for who, path in conflicts]
        raise ApiStatus(
            409,
            "Conflict",
            f"Apply failed with {len(conflicts)} conflict{'s' if len(conflicts) > 1 else ''}: "
            + "; ".join(lines),
            {
                "name": name,
                "group": rtype.group,
                "kind": rtype.plural,
                "causes": [
                    {"reason": "FieldManagerConflict", "message": line, "field": dotted(path)}
                    for line, (_, path) in zip(lines, conflicts, strict=True)
                ],
            },
        )

    def _update(
        self,
        rtype: ResourceType,
        key: Key,
        stored: Stored,
        new: Obj,
        manager: str,
        *,
        subresource: str = "",
    ) -> Obj:
        """An update (PUT, patch, subresource): the fields it changed move to ``manager``."""
        before, after = field_paths(stored.obj), field_paths(new)
        changed = {p for p in before | after if get_path(stored.obj, p) != get_path(new, p)}
        if subresource == "status":
            changed = {("status",)} if stored.obj.get("status") != new.get("status") else set()
        owners = {m: paths - changed for m, paths in stored.owners.items()}
        mine: Manager = (manager, "Update")
        owners[mine] = owners.get(mine, set()) | (
            changed & after if subresource != "status" else changed
        )
        if subresource:
            stored.subresources[mine] = subresource
        return self._commit(rtype, key, stored, new, owners)

    def _commit(
        self,
        rtype: ResourceType,
        key: Key,
        stored: Stored,
        new: Obj,
        owners: dict[Manager, set[Path]],
        *,
        created: bool = False,
    ) -> Obj:
        owners = {m: p for m, p in owners.items() if p}
        _apply_defaults(rtype, new)
        if rtype.kind == "Service" and self.cluster_ip and "clusterIP" not in new["spec"]:
            new["spec"]["clusterIP"] = self.cluster_ip(new["metadata"]["namespace"])
            new["spec"]["clusterIPs"] = [new["spec"]["clusterIP"]]
        old = stored.obj
        if not created and _content(old) == _content(new) and owners == stored.owners:
            return copy.deepcopy(old)  # a no-op: resourceVersion stays
        metadata = new["metadata"]
        if rtype.generation and not created and old.get("spec") != new.get("spec"):
            metadata["generation"] = int(old["metadata"].get("generation", 1)) + 1
        self.revision += 1
        metadata["resourceVersion"] = str(self.revision)
        metadata["managedFields"] = self._managed_fields(rtype, stored, owners)
        stored.obj = new
        stored.owners = owners
        self.objects[key] = stored
        self._record("ADDED" if created else "MODIFIED", rtype, new)
        return copy.deepcopy(new)

    def _managed_fields(
        self, rtype: ResourceType, stored: Stored, owners: dict[Manager, set[Path]]
    ) -> list[Obj]:
        entries = []
        for (manager, operation), paths in sorted(owners.items()):
            entry = {
                "manager": manager,
                "operation": operation,
                "apiVersion": rtype.api_version,
                "time": now(),
                "fieldsType": "FieldsV1",
                "fieldsV1": fields_v1(paths),
            }
            if (manager, operation) in stored.subresources:
                entry["subresource"] = stored.subresources[(manager, operation)]
            entries.append(entry)
        return entries

    def _remove(self, key: Key) -> None:
        stored = self.objects.pop(key, None)
        if stored is None:
            return
        self.revision += 1
        gone = copy.deepcopy(stored.obj)
        gone["metadata"]["resourceVersion"] = str(self.revision)
        group, plural = key[0], key[1]
        rtype = next(t for t in RESOURCE_TYPES if (t.group, t.plural) == (group, plural))
        self._record("DELETED", rtype, gone)

    def _remove_owned(self, namespace: str, owner_uid: str) -> None:
        for key, stored in list(self.objects.items()):
            refs = stored.obj["metadata"].get("ownerReferences") or []
            if key[2] == namespace and any(r.get("uid") == owner_uid for r in refs):
                self._remove(key)

    def _record(self, kind: str, rtype: ResourceType, obj: Obj) -> None:
        self.history.append(WatchEvent(self.revision, kind, rtype, copy.deepcopy(obj)))
        del self.history[:-5000]
        self.changed.notify_all()


@functools.lru_cache(maxsize=64)
def _validator(kind: str, api_version: str, version: str) -> Any:
    """kubernetes-validate's strict schema for ``kind`` (what its ``validate`` loads from disk
    on every call, built once here: the schemas are megabytes of JSON)."""
    wanted = schema_check.major_minor(version)
    newest = [v for v in schema_check.all_versions() if schema_check.major_minor(v) <= wanted][-1]
    directory = f"kubernetes-json-schema/v{newest}-local-strict"
    group = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    try:
        schema = schema_check.schema_contents(f"{directory}/{kind.lower()}-{group}.json", version)
    except FileNotFoundError:
        return None
    definitions = schema_check.schema_contents(f"{directory}/_definitions.json", version)
    registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.validators.Draft202012Validator(schema, registry=registry)


def _content(obj: Obj) -> Obj:
    content = {k: v for k, v in obj.items() if k != "metadata"}
    content["metadata"] = {
        k: v
        for k, v in obj.get("metadata", {}).items()
        if k not in ("resourceVersion", "managedFields", "generation")
    }
    return content


def _apply_defaults(rtype: ResourceType, obj: Obj) -> None:
    """Some of the defaults the real server fills in, so observed objects look real."""
    metadata = obj["metadata"]
    if rtype.kind == "Namespace":
        metadata.setdefault("labels", {})["kubernetes.io/metadata.name"] = metadata["name"]
        obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
        obj.setdefault("status", {}).setdefault("phase", "Active")
    elif rtype.kind == "Secret":
        obj.setdefault("type", "Opaque")
    elif rtype.kind == "Service":
        spec = obj.setdefault("spec", {})
        spec.setdefault("type", "ClusterIP")
        spec.setdefault("sessionAffinity", "None")
        for port in spec.get("ports") or []:
            port.setdefault("protocol", "TCP")
            port.setdefault("targetPort", port.get("port"))
    elif rtype.kind == "StatefulSet":
        spec = obj.setdefault("spec", {})
        spec.setdefault("replicas", 1)
        spec.setdefault("podManagementPolicy", "OrderedReady")
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault(
            "updateStrategy", {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}
        )
