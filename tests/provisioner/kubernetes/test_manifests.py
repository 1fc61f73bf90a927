"""Every object the kubernetes backend applies validates, offline and strictly (no unknown
field), against the Kubernetes schemas of the oldest and newest versions the chart claims
(Chart.yaml kubeVersion), for a matrix of plans and tenant settings; and says what it must."""

from __future__ import annotations

import base64
import itertools
import re
from pathlib import Path
from typing import Any

import c3_synapse
import kubernetes_validate
import pytest
import yaml
from synapse.config.homeserver import HomeServerConfig

from provisioner.backends import kubernetes_manifests as manifests
from tests.provisioner.kubernetes.helpers import (
    APPSERVICE_URL,
    LARGE,
    OIDC,
    SECRETS,
    SETTING_SECRETS,
    SMALL,
    TURN,
    kube_settings,
    tenant_target,
)

CHART = Path(__file__).resolve().parents[3] / "deploy" / "helm" / "c3" / "Chart.yaml"


def claimed_versions() -> tuple[str, str]:
    """The oldest version the chart claims (kubeVersion ">=1.25.0-0") and the newest whose
    schemas kubernetes-validate ships."""
    claim = yaml.safe_load(CHART.read_text())["kubeVersion"]
    match = re.fullmatch(r">=\s*(\d+)\.(\d+)\.\d+(-0)?", claim.strip())
    assert match, f"unexpected kubeVersion {claim!r}"
    return f"{match[1]}.{match[2]}.0", kubernetes_validate.latest_version()


OLDEST, NEWEST = claimed_versions()

MATRIX = list(
    itertools.product(
        [("small", SMALL), ("large", LARGE)],
        [("federation-off", {}), ("federation-open", {"federation": {"mode": "open"}})],
        [("oidc-off", {}), ("oidc-on", {"oidc": OIDC})],
        [("turn-unset", {}), ("turn-set", {"turn": TURN})],
        [("running", 1), ("suspended", 0)],
    )
)


def case_id(case: tuple[tuple[str, Any], ...]) -> str:
    return "-".join(name for name, _ in case)


@pytest.mark.parametrize("case", MATRIX, ids=[case_id(c) for c in MATRIX])
def test_every_object_validates_strictly_on_the_oldest_and_newest_claimed_version(
    case: tuple[tuple[str, Any], ...],
) -> None:
    (_, limits), (_, federation), (_, oidc), (_, turn), (_, replicas) = case
    target = tenant_target(limits=limits, settings={**federation, **oidc, **turn})
    built = manifests.build(kube_settings(), target, replicas=replicas)
    objects = built.in_order()
    assert [o.kind for o in objects] == [
        "Namespace", "ResourceQuota", "LimitRange", "NetworkPolicy",
        "Secret", "ConfigMap", "Service", "StatefulSet",
    ]  # fmt: skip
    for obj in objects:
        for version in (OLDEST, NEWEST):
            kubernetes_validate.validate(obj.to_dict(), version, strict=True)
    assert built.stateful_set.spec is not None and built.stateful_set.spec.replicas == replicas


def test_the_strict_check_does_refuse_an_unknown_field() -> None:
    """Guard against a validator that passes anything: a misspelt field fails."""
    service = manifests.build(kube_settings(), tenant_target()).service.to_dict()
    service["spec"]["clusterIp"] = "None"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(service, NEWEST, strict=True)


def test_objects_are_labelled_and_named_per_tenant() -> None:
    target = tenant_target(plan_code="Enterprise Plus!")
    built = manifests.build(kube_settings(kubernetes_release="prod"), target)
    namespace = f"c3-t-{target.tenant_id}"
    for obj in built.in_order():
        assert obj.metadata is not None and obj.metadata.labels is not None
        assert obj.metadata.labels["app.kubernetes.io/managed-by"] == "c3"
        assert obj.metadata.labels["c3.io/tenant"] == target.tenant_id
        assert obj.metadata.labels["c3.io/plan"] == "Enterprise-Plus"
        assert obj.metadata.labels["c3.io/release"] == "prod"
        if obj.kind != "Namespace":
            assert obj.metadata.namespace == namespace
    assert built.namespace.metadata is not None and built.namespace.metadata.name == namespace


