"""The Helm chart (deploy/helm/c3) checked with a real helm: lint, render with the required and
with production-like values, every manifest validated offline (strict) against the oldest and
newest Kubernetes versions the chart claims, the values schema refusing wrong input, RBAC no
wider than the kubernetes backend needs, and only the worker holding a ServiceAccount token."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.helpers.helm import (
    CHART,
    ToolsUnavailable,
    helm,
    helm_tools,
    render,
    template,
    values_file,
)

RELEASE = "acme-c3"
NAMESPACE = "platform"

REQUIRED: dict[str, Any] = {
    "existingSecret": "c3-secrets",
    "baseDomain": "chat.example.com",
    "kubernetes": {"databaseCidr": "10.0.0.5/32"},
}

PRODUCTION: dict[str, Any] = {
    **REQUIRED,
    "image": {"repository": "registry.example.com/c3", "tag": "0.1.0", "pullPolicy": "Always"},
    "imagePullSecrets": [{"name": "registry"}],
    "kubernetes": {
        "databaseCidr": "10.20.0.7/32",
        "synapseImage": "registry.example.com/synapse:v1.163.2",
        "storageClass": "fast-ssd",
        "clusterDomain": "cluster.example",
    },
    "objectStore": {
        "url": "https://s3.eu-west-1.amazonaws.com",
        "bucket": "c3-archives",
        "region": "eu-west-1",
        "prefix": "prod/",
    },
    "extraConfig": {"C3_RECONCILE_INTERVAL_S": "20", "C3_EXPORTS_PER_TENANT_MAX": 3},
    "proxy": {
        "publicUrl": "https://chat.example.com",
        "trustedProxies": ["10.0.0.0/8"],
        "autoscaling": {
            "enabled": True,
            "minReplicas": 3,
            "maxReplicas": 12,
            "targetMemoryUtilizationPercentage": 80,
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}},
        },
        "spool": {"largestUploadMiB": 100, "concurrentUploads": 6, "headroomMiB": 32},
        "podDisruptionBudget": {"maxUnavailable": None, "minAvailable": 2},
    },
    "worker": {"replicas": 3, "concurrency": 4},
    "ingress": {
        "enabled": True,
        "className": "nginx",
        "tlsSecretName": "wildcard-chat-example-com",
        "annotations": {"nginx.ingress.kubernetes.io/proxy-read-timeout": "300"},
        "proxy": {"annotations": {"nginx.ingress.kubernetes.io/proxy-body-size": "110m"}},
    },
    "networkPolicy": {
        "apiFrom": [{"namespaceSelector": {"matchLabels": {"name": "ingress-nginx"}}}],
        "proxyFrom": [{"namespaceSelector": {"matchLabels": {"name": "ingress-nginx"}}}],
        "dns": {
            "to": [
                {
                    "namespaceSelector": {},
                    "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
                }
            ]
        },
        "redis": {"to": [{"ipBlock": {"cidr": "10.20.0.8/32"}}]},
        "objectStore": {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}}]},
        "kubernetesApi": {"to": [{"ipBlock": {"cidr": "10.0.0.1/32"}}]},
    },
    "metrics": {
        "serviceMonitor": {"enabled": True, "bearerTokenSecret": {"name": "c3-metrics"}},
    },
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "dedicated", "value": "c3", "effect": "NoSchedule"}],
    "podAnnotations": {"example.com/team": "chat"},
}

LOCAL: dict[str, Any] = {
    "existingSecret": "c3-secrets",
    "baseDomain": "chat.example.com",
    "backend": "local",
    "tenantDatabaseUrlFromSecret": False,
    "networkPolicy": {"enabled": False},
    "tests": {"enabled": False},
}

VALUE_SETS = {"required": REQUIRED, "production": PRODUCTION, "local": LOCAL}

# Custom resources have no schema in kubernetes_validate: the only ones the chart may render.
CUSTOM_API_GROUPS = {"monitoring.coreos.com"}

# What the worker's ClusterRole may grant: the kinds the kubernetes backend applies, observes and
# deletes (server-side apply is a patch, plus create for a new object), nothing else.
WRITE = {"get", "list", "watch", "create", "patch", "update", "delete"}
ALLOWED_RBAC = {
    ("", "namespaces"): WRITE,
    ("", "secrets"): WRITE,
    ("", "configmaps"): WRITE,
    ("", "services"): WRITE,
    ("", "persistentvolumeclaims"): WRITE,
    ("", "resourcequotas"): WRITE,
    ("", "limitranges"): WRITE,
    ("apps", "statefulsets"): WRITE,
    ("apps", "statefulsets/scale"): {"get", "patch", "update"},
    ("apps", "statefulsets/status"): {"get"},
    ("networking.k8s.io", "networkpolicies"): WRITE,
    ("", "pods"): {"get", "list", "watch"},
    ("", "events"): {"list"},
}


@pytest.fixture(scope="module", autouse=True)
def _tools() -> None:
    try:
        helm_tools()
    except ToolsUnavailable as exc:
        pytest.skip(f"no helm: {exc}")


def _validated_versions() -> list[str]:
    """The oldest and newest Kubernetes versions Chart.yaml claims, as x.y.0."""
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    claimed = chart["annotations"]["c3.io/validated-kubernetes-versions"]
    versions = [f"{v.strip()}.0" for v in claimed.split(",")]
    assert chart["kubeVersion"].startswith(f">={versions[0]}"), chart["kubeVersion"]
    return versions


def _merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


def _rendered(values: dict[str, Any], tmp_path: Path, **options: Any) -> list[dict[str, Any]]:
    return render(values, tmp_path, release=RELEASE, namespace=NAMESPACE, **options)


def _by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def _named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [doc for doc in _by_kind(docs, kind) if doc["metadata"]["name"] == name]
    return found


def _pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(kind/name, pod spec) of every workload and bare Pod."""
    for doc in docs:
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
            yield where, doc["spec"]["template"]["spec"]
        elif doc["kind"] == "Pod":
            yield where, doc["spec"]


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def _config(docs: list[dict[str, Any]]) -> dict[str, str]:
    return _named(docs, "ConfigMap", f"{RELEASE}-config")["data"]


