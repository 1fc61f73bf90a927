"""Route classes and the refusal reasons the proxy's metrics use."""

from __future__ import annotations

import pytest

from homeserver_proxy import confinement, errors
from homeserver_proxy.proxy_metrics import REFUSAL_REASONS, ProxyMetrics, RouteClass, route_class


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/_matrix/client/v3/sync", RouteClass.SYNC),
        ("/t/acme/_matrix/client/r0/sync", RouteClass.SYNC),
        ("/_matrix/client/v3/events", RouteClass.SYNC),
        ("/_matrix/client/v3/rooms/!r:acme/send/m.room.message/tx1", RouteClass.SEND),
        ("/_matrix/client/v3/rooms/!r:acme/send/m.room.message/sync", RouteClass.SEND),
        ("/_matrix/media/v3/upload", RouteClass.MEDIA),
        ("/_matrix/client/v1/media/download/acme/abc", RouteClass.MEDIA),
        ("/_matrix/client/v3/login", RouteClass.OTHER),
        ("/_synapse/admin/v1/server_version", RouteClass.OTHER),
    ],
)
def test_route_classes(path: str, expected: RouteClass) -> None:
    assert route_class(path) is expected


def test_every_refusal_has_a_counted_reason() -> None:
    refusals = [
        errors.unknown_tenant_host(),
        errors.unknown_tenant_slug(),
        errors.not_served(),
        errors.does_not_federate(),
        errors.does_not_federate(well_known=True),
        errors.bad_path(),
        errors.tenant_unavailable("suspended"),
        errors.too_large(10),
        errors.rate_limited(100),
        errors.too_many_in_flight(),
        errors.bad_framing("Missing Host header"),
        errors.spool_full(),
        confinement._forbidden("look up other users' profiles"),
    ]
    assert {e.reason for e in refusals} == set(REFUSAL_REASONS)
    assert errors.upstream_unavailable().reason == "upstream_unavailable"
    assert errors.upstream_timeout().reason == "upstream_timeout"


def test_statuses_fall_in_their_class() -> None:
    metrics = ProxyMetrics()
    metrics.answered(RouteClass.SEND, 200, 0.01)
    metrics.answered(RouteClass.SEND, 503, 0.01)
    metrics.answered(RouteClass.OTHER, 421, 0.01)
    value = metrics.registry.get_sample_value
    assert value("c3_proxy_requests_total", {"route": "send", "status": "2xx"}) == 1
    assert value("c3_proxy_requests_total", {"route": "send", "status": "5xx"}) == 1
    assert value("c3_proxy_requests_total", {"route": "other", "status": "4xx"}) == 1
    assert value("c3_proxy_request_duration_seconds_count", {"route": "send"}) == 2
