"""The in-memory API server's HTTP side: the Kubernetes REST paths lightkube uses (get, list
with selectors, watch, create, replace, patch incl. server-side apply, delete, the status and
scale subresources, pod logs), token auth, and a log of every request for tests to assert on."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

from tests.helpers.kube.store import (
    TYPES_BY_PATH,
    ApiStatus,
    Obj,
    ResourceType,
    Store,
    bad_request,
    field_values,
    merge_patch,
    selector_matches,
)

APPLY = "application/apply-patch+yaml"
MERGE_PATCHES = ("application/merge-patch+json", "application/strategic-merge-patch+json")
JSON_PATCH = "application/json-patch+json"


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    content_type: str
    query: dict[str, str]
    status: int = 0


@dataclass
class Target:
    """What a URL names: a resource type, a namespace, maybe a name and a subresource."""

    rtype: ResourceType
    namespace: str | None
    name: str | None = None
    subresource: str = ""


def parse_target(path: str) -> Target:
    parts = [p for p in path.split("/") if p]
    if parts[:1] == ["api"] and len(parts) >= 3:
        group, version, rest = "", parts[1], parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 4:
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        raise ApiStatus(404, "NotFound", "the server could not find the requested resource")
    namespace = None
    if len(rest) >= 3 and rest[0] == "namespaces" and (group, version, rest[2]) in TYPES_BY_PATH:
        namespace, rest = rest[1], rest[2:]
    rtype = TYPES_BY_PATH.get((group, version, rest[0]))
    if rtype is None or len(rest) > 3 or (rtype.namespaced and namespace is None and len(rest) > 1):
        raise ApiStatus(404, "NotFound", "the server could not find the requested resource")
    return Target(
        rtype, namespace, rest[1] if len(rest) > 1 else None, rest[2] if len(rest) > 2 else ""
    )


def manager_of(query: dict[str, str], user_agent: str) -> str:
    """Like the real server: ``fieldManager``, else the User-Agent's product name."""
    return query.get("fieldManager") or (user_agent.split("/")[0] or "unknown")


def scale_of(obj: Obj) -> Obj:
    metadata = obj["metadata"]
    labels = (obj.get("spec", {}).get("selector") or {}).get("matchLabels") or {}
    return {
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            k: metadata[k]
            for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
            if k in metadata
        },
        "spec": {"replicas": obj.get("spec", {}).get("replicas", 0)},
        "status": {
            "replicas": obj.get("status", {}).get("replicas", 0),
            "selector": ",".join(f"{k}={v}" for k, v in sorted(labels.items())),
        },
    }


def list_body(rtype: ResourceType, revision: int, items: list[Obj]) -> Obj:
    for item in items:  # like the real server: items carry no apiVersion/kind
        item.pop("apiVersion", None)
        item.pop("kind", None)
    return {
        "kind": f"{rtype.kind}List",
        "apiVersion": rtype.api_version,
        "metadata": {"resourceVersion": str(revision)},
        "items": items,
    }


