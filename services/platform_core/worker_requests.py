"""Questions the API asks a worker and waits for: what only a worker can see, because only it
holds the backend (a homeserver's log, whether each homeserver answers). In the Kubernetes
chart only the worker's pod may read pods and reach tenant homeservers, so the API asks instead
of looking itself.

The API sends a Celery task (by name, with a reply key and ids) that expires with the wait,
then blocks on the reply key in Redis (``BLPOP``, with the same deadline); the worker runs the
task and pushes one JSON answer there. No worker answering in time is a 503 the client may
retry. Answers carry no secrets: a homeserver's log lines are redacted here, in the one
function both sides name (``redact``).
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import anyio.to_thread
import redis
import redis.asyncio as aioredis

from platform_core.celery import celery_app
from platform_core.errors import TemporaryError
from platform_core.redis import RedisKeys, keys_for
from platform_core.settings import Settings

REPLY_TTL_S = 60  # an answer nobody waits for any more disappears

# Synapse logs request URIs, and clients may put their access token in the query
# (?access_token=…); signing keys and passwords never reach its log, tokens could.
_SECRET_QUERY = re.compile(r"((?:access_token|token|password|secret)=)[^&\s\"']+", re.I)
_BEARER = re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]+")
REDACTED = "<redacted>"


def redact(line: str) -> str:
    """``line`` without the credentials a homeserver log line may carry: the values of
    ``access_token=`` (and token, password, secret) query parameters and bearer tokens."""
    return _BEARER.sub(rf"\g<1>{REDACTED}", _SECRET_QUERY.sub(rf"\g<1>{REDACTED}", line))


async def ask(settings: Settings, task_name: str, *args: object, wait_s: float) -> Any:
    """Send ``task_name(reply_key, *args)`` to a worker and return its JSON answer; raises
    ``TemporaryError`` (503) when no worker answers within ``wait_s`` seconds."""
    key = keys_for(settings).worker_reply(uuid.uuid4().hex)

    def send() -> None:
        # expires: a worker that only gets to it after the wait has ended skips it.
        celery_app().send_task(task_name, args=[key, *args], expires=wait_s)

    client = aioredis.Redis.from_url(settings.require_redis_url())
    try:
        await anyio.to_thread.run_sync(send)
        found = await client.blpop([key], timeout=wait_s)
    except (aioredis.RedisError, OSError) as exc:
        raise TemporaryError(
            f"cannot ask a worker: Redis is not reachable ({type(exc).__name__})", retry_after=5
        ) from exc
    finally:
        await client.aclose()
    if found is None:
        raise TemporaryError(
            f"no worker answered within {wait_s:g} s (are workers running and not all busy?)",
            retry_after=5,
        )
    return json.loads(found[1])


def answer(client: redis.Redis, keys: RedisKeys, reply_key: str, payload: Any) -> None:
    """The worker's side: push ``payload`` (JSON) to ``reply_key``, which must be a reply key
    of this platform's namespace (a task message names it; nothing else is written)."""
    if not reply_key.startswith(keys.worker_reply("")):
        raise ValueError(f"not a reply key of this platform: {reply_key[:80]!r}")
    pipe = client.pipeline()
    pipe.rpush(reply_key, json.dumps(payload))
    pipe.expire(reply_key, REPLY_TTL_S)
    pipe.execute()