def files(built: manifests.TenantManifests) -> tuple[dict[str, str], dict[str, str]]:
    secret = {k: base64.b64decode(v).decode() for k, v in (built.secret.data or {}).items()}
    return dict(built.config_map.data or {}), secret


def test_no_secret_is_in_the_config_map_and_synapse_reads_both_files(tmp_path: Path) -> None:
    target = tenant_target(settings={"oidc": OIDC, "turn": TURN, "federation": {"mode": "open"}})
    built = manifests.build(kube_settings(), target)
    config, secret = files(built)
    everything_secret = [
        SECRETS.registration_shared_secret,
        SECRETS.macaroon_secret_key,
        SECRETS.form_secret,
        SECRETS.database_password,
        SECRETS.signing_key.split()[-1],
        SECRETS.appservice_as_token,
        SECRETS.appservice_hs_token,
        *SETTING_SECRETS.values(),
    ]
    for text in config.values():
        for value in everything_secret:
            assert value not in text
    assert set(secret) == {
        "signing.key",
        "registration_shared_secret",
        "macaroon_secret_key",
        "form_secret",
        "turn_shared_secret",
        "oidc_client_secret",
        "database_password",
        "appservice-c3.yaml",
    }

    # Paths only under the pod's three mounts.
    homeserver = yaml.safe_load(config["homeserver.yaml"])
    for key in ("pid_file", "log_config", "media_store_path", "signing_key_path"):
        assert homeserver[key].split("/")[1] in ("config", "secrets", "data"), key
    assert homeserver["app_service_config_files"] == ["/secrets/appservice-c3.yaml"]
    client, metrics = homeserver["listeners"]
    assert client["port"] == 8008 and client["bind_addresses"] == ["0.0.0.0"]
    assert (metrics["type"], metrics["port"], metrics["bind_addresses"]) == (
        "metrics",
        9000,
        ["0.0.0.0"],
    )

    # Synapse's own loader, with the container's arguments (mount paths rewritten to tmp).
    for mount, contents in (("config", config), ("secrets", secret)):
        (tmp_path / mount).mkdir()
        for name, text in contents.items():
            for prefix in ("/config/", "/secrets/", "/data/"):
                text = text.replace(prefix, f"{tmp_path}{prefix}")
            (tmp_path / mount / name).write_text(text)
    (tmp_path / "data").mkdir()
    container = built.stateful_set.spec.template.spec.containers[0]  # type: ignore[union-attr]
    assert container.args == ["--config-path", "/config/homeserver.yaml"]
    password = next(e for e in container.env or [] if e.name == "PGPASSWORD")
    assert password.valueFrom is not None
    assert password.valueFrom.secretKeyRef is not None
    assert password.valueFrom.secretKeyRef.key == "database_password"
    loaded = HomeServerConfig.load_config(
        "c3", ["--config-path", str(tmp_path / "config" / "homeserver.yaml")]
    )
    assert loaded.registration.registration_shared_secret == SECRETS.registration_shared_secret
    assert loaded.key.macaroon_secret_key == SECRETS.macaroon_secret_key.encode()
    assert loaded.key.form_secret == SECRETS.form_secret
    [provider] = loaded.oidc.oidc_providers
    assert provider.client_secret == SETTING_SECRETS["oidc_client_secret"]
    assert loaded.voip.turn_shared_secret == SETTING_SECRETS["turn_shared_secret"]
    assert "password" not in loaded.database.databases[0].config["args"]
    assert loaded.appservice.app_service_config_files == [
        str(tmp_path / "secrets" / "appservice-c3.yaml")
    ]
    registration = yaml.safe_load(secret["appservice-c3.yaml"])
    assert registration["url"] == APPSERVICE_URL
    assert registration["as_token"] == SECRETS.appservice_as_token
    assert registration["hs_token"] == SECRETS.appservice_hs_token
    assert loaded.metrics.enable_metrics is True