# Lint ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_lint_strict_passes(name: str, tmp_path: Path) -> None:
    done = helm("lint", "--strict", str(CHART), "-f", str(values_file(VALUE_SETS[name], tmp_path)))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in done.stdout


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "existingSecret is required"),
        ({"existingSecret": "s"}, "baseDomain is required"),
        ({"existingSecret": "s", "baseDomain": "a.example"}, "kubernetes.databaseCidr is required"),
    ],
)
def test_missing_required_value_is_named(
    values: dict[str, Any], message: str, tmp_path: Path
) -> None:
    done = template(values, tmp_path)
    assert done.returncode != 0
    assert message in done.stderr


# Offline validation ------------------------------------------------------------------------


@pytest.mark.parametrize("version", _validated_versions())
@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_every_manifest_validates_strictly(name: str, version: str, tmp_path: Path) -> None:
    docs = _rendered(VALUE_SETS[name], tmp_path, kube_version=version)
    assert len(docs) >= 10
    custom = []
    for doc in docs:
        if doc["apiVersion"].split("/")[0] in CUSTOM_API_GROUPS:
            custom.append(doc["kind"])
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(
                f"{doc['kind']}/{doc['metadata']['name']} is not valid Kubernetes {version}: "
                f"{exc.message} at {list(exc.path)}"
            ) from None
    assert custom == (["ServiceMonitor"] if name == "production" else [])