class Api:
    """Turns one parsed request into a store call; returns (HTTP status, body)."""

    def __init__(self, store: Store, log_of_pod: Callable[..., str | None]) -> None:
        self.store = store
        self.log_of_pod = log_of_pod

    def handle(
        self,
        method: str,
        target: Target,
        query: dict[str, str],
        content_type: str,
        body: bytes,
        agent: str,
    ) -> tuple[int, Any]:
        if query.get("dryRun") and method != "GET":
            # Refused rather than silently persisted: nothing here implements dry runs.
            raise bad_request("dryRun is not supported by the in-memory API server")
        if target.subresource == "scale" and target.rtype.scale:
            return self._scale(method, target, query, content_type, body, agent)
        if target.subresource == "log" and target.rtype.kind == "Pod" and method == "GET":
            return self._log(target, query)
        if target.subresource not in ("", "status"):
            raise ApiStatus(404, "NotFound", "the server could not find the requested resource")
        handler = {
            "GET": self._get,
            "POST": self._post,
            "PUT": self._put,
            "PATCH": self._patch,
            "DELETE": self._delete,
        }.get(method)
        if handler is None:
            raise ApiStatus(
                405,
                "MethodNotAllowed",
                f"the server does not allow this method on the requested resource: {method}",
            )
        return handler(target, query, content_type, body, agent)

    def _get(
        self, target: Target, query: dict[str, str], content_type: str, body: bytes, agent: str
    ) -> tuple[int, Any]:
        if target.name is None:
            revision, items = self.store.list_objects(
                target.rtype,
                target.namespace,
                query.get("labelSelector"),
                query.get("fieldSelector"),
            )
            return 200, list_body(target.rtype, revision, self._page(items, query))
        return 200, self.store.get(target.rtype, target.namespace, target.name)

    @staticmethod
    def _page(items: list[Obj], query: dict[str, str]) -> list[Obj]:
        # ``limit``/``continue`` are honoured by returning everything at once (allowed: the
        # server may ignore limit), which lightkube's chunked list handles.
        return items

    def _post(
        self, target: Target, query: dict[str, str], content_type: str, body: bytes, agent: str
    ) -> tuple[int, Any]:
        if target.name is not None:
            raise ApiStatus(405, "MethodNotAllowed", "POST is not allowed on a named resource")
        obj = decode_json(body)
        return 201, self.store.create(target.rtype, target.namespace, obj, manager_of(query, agent))

    def _put(
        self, target: Target, query: dict[str, str], content_type: str, body: bytes, agent: str
    ) -> tuple[int, Any]:
        name = self._named(target)
        obj = decode_json(body)
        if target.subresource == "status":
            return 200, self.store.replace_status(
                target.rtype, target.namespace, name, obj, manager_of(query, agent)
            )
        return 200, self.store.replace(
            target.rtype, target.namespace, name, obj, manager_of(query, agent)
        )

    def _patch(
        self, target: Target, query: dict[str, str], content_type: str, body: bytes, agent: str
    ) -> tuple[int, Any]:
        name = self._named(target)
        if content_type == APPLY:
            manager = query.get("fieldManager")
            if not manager:
                raise ApiStatus(
                    422,
                    "Invalid",
                    'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: is required for apply patch',
                )
            try:
                obj = yaml.safe_load(body)
            except yaml.YAMLError as error:
                raise bad_request(f"error decoding YAML: {error}") from None
            force = query.get("force", "false").lower() == "true"
            return 200, self.store.apply(
                target.rtype, target.namespace, name, obj, manager, force=force
            )
        if "force" in query:
            raise ApiStatus(
                422,
                "Invalid",
                "force: Invalid value: force may not be specified for non-apply patch",
            )
        patch = self._patch_body(target, name, content_type, body)
        return 200, self.store.patch(
            target.rtype,
            target.namespace,
            name,
            patch,
            manager_of(query, agent),
            subresource=target.subresource,
        )

    def _patch_body(self, target: Target, name: str, content_type: str, body: bytes) -> Obj:
        if content_type in MERGE_PATCHES:
            patch = decode_json(body)
            if not isinstance(patch, dict):
                raise bad_request("a merge patch must be a JSON object")
            return patch
        if content_type == JSON_PATCH:
            import jsonpatch  # only for this rarely used patch type

            current = self.store.get(target.rtype, target.namespace, name)
            try:
                patched = jsonpatch.apply_patch(current, decode_json(body))
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as error:
                raise ApiStatus(
                    422, "Invalid", f"the JSON patch could not be applied: {error}"
                ) from None
            # Expressed as a merge patch of the whole object (removed keys become null).
            return _diff_as_merge_patch(current, patched)
        raise ApiStatus(
            415,
            "UnsupportedMediaType",
            f'the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got "{content_type}")',
        )

    def _delete(
        self, target: Target, query: dict[str, str], content_type: str, body: bytes, agent: str
    ) -> tuple[int, Any]:
        if target.name is None:  # deletecollection
            _, items = self.store.list_objects(
                target.rtype,
                target.namespace,
                query.get("labelSelector"),
                query.get("fieldSelector"),
            )
            for item in items:
                self.store.delete(target.rtype, target.namespace, item["metadata"]["name"])
            return 200, list_body(target.rtype, self.store.revision, items)
        return 200, self.store.delete(target.rtype, target.namespace, target.name)

    def _scale(
        self,
        method: str,
        target: Target,
        query: dict[str, str],
        content_type: str,
        body: bytes,
        agent: str,
    ) -> tuple[int, Any]:
        name = self._named(target)
        current = self.store.get(target.rtype, target.namespace, name)
        if method == "GET":
            return 200, scale_of(current)
        if method == "PUT":
            scale = decode_json(body)
            self.store.check_version(target.rtype, target.namespace, name, scale)
        elif method == "PATCH" and content_type in MERGE_PATCHES:
            scale = merge_patch(scale_of(current), decode_json(body))
        else:
            raise ApiStatus(
                405, "MethodNotAllowed", f"{method} {content_type} is not supported on scale"
            )
        replicas = (scale.get("spec") or {}).get("replicas")
        if not isinstance(replicas, int) or replicas < 0:
            raise ApiStatus(
                422,
                "Invalid",
                f'Scale.autoscaling "{name}" is invalid: spec.replicas: Invalid value: {replicas!r}: must be greater than or equal to 0',
            )
        updated = self.store.patch(
            target.rtype,
            target.namespace,
            name,
            {"spec": {"replicas": replicas}},
            manager_of(query, agent),
            subresource="scale",
        )
        return 200, scale_of(updated)

    def _log(self, target: Target, query: dict[str, str]) -> tuple[int, Any]:
        """The container's output (``previous``, ``tailLines``; ``follow`` ends at once)."""
        name = self._named(target)
        self.store.get(target.rtype, target.namespace, name)
        previous = query.get("previous") in ("true", "1")
        text = self.log_of_pod(target.namespace or "", name, previous=previous) or ""
        tail = query.get("tailLines")
        if tail and tail.isdigit():
            lines = text.splitlines(keepends=True)
            text = "".join(lines[-int(tail) :]) if int(tail) else ""
        return 200, text

    @staticmethod
    def _named(target: Target) -> str:
        if target.name is None:
            raise ApiStatus(
                405, "MethodNotAllowed", "the server does not allow this method on a collection"
            )
        return target.name


