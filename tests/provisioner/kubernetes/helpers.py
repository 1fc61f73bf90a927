"""What the kubernetes backend tests share: a tenant's target and the backend's settings."""

from __future__ import annotations

import uuid
from typing import Any

from platform_core.settings import Settings
from provisioner.backends.base import HomeserverTarget
from provisioner.synapse_config import HomeserverSecrets

SECRETS = HomeserverSecrets.generate()
SETTING_SECRETS = {
    "turn_shared_secret": "turn-static-auth-secret-value",
    "oidc_client_secret": "oidc-client-secret-value",
}
OIDC = {
    "issuer": "https://login.acme.example/realms/staff",
    "client_id": "c3-acme",
    "display_name": "Acme SSO",
    "scopes": ["openid", "profile"],
}
# Where a pod pushes the application service's transactions: the API's in-cluster Service.
APPSERVICE_URL = "http://c3-api.c3.svc.cluster.local:80"
TURN = {"uris": ["turn:turn.acme.example:3478?transport=udp"], "user_lifetime_s": 3600}
SMALL = {
    "homeserver_cpu_millicores": 250,
    "homeserver_memory_mib": 512,
    "homeserver_storage_gib": 1,
}
LARGE = {
    "homeserver_cpu_millicores": 8000,
    "homeserver_memory_mib": 16384,
    "homeserver_storage_gib": 500,
    "max_mau": 5000,
    "max_upload_size_bytes": 100 * 1024 * 1024,
}


def kube_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "tenant_database_url": "postgresql://c3admin:pw@10.0.0.5:5432/postgres",
        "kubernetes_database_cidr": "10.0.0.5/32",
        "backend": "kubernetes",
        **overrides,
    }
    return Settings(**values)


def tenant_target(
    *,
    tenant_id: str | None = None,
    limits: dict[str, Any] | None = None,
    settings: dict[str, Any] | None = None,
    server_name: str = "acme.c3.example",
    plan_code: str = "pro",
    appservice_url: str | None = APPSERVICE_URL,
) -> HomeserverTarget:
    tenant_id = tenant_id or str(uuid.uuid4())
    name = "t_" + tenant_id.replace("-", "")[:20]
    return HomeserverTarget(
        tenant_id=tenant_id,
        server_name=server_name,
        public_baseurl=f"https://{server_name}/",
        port=None,
        limits=dict(limits or {}),
        secrets=SECRETS,
        settings=dict(settings or {}),
        setting_secrets=dict(SETTING_SECRETS),
        database={
            "name": "psycopg2",
            "args": {
                "host": "10.0.0.5",
                "port": 5432,
                "user": name,
                "dbname": name,
                "password": SECRETS.database_password,
            },
        },
        plan_code=plan_code,
        appservice_url=appservice_url,
    )