# Values schema -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"api": {"replicas": "two"}}, "/api/replicas"),
        ({"proxy": {"spool": {"concurrentUploads": 1.5}}}, "/proxy/spool/concurrentUploads"),
        ({"tenantDatabaseUrlFromSecret": "yes"}, "/tenantDatabaseUrlFromSecret"),
        ({"backend": "docker"}, "/backend"),
        ({"logFormat": "xml"}, "/logFormat"),
        ({"baseDomain": "not a domain"}, "/baseDomain"),
        ({"objectStore": {"url": "s3.example.com"}}, "/objectStore/url"),
        ({"extraConfig": {"lowercase_name": "1"}}, "lowercase_name"),
    ],
)
def test_schema_refuses_a_wrong_value(extra: dict[str, Any], named: str, tmp_path: Path) -> None:
    done = template(_merged(REQUIRED, extra), tmp_path)
    assert done.returncode != 0
    assert "schema" in done.stderr and named in done.stderr, done.stderr


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ({"replicaCount": 3}, "replicaCount"),
        ({"proxy": {"replica": 3}}, "replica"),
        ({"objectStore": {"secretKey": "x"}}, "secretKey"),
        ({"networkPolicy": {"database": {"cidr": "10.0.0.0/8"}}}, "cidr"),
        ({"serviceAccount": {"automountToken": True}}, "automountToken"),
    ],
)
def test_schema_refuses_an_unknown_key(extra: dict[str, Any], key: str, tmp_path: Path) -> None:
    done = template(_merged(REQUIRED, extra), tmp_path)
    assert done.returncode != 0
    assert f"additional properties '{key}' not allowed" in done.stderr, done.stderr


def test_extra_config_refuses_secrets_and_settings_with_their_own_value(tmp_path: Path) -> None:
    secret = template(_merged(REQUIRED, {"extraConfig": {"C3_TENANT_DATABASE_URL": "x"}}), tmp_path)
    assert "extraConfig.C3_TENANT_DATABASE_URL is a secret setting" in secret.stderr
    owned = template(_merged(REQUIRED, {"extraConfig": {"C3_OBJECT_STORE_URL": "x"}}), tmp_path)
    assert "extraConfig.C3_OBJECT_STORE_URL is set by the chart itself" in owned.stderr


# RBAC and ServiceAccount tokens ------------------------------------------------------------


def test_worker_rbac_is_exactly_what_the_backend_applies(tmp_path: Path) -> None:
    docs = _rendered(REQUIRED, tmp_path)
    assert not _by_kind(docs, "Role") and not _by_kind(docs, "RoleBinding")
    (role,) = _by_kind(docs, "ClusterRole")
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, rule  # no resourceNames/URLs
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    assert granted == ALLOWED_RBAC

    (binding,) = _by_kind(docs, "ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    worker = _named(docs, "Deployment", f"{RELEASE}-worker")["spec"]["template"]["spec"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": worker["serviceAccountName"], "namespace": NAMESPACE}
    ]


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_only_the_worker_mounts_a_service_account_token(name: str, tmp_path: Path) -> None:
    docs = _rendered(VALUE_SETS[name], tmp_path)
    kubernetes = VALUE_SETS[name].get("backend", "kubernetes") == "kubernetes"
    mounted = {
        where
        for where, spec in _pod_specs(docs)
        if spec.get("automountServiceAccountToken") is not False
    }
    assert mounted == ({f"Deployment/{RELEASE}-worker"} if kubernetes else set())
    accounts = {
        sa["metadata"]["name"]: sa["automountServiceAccountToken"]
        for sa in _by_kind(docs, "ServiceAccount")
    }
    assert accounts == {RELEASE: False, f"{RELEASE}-worker": kubernetes}
    worker = _named(docs, "Deployment", f"{RELEASE}-worker")["spec"]["template"]["spec"]
    assert worker["serviceAccountName"] == f"{RELEASE}-worker"
    if not kubernetes:
        assert not _by_kind(docs, "ClusterRole") and not _by_kind(docs, "ClusterRoleBinding")


# Settings ----------------------------------------------------------------------------------


