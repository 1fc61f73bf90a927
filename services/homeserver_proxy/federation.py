"""Federation through the proxy: server discovery for a tenant's ``server_name`` and which
tenants take server-server traffic.

What a remote homeserver does to reach tenant ``acme.c3.example.com`` (Matrix server-server
API, "Resolving server names"), and what the proxy answers:

1. ``GET https://acme.c3.example.com/.well-known/matrix/server`` — always HTTPS on port 443,
   with a certificate valid for the server name. The proxy answers
   ``{"m.server": "acme.c3.example.com:<port>"}``, ``<port>`` being the proxy's public port
   (``C3_PROXY_PUBLIC_URL``; 443 for ``https://`` without a port). Delegating to the server
   name itself with an explicit port means no SRV records and no port 8448 are needed.
2. It connects to ``acme.c3.example.com:<port>`` with TLS (SNI and certificate for that name)
   and sends ``Host: acme.c3.example.com:<port>``: the proxy routes by that Host like any
   client request (``/t/<slug>`` never carries federation; remote servers don't use it).
3. ``/_matrix/key/v2/server`` (the homeserver's signing keys) and ``/_matrix/federation/*``
   are forwarded to the tenant's Synapse, after the same path canonicalisation as client
   paths (``/_synapse/admin`` stays unreachable).

So federation needs, per federating tenant: DNS for the server name (a custom domain too)
pointing at the proxy's load balancer, and TLS for that name on 443 (and on the public port,
if another) — the wildcard certificate covers ``*.<base domain>``; a custom domain needs its
own. With a plain ``http://`` public URL (local runs) the delegation is published, but real
homeservers will not federate without TLS. Outbound federation does not pass the proxy:
Synapse connects to remote servers itself, so its network must allow egress to them.

Who may talk to the tenant is Synapse's call, not the proxy's: an allow-list tenant's
``federation_domain_whitelist`` is enforced by Synapse on authenticated (signed) requests; the
proxy could only read the unauthenticated ``origin`` of the X-Matrix header.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from platform_core.homeserver_settings import FederationMode
from platform_core.routes import Route

# Route.federation values that open the server-server API. Anything else (``off``, or a mode
# this proxy version does not know) keeps it closed.
FEDERATING_MODES = frozenset(m.value for m in FederationMode if m is not FederationMode.OFF)
# Largest server-server request body: what Synapse itself accepts on any listener
# (synapse.api.constants.MAX_REQUEST_SIZE, 200 PDUs of 64 KiB). A transaction carries up to 50
# PDUs and 100 EDUs whatever the tenant's upload limit, so that limit must not cap it.
FEDERATION_MAX_BODY = 200 * 64 * 1024
_DEFAULT_PORTS = {"http": 80, "https": 443}


def federates(route: Route) -> bool:
    return route.federation in FEDERATING_MODES


def public_port(public_url: str) -> int:
    """The port remote servers reach the proxy on: explicit in the URL, else the scheme's."""
    parts = urlsplit(public_url)
    return parts.port or _DEFAULT_PORTS.get(parts.scheme, 443)


def server_delegation(route: Route, port: int) -> dict[str, str]:
    """The body of ``/.well-known/matrix/server`` for a federating tenant."""
    return {"m.server": f"{route.server_name}:{port}"}
