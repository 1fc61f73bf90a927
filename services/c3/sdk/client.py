"""``Client`` (sync) and ``AsyncClient`` (asyncio): the same resources, the same calls
(``_calls``), the same retry policy and errors (``_core``); only the I/O differs.

    with Client("http://127.0.0.1:8000", token) as c3:
        accepted = c3.tenants.create("acme", "Acme Corp")
        c3.wait_for_operation(accepted.operation.id, timeout=120)
        for tenant in c3.tenants.iter():
            print(tenant.slug, tenant.status)
"""

from __future__ import annotations

import asyncio
import builtins
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import datetime
from typing import Any, TypeVar

import httpx

from c3.sdk import _calls as calls
from c3.sdk._calls import Id, Page
from c3.sdk._core import Call, Config, RetryPolicy, read, retry_after_of, wants_retry
from c3.sdk.errors import OperationFailed, TransportError, WaitTimeout
from c3.sdk.models import (
    ApiKey,
    ApiKeyCreated,
    Context,
    HomeserverLogs,
    Operation,
    Plan,
    PlatformStatus,
    Tenant,
    TenantAccepted,
    Usage,
)

T = TypeVar("T")
M = TypeVar("M")
ProgressCallback = Callable[[Operation], None]

POLL_INITIAL_S = 0.25
POLL_MAX_S = 2.0


def _next_poll(interval: float) -> float:
    return min(POLL_MAX_S, interval * 1.5)


def _check_finished(operation: Operation) -> Operation | None:
    if operation.state == "failed":
        raise OperationFailed(operation)
    return operation if operation.state == "succeeded" else None


def _http_options(config: Config, timeout: float) -> dict[str, Any]:
    """What both clients give their ``httpx`` client besides the transport."""
    return {
        "base_url": config.base_url,
        "headers": {"Authorization": f"Bearer {config.token}", "User-Agent": config.user_agent},
        "timeout": timeout,
    }


def _request_args(call: Call[Any]) -> dict[str, Any]:
    """What ``httpx`` needs to send ``call`` (both clients' ``request``)."""
    return {
        "method": call.method,
        "url": call.path,
        "params": call.params,
        "json": call.json,
        "headers": call.request_headers(),
    }


def _delay_after_lost_connection(
    config: Config, call: Call[Any], attempt: int, exc: httpx.TransportError
) -> float:
    """How long to wait before sending ``call`` again after a lost connection; raises
    ``TransportError`` when the call may not be repeated or the policy gives up."""
    delay = config.retry.delay(attempt, None) if call.repeatable else None
    if delay is None:
        raise TransportError(f"{call.method} {call.path}: {exc!r}") from exc
    return delay


def _delay_after_response(config: Config, attempt: int, response: httpx.Response) -> float | None:
    """How long to wait before sending again after a 429/503, or ``None``: read the answer."""
    if not wants_retry(response):
        return None
    return config.retry.delay(attempt, retry_after_of(response))