def test_kubernetes_backend_settings_name_the_release(tmp_path: Path) -> None:
    config = _config(_rendered(PRODUCTION, tmp_path))
    assert config["C3_BACKEND"] == "kubernetes"
    assert config["C3_KUBERNETES_RELEASE"] == RELEASE
    assert config["C3_KUBERNETES_PLATFORM_NAMESPACE"] == NAMESPACE
    assert config["C3_KUBERNETES_SYNAPSE_IMAGE"] == "registry.example.com/synapse:v1.163.2"
    assert config["C3_KUBERNETES_STORAGE_CLASS"] == "fast-ssd"
    assert config["C3_KUBERNETES_DATABASE_CIDR"] == "10.20.0.7/32"
    assert config["C3_KUBERNETES_CLUSTER_DOMAIN"] == "cluster.example"
    assert config["C3_LOG_FORMAT"] == "json"
    assert config["C3_RECONCILE_INTERVAL_S"] == "20"
    # Unset optional values leave the service's own default in charge.
    defaults = _config(_rendered(REQUIRED, tmp_path))
    assert "C3_KUBERNETES_SYNAPSE_IMAGE" not in defaults
    assert "C3_KUBERNETES_STORAGE_CLASS" not in defaults
    assert not any(key.startswith("C3_OBJECT_STORE") for key in defaults)


def test_tenant_homeservers_reach_the_application_service_at_the_api_service(
    tmp_path: Path,
) -> None:
    """With the kubernetes backend the receiver URL is the API's in-cluster Service (its DNS
    name and port); extraConfig may name another; the local backend keeps the API's own."""
    config = _config(_rendered(PRODUCTION, tmp_path))
    assert (
        config["C3_CONTEXTS_APPSERVICE_URL"]
        == f"http://{RELEASE}-api.{NAMESPACE}.svc.cluster.example:80"
    )
    service = _named(_rendered(PRODUCTION, tmp_path), "Service", f"{RELEASE}-api")
    assert service["spec"]["ports"][0]["port"] == 80
    custom = _merged(
        PRODUCTION, {"extraConfig": {"C3_CONTEXTS_APPSERVICE_URL": "http://c3-api.internal:8000"}}
    )
    assert _config(_rendered(custom, tmp_path))["C3_CONTEXTS_APPSERVICE_URL"] == (
        "http://c3-api.internal:8000"
    )
    assert "C3_CONTEXTS_APPSERVICE_URL" not in _config(_rendered(LOCAL, tmp_path))


def test_object_store_settings_and_credentials_from_the_secret(tmp_path: Path) -> None:
    docs = _rendered(PRODUCTION, tmp_path)
    config = _config(docs)
    assert config["C3_OBJECT_STORE_URL"] == "https://s3.eu-west-1.amazonaws.com"
    assert config["C3_OBJECT_STORE_BUCKET"] == "c3-archives"
    assert config["C3_OBJECT_STORE_REGION"] == "eu-west-1"
    assert config["C3_OBJECT_STORE_PREFIX"] == "prod/"
    assert not any("SECRET" in key or "ACCESS_KEY" in key for key in config)
    # Each secret reaches only the pods that use it: the worker writes archives and creates
    # tenant databases, the API signs download links.
    expected = {
        f"Deployment/{RELEASE}-api": {
            "C3_OBJECT_STORE_ACCESS_KEY_ID",
            "C3_OBJECT_STORE_SECRET_ACCESS_KEY",
        },
        f"Deployment/{RELEASE}-worker": {
            "C3_OBJECT_STORE_ACCESS_KEY_ID",
            "C3_OBJECT_STORE_SECRET_ACCESS_KEY",
            "C3_TENANT_DATABASE_URL",
        },
        f"Deployment/{RELEASE}-proxy": set(),
        f"Deployment/{RELEASE}-beat": set(),
        f"Job/{RELEASE}-migrate": set(),
        f"Pod/{RELEASE}-test": None,
    }
    base = {"C3_DATABASE_URL", "C3_REDIS_URL", "C3_SECRET_KEY", "C3_OPERATOR_TOKEN"}
    for where, spec in _pod_specs(docs):
        from_secret = {
            name: ref["secretKeyRef"]
            for name, ref in _env(spec["containers"][0]).items()
            if isinstance(ref, dict)
        }
        if expected[where] is None:  # the helm test Pod holds no platform setting
            assert not from_secret, where
            continue
        assert set(from_secret) == base | expected[where], where
        for name, ref in from_secret.items():
            assert ref == {"name": "c3-secrets", "key": name}, where
    # Workload identity instead of keys: no credential from the Secret.
    no_keys = _merged(PRODUCTION, {"objectStore": {"credentialsFromSecret": False}})
    worker = _named(_rendered(no_keys, tmp_path), "Deployment", f"{RELEASE}-worker")
    assert "C3_OBJECT_STORE_ACCESS_KEY_ID" not in _env(
        worker["spec"]["template"]["spec"]["containers"][0]
    )