def test_the_confinement_module_reaches_a_stock_image_through_the_config_map() -> None:
    """No custom image: the module's source files are keys of the ConfigMap, projected to
    /modules/c3_synapse/ (read-only), and the container's PYTHONPATH is /modules."""
    built = manifests.build(kube_settings(), tenant_target())
    config, _ = files(built)
    package = Path(c3_synapse.__file__).parent
    pod = built.stateful_set.spec.template.spec  # type: ignore[union-attr]
    assert pod is not None
    [container] = pod.containers
    env = {e.name: e.value for e in container.env or []}
    assert env["PYTHONPATH"] == "/modules"
    [mount] = [m for m in container.volumeMounts or [] if m.mountPath == "/modules"]
    assert mount.readOnly is True
    [volume] = [v for v in pod.volumes or [] if v.name == mount.name]
    assert volume.configMap is not None and volume.configMap.name == "synapse-config"
    projected = {i.path: config[i.key] for i in volume.configMap.items or []}
    assert projected == {
        "c3_synapse/__init__.py": (package / "__init__.py").read_text(),
        "c3_synapse/confinement.py": (package / "confinement.py").read_text(),
    }
    homeserver = yaml.safe_load(config["homeserver.yaml"])
    [module] = homeserver["modules"]
    assert module["module"].startswith("c3_synapse.confinement.")


def test_metrics_are_a_named_port_of_the_pod_and_the_service() -> None:
    for settings, port in (
        (kube_settings(), 9000),
        (kube_settings(synapse_metrics_port=9100), 9100),
    ):
        built = manifests.build(settings, tenant_target())
        [container] = built.stateful_set.spec.template.spec.containers  # type: ignore[union-attr]
        ports = {p.name: p.containerPort for p in container.ports or []}
        assert ports == {"client": 8008, "metrics": port}
        assert built.service.spec is not None
        service = {p.name: (p.port, p.targetPort) for p in built.service.spec.ports or []}
        assert service == {"client": (8008, "client"), "metrics": (port, "metrics")}
        homeserver = yaml.safe_load(files(built)[0]["homeserver.yaml"])
        assert homeserver["enable_metrics"] is True
        assert [listener["port"] for listener in homeserver["listeners"]] == [8008, port]


def test_the_pod_is_pinned_hardened_probed_and_sized_from_the_plan() -> None:
    built = manifests.build(kube_settings(), tenant_target(limits=SMALL))
    spec = built.stateful_set.spec
    assert spec is not None and spec.template.spec is not None
    pod = spec.template.spec
    [container] = pod.containers
    assert container.name == "synapse"
    assert container.image == "ghcr.io/element-hq/synapse:v1.163.2"
    assert pod.securityContext is not None and pod.securityContext.runAsNonRoot is True
    assert container.securityContext is not None
    assert container.securityContext.readOnlyRootFilesystem is True
    assert container.securityContext.allowPrivilegeEscalation is False
    for probe in (container.startupProbe, container.readinessProbe, container.livenessProbe):
        assert probe is not None and probe.httpGet is not None
        assert (probe.httpGet.path, probe.httpGet.port) == ("/health", "client")
    assert container.resources is not None
    assert container.resources.limits == {"cpu": "250m", "memory": "512Mi"}
    mounts = {m.mountPath: m.name for m in container.volumeMounts or []}
    assert mounts == {
        "/config": "config",
        "/secrets": "secrets",
        "/modules": "modules",
        "/data": "data",
        "/tmp": "tmp",
    }
    [claim] = spec.volumeClaimTemplates or []
    assert claim.spec is not None and claim.spec.resources is not None
    assert claim.spec.resources.requests == {"storage": "1Gi"}
    quota = built.resource_quota.spec
    assert quota is not None and quota.hard is not None and quota.hard["requests.storage"] == "1Gi"