class _Poll:
    """``wait_for_operation``'s schedule, I/O-free: after each read of the operation, the
    seconds to sleep, or ``None`` once it succeeded; raises when it failed or time is up."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.interval = POLL_INITIAL_S

    def after(self, operation: Operation) -> float | None:
        if _check_finished(operation) is not None:
            return None
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise WaitTimeout(operation, self.timeout)
        delay = min(self.interval, left)
        self.interval = _next_poll(self.interval)
        return delay


# Sync ---------------------------------------------------------------------------------


class Client:
    """The C3 tenant API, synchronously. ``base_url`` and ``token`` default to
    ``C3_API_URL`` and ``C3_API_TOKEN``; ``transport`` is httpx's (tests, proxies)."""

    def __init__(
        self,
        base_url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.config = Config.resolve(base_url, token, timeout=timeout, retry=retry)
        self._http = httpx.Client(**_http_options(self.config, timeout), transport=transport)
        self.tenants = Tenants(self)
        self.operations = Operations(self)
        self.keys = Keys(self)
        self.plans = Plans(self)
        self.contexts = Contexts(self)
        self.sleep: Callable[[float], None] = time.sleep

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def run(self, call: Call[T]) -> T:
        """Send ``call``, retrying 429/503 (and lost connections) as the policy allows."""
        args = _request_args(call)
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self._http.request(**args)
            except httpx.TransportError as exc:
                self.sleep(_delay_after_lost_connection(self.config, call, attempt, exc))
                continue
            delay = _delay_after_response(self.config, attempt, response)
            if delay is None:
                return read(call, response)
            self.sleep(delay)

    def paginate(self, page: Callable[[str | None], Call[Page[M]]]) -> Iterator[M]:
        cursor: str | None = None
        while True:
            found = self.run(page(cursor))
            yield from found.items
            if found.next_cursor is None:
                return
            cursor = found.next_cursor

    def status(self) -> PlatformStatus:
        """Every platform component up or down (operators)."""
        return self.run(calls.status_get())

    def wait_for_operation(
        self,
        operation_id: Id,
        timeout: float = 300.0,
        *,
        on_progress: ProgressCallback | None = None,
    ) -> Operation:
        """Poll the operation until it succeeds (returned), fails (``OperationFailed``) or
        ``timeout`` seconds pass (``WaitTimeout``). ``on_progress`` sees every state read."""
        poll = _Poll(timeout)
        while True:
            operation = self.operations.get(operation_id)
            if on_progress is not None:
                on_progress(operation)
            delay = poll.after(operation)
            if delay is None:
                return operation
            self.sleep(delay)


class _Resource:
    def __init__(self, client: Client) -> None:
        self._client = client


class Tenants(_Resource):
    def list(self, *, limit: int = 50, cursor: str | None = None) -> Page[Tenant]:
        """One page; ``iter()`` walks them all."""
        return self._client.run(calls.tenants_page(limit, cursor))

    def iter(self, *, page_size: int = 50) -> Iterator[Tenant]:
        return self._client.paginate(lambda cursor: calls.tenants_page(page_size, cursor))

    def create(
        self,
        slug: str,
        display_name: str,
        *,
        plan: str | None = None,
        server_name: str | None = None,
        idempotency_key: str | None = None,
    ) -> TenantAccepted:
        return self._client.run(
            calls.tenants_create(slug, display_name, plan, server_name, idempotency_key)
        )

    def get(self, tenant_id: Id) -> Tenant:
        return self._client.run(calls.tenants_get(tenant_id))

    def update(self, tenant_id: Id, **changes: Any) -> Tenant:
        return self._client.run(calls.tenants_update(tenant_id, changes))

    def suspend(self, tenant_id: Id, *, idempotency_key: str | None = None) -> TenantAccepted:
        return self._client.run(calls.tenants_change(tenant_id, "suspend", idempotency_key))

    def resume(self, tenant_id: Id, *, idempotency_key: str | None = None) -> TenantAccepted:
        return self._client.run(calls.tenants_change(tenant_id, "resume", idempotency_key))

    def delete(self, tenant_id: Id, *, purge: bool = False) -> TenantAccepted:
        return self._client.run(calls.tenants_delete(tenant_id, purge))

    def logs(self, tenant_id: Id, *, lines: int = 100) -> HomeserverLogs:
        """The homeserver's last log lines, credentials redacted (operators)."""
        return self._client.run(calls.tenants_logs(tenant_id, lines))

    def usage(
        self,
        tenant_id: Id,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        granularity: str | None = None,
    ) -> Usage:
        return self._client.run(calls.usage_get(tenant_id, start, end, granularity))


class Operations(_Resource):
    def get(self, operation_id: Id) -> Operation:
        return self._client.run(calls.operations_get(operation_id))

    def retry(self, operation_id: Id, *, idempotency_key: str | None = None) -> Operation:
        return self._client.run(calls.operations_retry(operation_id, idempotency_key))

    def wait(
        self,
        operation_id: Id,
        timeout: float = 300.0,
        *,
        on_progress: ProgressCallback | None = None,
    ) -> Operation:
        return self._client.wait_for_operation(operation_id, timeout, on_progress=on_progress)


class Keys(_Resource):
    def create(
        self,
        name: str,
        scopes: list[str],
        *,
        tenant_id: Id | None = None,
        idempotency_key: str | None = None,
    ) -> ApiKeyCreated:
        return self._client.run(calls.keys_create(name, scopes, tenant_id, idempotency_key))

    def list(self) -> builtins.list[ApiKey]:
        return self._client.run(calls.keys_list())

    def revoke(self, key_id: str) -> ApiKey:
        return self._client.run(calls.keys_revoke(key_id))


class Plans(_Resource):
    def list(self) -> builtins.list[Plan]:
        return self._client.run(calls.plans_list())

    def get(self, code: str) -> Plan:
        return self._client.run(calls.plans_get(code))

    def create(self, *, idempotency_key: str | None = None, **body: Any) -> Plan:
        return self._client.run(calls.plans_create(body, idempotency_key))

    def update(self, code: str, **changes: Any) -> Plan:
        return self._client.run(calls.plans_update(code, changes))


class Contexts(_Resource):
    def list(self, tenant_id: Id, *, limit: int = 50, cursor: str | None = None) -> Page[Context]:
        return self._client.run(calls.contexts_page(tenant_id, limit, cursor))

    def iter(self, tenant_id: Id, *, page_size: int = 50) -> Iterator[Context]:
        return self._client.paginate(
            lambda cursor: calls.contexts_page(tenant_id, page_size, cursor)
        )

    def get(self, tenant_id: Id, ref: str) -> Context:
        return self._client.run(calls.contexts_get(tenant_id, ref))

    def put(self, tenant_id: Id, ref: str, title: str, **body: Any) -> Context:
        return self._client.run(calls.contexts_put(tenant_id, ref, {"title": title, **body}))

    def close(self, tenant_id: Id, ref: str, *, idempotency_key: str | None = None) -> Context:
        return self._client.run(calls.contexts_close(tenant_id, ref, idempotency_key))


# Async --------------------------------------------------------------------------------


class AsyncClient:
    """The C3 tenant API on asyncio; the same resources as ``Client``, awaited."""

    def __init__(
        self,
        base_url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = Config.resolve(base_url, token, timeout=timeout, retry=retry)
        self._http = httpx.AsyncClient(**_http_options(self.config, timeout), transport=transport)
        self.tenants = AsyncTenants(self)
        self.operations = AsyncOperations(self)
        self.keys = AsyncKeys(self)
        self.plans = AsyncPlans(self)
        self.contexts = AsyncContexts(self)
        self.sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def run(self, call: Call[T]) -> T:
        args = _request_args(call)
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await self._http.request(**args)
            except httpx.TransportError as exc:
                await self.sleep(_delay_after_lost_connection(self.config, call, attempt, exc))
                continue
            delay = _delay_after_response(self.config, attempt, response)
            if delay is None:
                return read(call, response)
            await self.sleep(delay)

    async def paginate(self, page: Callable[[str | None], Call[Page[M]]]) -> AsyncIterator[M]:
        cursor: str | None = None
        while True:
            found = await self.run(page(cursor))
            for item in found.items:
                yield item
            if found.next_cursor is None:
                return
            cursor = found.next_cursor

    async def status(self) -> PlatformStatus:
        return await self.run(calls.status_get())

    async def wait_for_operation(
        self,
        operation_id: Id,
        timeout: float = 300.0,  # noqa: ASYNC109 -- the same signature as Client's
        *,
        on_progress: ProgressCallback | None = None,
    ) -> Operation:
        poll = _Poll(timeout)
        while True:
            operation = await self.operations.get(operation_id)
            if on_progress is not None:
                on_progress(operation)
            delay = poll.after(operation)
            if delay is None:
                return operation
            await self.sleep(delay)


class _AsyncResource:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client


class AsyncTenants(_AsyncResource):
    async def list(self, *, limit: int = 50, cursor: str | None = None) -> Page[Tenant]:
        return await self._client.run(calls.tenants_page(limit, cursor))

    def iter(self, *, page_size: int = 50) -> AsyncIterator[Tenant]:
        return self._client.paginate(lambda cursor: calls.tenants_page(page_size, cursor))

    async def create(
        self,
        slug: str,
        display_name: str,
        *,
        plan: str | None = None,
        server_name: str | None = None,
        idempotency_key: str | None = None,
    ) -> TenantAccepted:
        return await self._client.run(
            calls.tenants_create(slug, display_name, plan, server_name, idempotency_key)
        )

    async def get(self, tenant_id: Id) -> Tenant:
        return await self._client.run(calls.tenants_get(tenant_id))

    async def update(self, tenant_id: Id, **changes: Any) -> Tenant:
        return await self._client.run(calls.tenants_update(tenant_id, changes))

    async def suspend(self, tenant_id: Id, *, idempotency_key: str | None = None) -> TenantAccepted:
        return await self._client.run(calls.tenants_change(tenant_id, "suspend", idempotency_key))

    async def resume(self, tenant_id: Id, *, idempotency_key: str | None = None) -> TenantAccepted:
        return await self._client.run(calls.tenants_change(tenant_id, "resume", idempotency_key))

    async def delete(self, tenant_id: Id, *, purge: bool = False) -> TenantAccepted:
        return await self._client.run(calls.tenants_delete(tenant_id, purge))

    async def logs(self, tenant_id: Id, *, lines: int = 100) -> HomeserverLogs:
        return await self._client.run(calls.tenants_logs(tenant_id, lines))

    async def usage(
        self,
        tenant_id: Id,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        granularity: str | None = None,
    ) -> Usage:
        return await self._client.run(calls.usage_get(tenant_id, start, end, granularity))


class AsyncOperations(_AsyncResource):
    async def get(self, operation_id: Id) -> Operation:
        return await self._client.run(calls.operations_get(operation_id))

    async def retry(self, operation_id: Id, *, idempotency_key: str | None = None) -> Operation:
        return await self._client.run(calls.operations_retry(operation_id, idempotency_key))

    async def wait(
        self,
        operation_id: Id,
        timeout: float = 300.0,  # noqa: ASYNC109 -- the same signature as Client's
        *,
        on_progress: ProgressCallback | None = None,
    ) -> Operation:
        return await self._client.wait_for_operation(operation_id, timeout, on_progress=on_progress)


class AsyncKeys(_AsyncResource):
    async def create(
        self,
        name: str,
        scopes: list[str],
        *,
        tenant_id: Id | None = None,
        idempotency_key: str | None = None,
    ) -> ApiKeyCreated:
        return await self._client.run(calls.keys_create(name, scopes, tenant_id, idempotency_key))

    async def list(self) -> builtins.list[ApiKey]:
        return await self._client.run(calls.keys_list())

    async def revoke(self, key_id: str) -> ApiKey:
        return await self._client.run(calls.keys_revoke(key_id))


class AsyncPlans(_AsyncResource):
    async def list(self) -> builtins.list[Plan]:
        return await self._client.run(calls.plans_list())

    async def get(self, code: str) -> Plan:
        return await self._client.run(calls.plans_get(code))

    async def create(self, *, idempotency_key: str | None = None, **body: Any) -> Plan:
        return await self._client.run(calls.plans_create(body, idempotency_key))

    async def update(self, code: str, **changes: Any) -> Plan:
        return await self._client.run(calls.plans_update(code, changes))


class AsyncContexts(_AsyncResource):
    async def list(
        self, tenant_id: Id, *, limit: int = 50, cursor: str | None = None
    ) -> Page[Context]:
        return await self._client.run(calls.contexts_page(tenant_id, limit, cursor))

    def iter(self, tenant_id: Id, *, page_size: int = 50) -> AsyncIterator[Context]:
        return self._client.paginate(
            lambda cursor: calls.contexts_page(tenant_id, page_size, cursor)
        )

    async def get(self, tenant_id: Id, ref: str) -> Context:
        return await self._client.run(calls.contexts_get(tenant_id, ref))

    async def put(self, tenant_id: Id, ref: str, title: str, **body: Any) -> Context:
        return await self._client.run(calls.contexts_put(tenant_id, ref, {"title": title, **body}))

    async def close(
        self, tenant_id: Id, ref: str, *, idempotency_key: str | None = None
    ) -> Context:
        return await self._client.run(calls.contexts_close(tenant_id, ref, idempotency_key))