def test_proxy_spool_volume_is_sized_above_its_budget(tmp_path: Path) -> None:
    for values, mib in ((REQUIRED, 50 * 4), (PRODUCTION, 100 * 6)):
        docs = _rendered(values, tmp_path)
        spec = _named(docs, "Deployment", f"{RELEASE}-proxy")["spec"]["template"]["spec"]
        (volume,) = [v for v in spec["volumes"] if v["name"] == "spool"]
        headroom = values.get("proxy", {}).get("spool", {}).get("headroomMiB", 16)
        assert volume["emptyDir"]["sizeLimit"] == f"{mib + headroom}Mi"
        container = spec["containers"][0]
        # The node keeps that much disk free for the pod.
        assert container["resources"]["requests"]["ephemeral-storage"] == f"{mib + headroom}Mi"
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == "spool"]
        env = _env(container)
        assert env["C3_PROXY_SPOOL_DIR"] == mount["mountPath"]
        assert int(env["C3_PROXY_SPOOL_BUDGET_BYTES"]) == mib * 1024 * 1024
        assert int(env["C3_PROXY_SPOOL_BUDGET_BYTES"]) < (mib + headroom) * 1024 * 1024


def test_proxy_autoscaler_owns_the_replica_count(tmp_path: Path) -> None:
    fixed = _named(_rendered(REQUIRED, tmp_path), "Deployment", f"{RELEASE}-proxy")
    assert fixed["spec"]["replicas"] == 2
    docs = _rendered(PRODUCTION, tmp_path)
    assert "replicas" not in _named(docs, "Deployment", f"{RELEASE}-proxy")["spec"]
    (hpa,) = _by_kind(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": f"{RELEASE}-proxy",
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 12)
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu", "memory"]


