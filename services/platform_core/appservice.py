"""The platform's application service on every tenant homeserver: who it is, which users it
owns, and its registration as Synapse reads it (``app_service_config_files``).

The provisioner renders the registration; the tenant API acts through it (the service user
creates context rooms, external participants are registered in its exclusive namespace) and
receives its transaction push (``tenant_api.contexts.appservice``).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

APPSERVICE_ID = "c3-contexts"
# The platform-owned user that creates and runs context rooms (@c3-context:<server_name>).
SERVICE_LOCALPART = "c3-context"
# External participants: room-only accounts @c3x-<random>:<server_name>, owned exclusively by
# the application service (nobody can register one another way) and confined by the
# C3 Synapse module (c3_synapse.confinement).
EXTERNAL_LOCALPART_PREFIX = "c3x-"
# The room state event that tags a context room with the tenant's reference.
CONTEXT_STATE_TYPE = "io.c3.context"
# The confinement module Synapse loads (services/c3_synapse, shipped in the C3 wheel).
CONFINEMENT_MODULE = "c3_synapse.confinement.ContextConfinement"


def service_user_id(server_name: str) -> str:
    return f"@{SERVICE_LOCALPART}:{server_name}"


def external_user_regex(server_name: str) -> str:
    return f"@{re.escape(EXTERNAL_LOCALPART_PREFIX)}.*:{re.escape(server_name)}"


def is_external_user(user_id: str, server_name: str) -> bool:
    return re.fullmatch(external_user_regex(server_name), user_id) is not None


def token_digest(access_token: str) -> str:
    """How the platform names an external participant's credential in Redis (never in clear;
    a random 256-bit token needs no key to stay unguessable from its hash)."""
    return hashlib.sha256(access_token.encode()).hexdigest()


def receiver_url(base_url: str, tenant_id: str) -> str:
    """Where the homeserver pushes transactions (Synapse appends /_matrix/app/v1/…)."""
    return f"{base_url.rstrip('/')}/_c3/appservice/{tenant_id}"


def registration(*, server_name: str, url: str, as_token: str, hs_token: str) -> dict[str, Any]:
    return {
        "id": APPSERVICE_ID,
        "url": url,
        "as_token": as_token,
        "hs_token": hs_token,
        "sender_localpart": SERVICE_LOCALPART,
        "namespaces": {
            "users": [{"exclusive": True, "regex": external_user_regex(server_name)}],
            "aliases": [],
            "rooms": [],
        },
        # The platform creates rooms and accounts in bursts (a back office opening many cases).
        "rate_limited": False,
    }


def confinement_module(server_name: str) -> dict[str, Any]:
    """The ``modules:`` entry that confines external participants to their context room."""
    return {
        "module": CONFINEMENT_MODULE,
        "config": {
            "external_user_regex": external_user_regex(server_name),
            "service_user_id": service_user_id(server_name),
            "context_state_type": CONTEXT_STATE_TYPE,
        },
    }
