"""Every tenant's Synapse serves its own metrics on a listener of its own, which only the
platform reaches: loopback next to the client port (local backend), or a fixed pod port
(C3_SYNAPSE_METRICS_PORT); the scrape targets the platform publishes follow the same rule."""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path

from synapse.config.homeserver import HomeServerConfig

from platform_core.metrics import homeserver_targets, synapse_metrics_address
from platform_core.routes import Route
from platform_core.settings import Settings
from provisioner.backends.local import LocalBackend
from provisioner.synapse_config import (
    HomeserverSecrets,
    HomeserverSpec,
    render_homeserver_config,
    write_homeserver_files,
)


def spec(tmp_path: Path) -> HomeserverSpec:
    return HomeserverSpec(
        server_name="acme.c3.test",
        public_baseurl="https://acme.c3.test/",
        port=41234,
        metrics_port=41235,
        bind_address="127.0.0.1",
        data_dir=tmp_path / "hs",
        limits={},
    )


def test_metrics_get_a_listener_of_their_own(tmp_path: Path) -> None:
    config = render_homeserver_config(spec(tmp_path), HomeserverSecrets.generate())
    client, metrics = config["listeners"]
    assert client["port"] == 41234 and "metrics" not in str(client["resources"])
    assert metrics == {
        "port": 41235,
        "bind_addresses": ["127.0.0.1"],
        "type": "metrics",
        "tls": False,
    }
    assert config["enable_metrics"] is True
    off = render_homeserver_config(
        dataclasses.replace(spec(tmp_path), metrics_port=None), HomeserverSecrets.generate()
    )
    assert off["enable_metrics"] is False and len(off["listeners"]) == 1


def test_synapse_itself_accepts_the_metrics_listener(tmp_path: Path) -> None:
    write_homeserver_files(spec(tmp_path), HomeserverSecrets.generate())
    loaded = HomeServerConfig.load_config("c3", ["-c", str(tmp_path / "hs" / "homeserver.yaml")])
    assert loaded.metrics.enable_metrics is True
    assert [(lc.type, lc.port) for lc in loaded.server.listeners] == [
        ("http", 41234),
        ("metrics", 41235),
    ]


def test_the_local_backend_allocates_free_port_pairs(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path)
    port = backend.allocate_port(set())
    assert backend.port_is_free(port)
    with socket.socket() as sock:  # someone takes the metrics port: the pair is not free
        sock.bind(("127.0.0.1", port + 1))
        sock.listen()
        assert not backend.port_is_free(port)
    # Never next to another homeserver's pair.
    for _ in range(20):
        other = backend.allocate_port({port})
        assert other not in (port - 1, port, port + 1)


def route(slug: str, upstream: str, status: str = "active") -> Route:
    return Route(
        tenant_id=f"id-{slug}",
        slug=slug,
        server_name=f"{slug}.c3.test",
        upstream=upstream,
        status=status,
        max_upload_bytes=1,
    )


def test_scrape_targets_follow_the_same_rule() -> None:
    assert synapse_metrics_address("http://127.0.0.1:41234", None) == "127.0.0.1:41235"
    assert (
        synapse_metrics_address("http://synapse.c3-t-1.svc.cluster.local:8008", 9000)
        == "synapse.c3-t-1.svc.cluster.local:9000"
    )
    acme = route("acme", "http://127.0.0.1:41234")
    # Each route is published under its host and its slug: one target per tenant; a
    # suspended tenant's stopped homeserver is no target (it is not down).
    groups = homeserver_targets(
        [acme, acme, route("sleepy", "http://127.0.0.1:5000", "suspended")], None
    )
    assert groups == [
        {
            "targets": ["127.0.0.1:41235"],
            "labels": {"tenant": "acme", "tenant_id": "id-acme", "server_name": "acme.c3.test"},
        }
    ]


def test_discovery_port_is_the_kubernetes_pods_metrics_port() -> None:
    """GET /metrics/homeservers targets <Service>:9000 on the kubernetes backend (the pod's
    and the Service's ``metrics`` port), C3_SYNAPSE_METRICS_PORT when set, else client + 1."""
    kube = Settings(backend="kubernetes")
    assert kube.homeserver_metrics_port == 9000
    assert Settings(backend="kubernetes", synapse_metrics_port=9100).homeserver_metrics_port == 9100
    assert Settings(backend="local").homeserver_metrics_port is None
    [group] = homeserver_targets(
        [route("acme", "http://synapse.c3-t-1.svc.cluster.local:8008")],
        kube.homeserver_metrics_port,
    )
    assert group["targets"] == ["synapse.c3-t-1.svc.cluster.local:9000"]