def test_synapse_runs_with_the_images_jemalloc_when_turned_on() -> None:
    """Synapse's image ships Debian's libjemalloc2 but only its start.py (which we bypass)
    preloads it; the dynamic linker expands $LIB to the node's multiarch directory."""

    def env_of(**overrides: Any) -> dict[str, str]:
        built = manifests.build(kube_settings(**overrides), tenant_target(limits=SMALL))
        assert built.stateful_set.spec is not None
        [container] = built.stateful_set.spec.template.spec.containers  # type: ignore[union-attr]
        return {e.name: e.value for e in container.env or [] if e.value is not None}

    assert "LD_PRELOAD" not in env_of()  # measured smaller without: off by default
    on = env_of(synapse_jemalloc=True)
    assert on["LD_PRELOAD"] == "/usr/$LIB/libjemalloc.so.2"
    assert on["MALLOC_CONF"].startswith("narenas:1,")


def platform_pods(namespace: str, release: str, components: list[str]) -> dict[str, Any]:
    return {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
        "podSelector": {
            "matchLabels": {"app.kubernetes.io/instance": release},
            "matchExpressions": [
                {"key": "app.kubernetes.io/component", "operator": "In", "values": components}
            ],
        },
    }


def namespace_peer(namespace: str) -> dict[str, Any]:
    return {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}}


def test_network_policy_lets_in_only_the_platform_and_out_only_dns_the_api_and_the_database() -> (
    None
):
    settings = kube_settings(
        kubernetes_platform_namespace="c3-prod", kubernetes_release="prod", api_port=8000
    )
    policy = manifests.build(settings, tenant_target()).network_policy.to_dict()["spec"]
    assert policy["podSelector"] == {} and policy["policyTypes"] == ["Ingress", "Egress"]
    # The client port from the proxy, the worker and the API (Synapse's admin API); the
    # metrics port from the platform's namespace (its Prometheus).
    assert [(rule["from"], rule["ports"]) for rule in policy["ingress"]] == [
        (
            [platform_pods("c3-prod", "prod", ["api", "proxy", "worker"])],
            [{"port": 8008, "protocol": "TCP"}],
        ),
        ([namespace_peer("c3-prod")], [{"port": 9000, "protocol": "TCP"}]),
    ]
    destinations = [(rule["to"], rule["ports"]) for rule in policy["egress"]]
    assert destinations == [
        (
            [namespace_peer("kube-system")],
            [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}],
        ),
        # The application service's transactions, to the API pods' port.
        ([platform_pods("c3-prod", "prod", ["api"])], [{"port": 8000, "protocol": "TCP"}]),
        ([{"ipBlock": {"cidr": "10.0.0.5/32"}}], [{"port": 5432, "protocol": "TCP"}]),
    ]
    # A Prometheus in a namespace of its own scrapes the metrics port too, nothing else.
    monitored = manifests.build(
        kube_settings(kubernetes_monitoring_namespace="monitoring"), tenant_target()
    )
    metrics_rule = monitored.network_policy.to_dict()["spec"]["ingress"][1]
    assert metrics_rule["from"] == [namespace_peer("c3"), namespace_peer("monitoring")]
    assert metrics_rule["ports"] == [{"port": 9000, "protocol": "TCP"}]
    # A federating tenant also reaches public addresses, never internal ones.
    federating = manifests.build(settings, tenant_target(settings={"federation": {"mode": "open"}}))
    public = federating.network_policy.to_dict()["spec"]["egress"][-1]
    assert public["to"][0]["ipBlock"]["cidr"] == "0.0.0.0/0"
    assert "10.0.0.0/8" in public["to"][0]["ipBlock"]["except"]


def test_config_hash_follows_the_config() -> None:
    target = tenant_target()
    same = manifests.build(kube_settings(), target)
    again = manifests.build(kube_settings(), target)
    other = manifests.build(
        kube_settings(), tenant_target(tenant_id=target.tenant_id, limits=LARGE)
    )

    def digest(built: manifests.TenantManifests) -> str:
        meta = built.stateful_set.spec.template.metadata  # type: ignore[union-attr]
        assert meta is not None and meta.annotations is not None
        return meta.annotations[manifests.CONFIG_HASH_ANNOTATION]

    assert digest(same) == digest(again) != digest(other)