def _diff_as_merge_patch(before: Any, after: Any) -> Any:
    if not isinstance(before, dict) or not isinstance(after, dict):
        return after
    patch: Obj = {k: None for k in before if k not in after}
    for key, value in after.items():
        if before.get(key) != value:
            patch[key] = _diff_as_merge_patch(before.get(key), value)
    return patch


def decode_json(body: bytes) -> Any:
    try:
        return json.loads(body or b"null")
    except ValueError as error:
        raise bad_request(
            f"the body of the request could not be decoded as JSON: {error}"
        ) from None


@dataclass
class ServerState:
    store: Store
    token: str
    api: Api
    requests: list[RecordedRequest] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)


class KubeHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; without this, Nagle + delayed ACK add ~40 ms.
    disable_nagle_algorithm = True
    server: KubeHttpServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 -- the base signature
        pass  # the request log is ServerState.requests

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        state = self.server.state
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        status = 500
        recorded = False
        try:
            if self.headers.get("Authorization") != f"Bearer {state.token}":
                raise ApiStatus(401, "Unauthorized", "Unauthorized")
            if url.path in ("/version", "/healthz", "/readyz", "/livez"):
                status = 200
                self._send(
                    200,
                    {
                        "major": "1",
                        "minor": state.store.kubernetes_version.split(".")[1],
                        "gitVersion": f"v{state.store.kubernetes_version}.0",
                    }
                    if url.path == "/version"
                    else "ok",
                )
                return
            target = parse_target(url.path)
            if method == "GET" and query.get("watch") in ("true", "1"):
                status = 200
                self._watch(target, query)
                return
            status, answer = state.api.handle(
                method, target, query, content_type, body, self.headers.get("User-Agent") or ""
            )
            # Recorded before the answer goes out: a client that has its answer finds its
            # request in the log (recording after sending raced with the test reading it).
            state.requests.append(RecordedRequest(method, url.path, content_type, query, status))
            recorded = True
            self._send(status, answer)
        except ApiStatus as error:
            status = error.code
            state.requests.append(RecordedRequest(method, url.path, content_type, query, status))
            recorded = True
            self._send(error.code, error.body())
        finally:
            if not recorded:
                state.requests.append(
                    RecordedRequest(method, url.path, content_type, query, status)
                )

    def _send(self, status: int, answer: Any) -> None:
        if isinstance(answer, str):
            data, content_type = answer.encode(), "text/plain"
        else:
            data, content_type = json.dumps(answer).encode(), "application/json"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _watch(self, target: Target, query: dict[str, str]) -> None:
        store = self.server.state.store
        deadline = time.monotonic() + float(query.get("timeoutSeconds") or 1800)
        revision, lines = self._watch_start(target, query)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            self._chunks(lines)
            while time.monotonic() < deadline and not self.server.state.stopping.is_set():
                with store.lock:
                    events = store.events_since(revision)
                    if not events:
                        store.changed.wait(timeout=0.5)
                        store.settle()
                        continue
                revision = events[-1].revision
                self._chunks(
                    [
                        {"type": e.type, "object": e.obj}
                        for e in events
                        if e.rtype == target.rtype and self._watched(target, query, e.obj)
                    ]
                )
            self.wfile.write(b"0\r\n\r\n")
        except ApiStatus as error:
            self._chunks([{"type": "ERROR", "object": error.body()}])
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _watch_start(self, target: Target, query: dict[str, str]) -> tuple[int, list[Obj]]:
        store = self.server.state.store
        since = query.get("resourceVersion")
        if since and since != "0":
            return int(since), []
        revision, items = store.list_objects(
            target.rtype, target.namespace, query.get("labelSelector"), query.get("fieldSelector")
        )
        for item in items:
            item.setdefault("apiVersion", target.rtype.api_version)
            item.setdefault("kind", target.rtype.kind)
        return revision, [{"type": "ADDED", "object": item} for item in items]

    @staticmethod
    def _watched(target: Target, query: dict[str, str], obj: Obj) -> bool:
        metadata = obj["metadata"]
        if target.namespace is not None and metadata.get("namespace") != target.namespace:
            return False
        return selector_matches(
            query.get("labelSelector"), metadata.get("labels") or {}
        ) and selector_matches(query.get("fieldSelector"), field_values(obj))

    def _chunks(self, events: list[Obj]) -> None:
        for event in events:
            data = json.dumps(event).encode() + b"\n"
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


class KubeHttpServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], state: ServerState) -> None:
        super().__init__(address, KubeHandler)
        self.state = state


def write_kubeconfig(path: Path, url: str, token: str) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c3-fake", "cluster": {"server": url}}],
        "users": [{"name": "c3-fake", "user": {"token": token}}],
        "contexts": [
            {
                "name": "c3-fake",
                "context": {"cluster": "c3-fake", "user": "c3-fake", "namespace": "default"},
            }
        ],
        "current-context": "c3-fake",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path
