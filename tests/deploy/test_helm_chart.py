"""The Helm chart (deploy/helm/c3) checked with a real helm: lint, render with the required and
with production-like values, every manifest validated offline (strict) against the oldest and
newest Kubernetes versions the chart claims, the values schema refusing wrong input, RBAC no
wider than the kubernetes backend needs, and only the worker holding a ServiceAccount token.
With observability on: the monitoring.coreos.com objects against prometheus-operator's CRD
schemas (tests/deploy/monitoring_schemas.py), the alert rules and dashboards as shipped, the
proxy's and workers' metrics listeners, the Prometheus-only NetworkPolicy rules and the API key
the Synapse target discovery uses."""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.deploy import monitoring_schemas
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

# Production with every observability piece on: dashboards, alert rules, PodMonitors for the
# proxy and the workers (which then open their metrics listeners), the Synapse ScrapeConfig.
PROMETHEUS_POD = {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}
OBSERVABILITY: dict[str, Any] = {
    **PRODUCTION,
    "metrics": {
        "serviceMonitor": {
            "enabled": True,
            "labels": {"release": "kps"},
            "bearerTokenSecret": {"name": "c3-metrics", "key": "api-key"},
        },
    },
    "observability": {
        "dashboards": {"enabled": True, "annotations": {"grafana_folder": "C3"}},
        "prometheusRule": {"enabled": True, "labels": {"release": "kps"}},
        "scrape": {"enabled": True, "labels": {"release": "kps"}},
        "prometheusNamespace": "monitoring",
        "prometheusPodSelector": PROMETHEUS_POD,
    },
}

VALUE_SETS = {
    "required": REQUIRED,
    "production": PRODUCTION,
    "local": LOCAL,
    "observability": OBSERVABILITY,
}

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
    expected = {
        "production": ["ServiceMonitor"],
        "observability": ["PodMonitor", "PodMonitor", "PrometheusRule", "ScrapeConfig"]
        + ["ServiceMonitor"],
    }
    assert sorted(custom) == expected.get(name, [])


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