def test_worker_and_beat_have_exec_probes(tmp_path: Path) -> None:
    docs = _rendered(REQUIRED, tmp_path)
    worker = _named(docs, "Deployment", f"{RELEASE}-worker")["spec"]["template"]["spec"]
    beat = _named(docs, "Deployment", f"{RELEASE}-beat")["spec"]["template"]["spec"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert worker["containers"][0][probe]["exec"]["command"] == ["c3", "probe", "worker"]
    assert beat["containers"][0]["livenessProbe"]["exec"]["command"][:3] == ["c3", "probe", "beat"]


# Network -----------------------------------------------------------------------------------


def test_containers_keep_the_image_entrypoint(tmp_path: Path) -> None:
    """Only arguments: the image's ENTRYPOINT (tini as PID 1, then c3) is never replaced."""
    docs = _rendered(PRODUCTION, tmp_path)
    commands = {}
    for where, spec in _pod_specs(docs):
        (container,) = spec["containers"]
        assert "command" not in container, where
        commands[where] = container["args"][0]
    assert commands == {
        f"Deployment/{RELEASE}-api": "api",
        f"Deployment/{RELEASE}-proxy": "proxy",
        f"Deployment/{RELEASE}-worker": "worker",
        f"Deployment/{RELEASE}-beat": "beat",
        f"Job/{RELEASE}-migrate": "migrate",
        f"Pod/{RELEASE}-test": "probe",
    }


def test_platform_pods_carry_the_labels_tenant_policies_select(tmp_path: Path) -> None:
    docs = _rendered(REQUIRED, tmp_path)
    for component in ("api", "proxy", "worker", "beat"):
        deployment = _named(docs, "Deployment", f"{RELEASE}-{component}")
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/component"] == component


def test_network_policies_allow_only_what_each_component_uses(tmp_path: Path) -> None:
    docs = _rendered(PRODUCTION, tmp_path)
    policies = {p["metadata"]["name"]: p["spec"] for p in _by_kind(docs, "NetworkPolicy")}
    assert set(policies) == {f"{RELEASE}-{c}" for c in ("api", "proxy", "worker", "beat")}

    def ingress_ports(component: str) -> list[int]:
        rules = policies[f"{RELEASE}-{component}"]["ingress"]
        return [port["port"] for rule in rules for port in rule["ports"]]

    def egress_ports(component: str) -> set[int]:
        rules = policies[f"{RELEASE}-{component}"]["egress"]
        return {port["port"] for rule in rules for port in rule["ports"]}

    assert ingress_ports("api") == [8000, 8000] and ingress_ports("proxy") == [8080]
    assert ingress_ports("worker") == [] and ingress_ports("beat") == []
    assert egress_ports("api") == {53, 6379, 5432, 8008, 443}
    assert egress_ports("proxy") == {53, 6379, 8008}
    assert egress_ports("worker") == {53, 6379, 5432, 8008, 443, 6443}
    assert egress_ports("beat") == {53, 6379}
    for spec in policies.values():
        assert spec["policyTypes"] == ["Ingress", "Egress"]
        for rule in spec["egress"]:
            if rule["ports"][0]["port"] == 8008:
                assert rule["to"] == [
                    {
                        "namespaceSelector": {"matchLabels": {"c3.io/release": RELEASE}},
                        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "synapse"}},
                    }
                ]
            if rule["ports"][0]["port"] == 5432:
                assert rule["to"] == [{"ipBlock": {"cidr": "10.20.0.7/32"}}]
    # Restricted ingress still lets the `helm test` Pod reach the API.
    test_pod = _by_kind(docs, "Pod")[0]["metadata"]["labels"]
    (api_rule, from_homeservers) = policies[f"{RELEASE}-api"]["ingress"]
    # Tenant homeservers reach the API (the application service's transactions).
    assert from_homeservers["from"] == [
        {
            "namespaceSelector": {"matchLabels": {"c3.io/release": RELEASE}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "synapse"}},
        }
    ]
    local = _rendered(_merged(LOCAL, {"networkPolicy": {"enabled": True}}), tmp_path)
    (local_api,) = _named(local, "NetworkPolicy", f"{RELEASE}-api")["spec"]["ingress"]
    assert [p["port"] for p in local_api["ports"]] == [8000]
    selected = [
        peer["podSelector"]["matchLabels"] for peer in api_rule["from"] if "podSelector" in peer
    ]
    assert any(all(test_pod.get(k) == v for k, v in sel.items()) for sel in selected)


# helm test ---------------------------------------------------------------------------------


def test_helm_test_pod_calls_api_healthz_and_proxy_health(tmp_path: Path) -> None:
    docs = _rendered(REQUIRED, tmp_path)
    (pod,) = _by_kind(docs, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["restartPolicy"] == "Never"
    services = {
        s["metadata"]["name"]: s["spec"]["ports"][0]["port"] for s in _by_kind(docs, "Service")
    }
    container = pod["spec"]["containers"][0]
    # The image's entrypoint (tini, then c3) stays PID 1: the chart only gives arguments.
    assert "command" not in container
    assert container["args"] == [
        "probe",
        "http",
        f"http://{RELEASE}-api:{services[f'{RELEASE}-api']}/healthz",
        f"http://{RELEASE}-proxy:{services[f'{RELEASE}-proxy']}/_c3/health",
    ]


# The tools themselves ------------------------------------------------------------------------


def test_a_download_that_does_not_match_the_pinned_checksum_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.helpers import helm as helm_module

    monkeypatch.setenv("C3_TOOLS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(helm_module, "INTEGRITY", "sha512-" + "A" * 86 + "==")
    helm_tools.cache_clear()
    try:
        with pytest.raises(AssertionError, match="is not the pinned sha512-AAAA"):
            helm_tools()
    finally:
        helm_tools.cache_clear()
    assert not list((tmp_path / "cache").glob("*/helm")), "an unverified helm was kept"