def test_tenant_homeservers_let_prometheus_in_from_its_namespace(tmp_path: Path) -> None:
    """observability.prometheusNamespace reaches the worker as C3_KUBERNETES_MONITORING_NAMESPACE,
    which opens each tenant's Synapse metrics port to that namespace (kubernetes_manifests)."""
    assert _config(_rendered(OBSERVABILITY, tmp_path))["C3_KUBERNETES_MONITORING_NAMESPACE"] == (
        "monitoring"
    )
    assert "C3_KUBERNETES_MONITORING_NAMESPACE" not in _config(_rendered(PRODUCTION, tmp_path))


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
        wanted = expected[where]
        if wanted is None:  # the helm test Pod holds no platform setting
            assert not from_secret, where
            continue
        assert set(from_secret) == base | wanted, where
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
    main, lane = worker["containers"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert main[probe]["exec"]["command"] == ["c3", "probe", "worker"]
        # The wake lane is pinged as its own Celery node, with the worker's timings.
        assert lane[probe]["exec"]["command"] == ["c3", "probe", "worker", "--lane", "wake"]
        assert {k: v for k, v in lane[probe].items() if k != "exec"} == {
            k: v for k, v in main[probe].items() if k != "exec"
        }
    assert beat["containers"][0]["livenessProbe"]["exec"]["command"][:3] == ["c3", "probe", "beat"]


def test_the_wake_lane_runs_beside_the_worker_unless_turned_off(tmp_path: Path) -> None:
    docs = _rendered(PRODUCTION, tmp_path)
    spec = _named(docs, "Deployment", f"{RELEASE}-worker")["spec"]["template"]["spec"]
    main, lane = spec["containers"]
    assert (lane["name"], lane["args"]) == ("wake-lane", ["worker", "--lane", "wake"])
    assert _env(lane)["C3_WAKE_LANE_THREADS"] == "8"
    # The same settings, secrets and data volume as the worker (it starts the same
    # homeservers); only the worker serves /metrics.
    assert lane["envFrom"] == main["envFrom"] and lane["volumeMounts"] == main["volumeMounts"]
    secret = {n for n, v in _env(lane).items() if isinstance(v, dict)}
    assert secret == {n for n, v in _env(main).items() if isinstance(v, dict)}
    assert "ports" not in lane and "C3_WORKER_METRICS_PORT" not in _env(lane)
    assert _config(docs)["C3_WAKE_LANE"] == "true"  # so the worker leaves the lane's queue
    off = _rendered(_merged(PRODUCTION, {"worker": {"wakeLane": {"enabled": False}}}), tmp_path)
    spec = _named(off, "Deployment", f"{RELEASE}-worker")
    assert [c["name"] for c in spec["spec"]["template"]["spec"]["containers"]] == ["worker"]
    assert _config(off)["C3_WAKE_LANE"] == "false"  # the worker wakes homeservers itself


# Network -----------------------------------------------------------------------------------


def test_containers_keep_the_image_entrypoint(tmp_path: Path) -> None:
    """Only arguments: the image's ENTRYPOINT (tini as PID 1, then c3) is never replaced."""
    docs = _rendered(PRODUCTION, tmp_path)
    commands = {}
    for where, spec in _pod_specs(docs):
        for container in spec["containers"]:
            assert "command" not in container, where
        commands[where] = [c["args"][0] for c in spec["containers"]]
    assert commands == {
        f"Deployment/{RELEASE}-api": ["api"],
        f"Deployment/{RELEASE}-proxy": ["proxy"],
        f"Deployment/{RELEASE}-worker": ["worker", "worker"],  # the worker and its wake lane
        f"Deployment/{RELEASE}-beat": ["beat"],
        f"Job/{RELEASE}-migrate": ["migrate"],
        f"Pod/{RELEASE}-test": ["probe"],
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


# Observability ---------------------------------------------------------------------------

OBSERVABILITY_FILES = CHART / "files" / "observability"
MONITORING_KINDS = {
    "ServiceMonitor": "monitoring.coreos.com/v1",
    "PodMonitor": "monitoring.coreos.com/v1",
    "PrometheusRule": "monitoring.coreos.com/v1",
    "ScrapeConfig": "monitoring.coreos.com/v1alpha1",
}


def _containers(docs: list[dict[str, Any]], component: str) -> list[dict[str, Any]]:
    deployment = _named(docs, "Deployment", f"{RELEASE}-{component}")
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    return containers


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) == {"matchLabels"}, selector
    return all(labels.get(k) == v for k, v in selector["matchLabels"].items())


def test_observability_is_off_by_default(tmp_path: Path) -> None:
    docs = _rendered(PRODUCTION, tmp_path)
    assert not [d for d in docs if d["kind"] in ("PodMonitor", "PrometheusRule", "ScrapeConfig")]
    assert [d["metadata"]["name"] for d in _by_kind(docs, "ConfigMap")] == [f"{RELEASE}-config"]
    for component in ("proxy", "worker"):
        container = _containers(docs, component)[0]  # the worker pod: its wake lane is [1]
        assert not any("METRICS" in name for name in _env(container)), component
        assert [p["name"] for p in container.get("ports", [])] == (
            ["http"] if component == "proxy" else []
        )


def test_monitoring_resources_are_well_formed(tmp_path: Path) -> None:
    docs = _rendered(OBSERVABILITY, tmp_path)
    monitoring = [d for d in docs if d["kind"] in MONITORING_KINDS]
    for doc in monitoring:
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        assert doc["apiVersion"] == MONITORING_KINDS[doc["kind"]], where
        assert set(doc) == {"apiVersion", "kind", "metadata", "spec"}, where
        assert len(doc["metadata"]["name"]) <= 63, where
        assert "namespace" not in doc["metadata"], where  # the release's namespace
        # The label the operator's selectors were told to match (kube-prometheus-stack: release).
        assert doc["metadata"]["labels"]["release"] == "kps", where
        assert doc["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE, where
    assert sorted(d["kind"] for d in monitoring) == [
        "PodMonitor",
        "PodMonitor",
        "PrometheusRule",
        "ScrapeConfig",
        "ServiceMonitor",
    ]


def _crd_validated(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    try:
        monitoring_schemas.validator()
    except ToolsUnavailable as exc:
        pytest.skip(f"no prometheus-operator schemas: {exc}")
    return monitoring_schemas.validate(docs)


@pytest.mark.parametrize("name", ["production", "observability"])
def test_monitoring_resources_match_prometheus_operators_schemas(name: str, tmp_path: Path) -> None:
    docs = [
        doc
        for doc in _rendered(VALUE_SETS[name], tmp_path)
        if doc["apiVersion"].split("/")[0] in CUSTOM_API_GROUPS
    ]
    results = _crd_validated(docs)
    assert len(results) == len(docs) >= 1
    assert [r for r in results if r["error"]] == []


def test_the_crd_schemas_refuse_a_wrong_monitoring_object(tmp_path: Path) -> None:
    """The validator bites: a PodMonitor endpoint's port is a name, every rule needs an expr."""
    docs = _rendered(OBSERVABILITY, tmp_path)
    monitor = copy.deepcopy(_by_kind(docs, "PodMonitor")[0])
    monitor["spec"]["podMetricsEndpoints"][0]["port"] = 9100
    rule = copy.deepcopy(_by_kind(docs, "PrometheusRule")[0])
    del rule["spec"]["groups"][0]["rules"][0]["expr"]
    scrape = copy.deepcopy(_by_kind(docs, "ScrapeConfig")[0])
    scrape["spec"]["httpSDConfigs"][0]["refreshInterval"] = "60"
    errors = [r["error"] for r in _crd_validated([monitor, rule, scrape])]
    assert "podMetricsEndpoints/0/port must be string" in errors[0]
    assert "rules/0 must have required property expr" in errors[1]
    assert "httpSDConfigs/0/refreshInterval must match pattern" in errors[2]


def test_prometheus_rule_carries_the_tested_alert_rules(tmp_path: Path) -> None:
    """The rules promtool checks and unit-tests (deploy/observability/alerts.yaml), unchanged."""
    (rule,) = _by_kind(_rendered(OBSERVABILITY, tmp_path), "PrometheusRule")
    alerts = yaml.safe_load((OBSERVABILITY_FILES / "alerts.yaml").read_text())
    assert rule["spec"]["groups"] == alerts["groups"]
    assert set(rule["spec"]) == {"groups"}
    names = set()
    for group in rule["spec"]["groups"]:
        assert group["name"] and group["rules"], group
        for entry in group["rules"]:
            assert entry["alert"] and entry["expr"].strip(), entry
            names.add(entry["alert"])
    assert {"C3TenantHomeserverDown", "C3ProxyHigh5xxRatio", "C3ReconcileStalled"} <= names


def test_dashboards_are_configmaps_for_the_grafana_sidecar(tmp_path: Path) -> None:
    docs = _rendered(OBSERVABILITY, tmp_path)
    shipped = {
        path.name: json.loads(path.read_text())
        for path in (OBSERVABILITY_FILES / "dashboards").glob("*.json")
    }
    assert len(shipped) == 5
    found = {}
    for config_map in _by_kind(docs, "ConfigMap"):
        if config_map["metadata"]["name"] == f"{RELEASE}-config":
            continue
        metadata = config_map["metadata"]
        assert metadata["labels"]["grafana_dashboard"] == "1", metadata
        assert metadata["annotations"] == {"grafana_folder": "C3"}
        assert metadata["name"].startswith(f"{RELEASE}-dashboard-"), metadata
        ((file_name, text),) = config_map["data"].items()
        found[file_name] = json.loads(text)  # valid JSON as Grafana reads it
    assert found == shipped
    # Somewhere else: the namespace the sidecar watches.
    elsewhere = _merged(OBSERVABILITY, {"observability": {"dashboards": {"namespace": "grafana"}}})
    dashboards = [
        cm
        for cm in _by_kind(_rendered(elsewhere, tmp_path), "ConfigMap")
        if "grafana_dashboard" in cm["metadata"]["labels"]
    ]
    assert {cm["metadata"]["namespace"] for cm in dashboards} == {"grafana"}


def test_scraping_opens_the_metrics_listeners_prometheus_scrapes(tmp_path: Path) -> None:
    docs = _rendered(OBSERVABILITY, tmp_path)
    ports = {"proxy": 9100, "worker": 9101}
    monitors = {m["metadata"]["name"]: m["spec"] for m in _by_kind(docs, "PodMonitor")}
    assert set(monitors) == {f"{RELEASE}-proxy", f"{RELEASE}-worker"}
    for component, port in ports.items():
        deployment = _named(docs, "Deployment", f"{RELEASE}-{component}")
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        container = _containers(docs, component)[0]  # the worker pod: its wake lane is [1]
        env = _env(container)
        prefix = f"C3_{component.upper()}_METRICS"
        assert (env[f"{prefix}_HOST"], env[f"{prefix}_PORT"]) == ("0.0.0.0", str(port))
        named = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert named["metrics"] == port
        # Its PodMonitor selects exactly these pods (no other component's) by the port's name.
        monitor = monitors[f"{RELEASE}-{component}"]
        assert _selects(monitor["selector"], pod_labels)
        for other in {"api", "proxy", "worker", "beat"} - {component}:
            other_pod = _named(docs, "Deployment", f"{RELEASE}-{other}")
            assert not _selects(
                monitor["selector"], other_pod["spec"]["template"]["metadata"]["labels"]
            )
        (endpoint,) = monitor["podMetricsEndpoints"]
        assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
        assert {"targetLabel": "job", "replacement": f"c3-{component}"} in endpoint["relabelings"]
    # No other pod opens a listener, and no Service or Ingress reaches one.
    for component in ("api", "beat"):
        container = _containers(docs, component)[0]  # the worker pod: its wake lane is [1]
        assert not any("_METRICS_" in name for name in _env(container)), component
    for service in _by_kind(docs, "Service"):
        assert not {p["port"] for p in service["spec"]["ports"]} & set(ports.values()), service
        assert all(p.get("targetPort") != "metrics" for p in service["spec"]["ports"])


def test_the_services_accept_the_listener_settings_the_chart_gives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The proxy's and the worker's settings as their pods see them (the ConfigMap, then the
    container's env; placeholders for the Secret's keys) load into the real Settings."""
    from platform_core.settings import Settings

    docs = _rendered(OBSERVABILITY, tmp_path)
    secrets = {
        "C3_DATABASE_URL": "postgresql://c3@db.example/c3",
        "C3_REDIS_URL": "redis://redis.example:6379/0",
        "C3_SECRET_KEY": "s" * 32,
        "C3_OPERATOR_TOKEN": "o" * 32,
        "C3_TENANT_DATABASE_URL": "postgresql://admin@db.example/postgres",
    }
    for component, port in (("proxy", 9100), ("worker", 9101)):
        for name in [n for n in os.environ if n.startswith("C3_")]:
            monkeypatch.delenv(name)
        container = _containers(docs, component)[0]  # the worker pod: its wake lane is [1]
        plain = {k: v for k, v in _env(container).items() if isinstance(v, str)}
        for name, value in {**_config(docs), **plain, **secrets}.items():
            monkeypatch.setenv(name, value)
        settings = Settings()
        listener = (
            (settings.proxy_metrics_host, settings.proxy_metrics_port)
            if component == "proxy"
            else (settings.worker_metrics_host, settings.worker_metrics_port)
        )
        assert listener == ("0.0.0.0", port)


def test_network_policies_let_only_prometheus_into_the_metrics_ports(tmp_path: Path) -> None:
    def ingress(values: dict[str, Any], component: str) -> list[dict[str, Any]]:
        docs = _rendered(values, tmp_path)
        rules: list[dict[str, Any]] = _named(docs, "NetworkPolicy", f"{RELEASE}-{component}")[
            "spec"
        ]["ingress"]
        return rules

    namespace = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    }
    proxy_rules = ingress(OBSERVABILITY, "proxy")
    assert proxy_rules[0]["ports"] == [{"port": 8080, "protocol": "TCP"}]
    assert proxy_rules[1] == {
        "ports": [{"port": 9100, "protocol": "TCP"}],
        "from": [{**namespace, "podSelector": PROMETHEUS_POD}],
    }
    assert ingress(OBSERVABILITY, "worker") == [
        {
            "ports": [{"port": 9101, "protocol": "TCP"}],
            "from": [{**namespace, "podSelector": PROMETHEUS_POD}],
        }
    ]
    assert ingress(OBSERVABILITY, "beat") == []
    # The API's own port only (from clients, and from tenant pods for the application service).
    assert {p["port"] for r in ingress(OBSERVABILITY, "api") for p in r["ports"]} == {8000}

    def only(**prometheus: Any) -> dict[str, Any]:
        values = copy.deepcopy(OBSERVABILITY)
        values["observability"].update(prometheusNamespace="", prometheusPodSelector={})
        values["observability"].update(prometheus)
        return values

    assert ingress(only(prometheusNamespace="monitoring"), "worker")[0]["from"] == [namespace]
    # A pod selector alone: those pods in any namespace.
    assert ingress(only(prometheusPodSelector=PROMETHEUS_POD), "worker")[0]["from"] == [
        {"namespaceSelector": {}, "podSelector": PROMETHEUS_POD}
    ]
    # Unauthenticated ports are never opened to everyone by omission.
    done = template(only(), tmp_path)
    assert done.returncode != 0
    assert "needs observability.prometheusNamespace or observability.prometheusPodSelector" in (
        done.stderr
    )
    # Without NetworkPolicies there is nothing to open.
    no_policies = _merged(only(), {"networkPolicy": {"enabled": False}})
    assert not _by_kind(_rendered(no_policies, tmp_path), "NetworkPolicy")


def test_synapse_targets_come_from_the_api_with_the_operators_key(tmp_path: Path) -> None:
    docs = _rendered(OBSERVABILITY, tmp_path)
    (scrape,) = _by_kind(docs, "ScrapeConfig")
    spec = scrape["spec"]
    assert spec["metricsPath"] == "/_synapse/metrics"
    assert {"targetLabel": "job", "replacement": "c3-synapse"} in spec["relabelings"]
    (discovery,) = spec["httpSDConfigs"]
    service = _named(docs, "Service", f"{RELEASE}-api")
    port = service["spec"]["ports"][0]["port"]
    # The API's Service, by its full cluster DNS name (the chart's kubernetes.clusterDomain).
    assert discovery["url"] == (
        f"http://{RELEASE}-api.{NAMESPACE}.svc.cluster.example:{port}/metrics/homeservers"
    )
    # The key the operator put in their Secret, the same one the API's ServiceMonitor shows.
    credentials = {"name": "c3-metrics", "key": "api-key"}
    assert discovery["authorization"] == {"type": "Bearer", "credentials": credentials}
    (monitor,) = _by_kind(docs, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["authorization"]["credentials"] == credentials
    # No key, no scraping: helm names the value to set.
    keyless = copy.deepcopy(OBSERVABILITY)
    keyless["metrics"]["serviceMonitor"] = {"enabled": False}
    done = template(keyless, tmp_path)
    assert done.returncode != 0
    assert "observability.scrape needs metrics.serviceMonitor.bearerTokenSecret.name" in (
        done.stderr
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"observability": {"scrape": {"proxyPort": 8080}}},
            "observability.scrape.proxyPort must differ from 8080",
        ),
        (
            {"extraConfig": {"C3_PROXY_METRICS_PORT": "9100"}},
            "extraConfig.C3_PROXY_METRICS_PORT is set by the chart itself",
        ),
        (
            {"extraConfig": {"C3_WORKER_METRICS_HOST": "0.0.0.0"}},
            "extraConfig.C3_WORKER_METRICS_HOST is set by the chart itself",
        ),
        ({"observability": {"scrape": {"port": 9100}}}, "additional properties 'port' not allowed"),
        ({"observability": {"grafana": {}}}, "additional properties 'grafana' not allowed"),
        ({"observability": {"scrape": {"workerPort": "9101"}}}, "/observability/scrape/workerPort"),
        (
            {"observability": {"dashboards": {"enabled": "yes"}}},
            "/observability/dashboards/enabled",
        ),
        ({"observability": {"scrape": {"interval": "30"}}}, "/observability/scrape/interval"),
        (
            {"observability": {"prometheusNamespace": "Monitoring"}},
            "/observability/prometheusNamespace",
        ),
        (
            {"observability": {"prometheusPodSelector": {"app": "prometheus"}}},
            "additional properties 'app' not allowed",
        ),
    ],
)
def test_observability_values_are_checked(
    extra: dict[str, Any], message: str, tmp_path: Path
) -> None:
    done = template(_merged(OBSERVABILITY, extra), tmp_path)
    assert done.returncode != 0
    assert message in done.stderr, done.stderr


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
