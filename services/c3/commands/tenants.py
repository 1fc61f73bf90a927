"""`c3 tenants list|create|get|suspend|resume|delete`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from c3.commands._common import (
    ApiUrl,
    AsJson,
    Timeout,
    Token,
    Wait,
    client,
    print_json,
    print_record,
    resolve_tenant,
    show_record,
    show_rows,
    wait_with_progress,
)

if TYPE_CHECKING:
    from c3.sdk import Client, Tenant, TenantAccepted

app = typer.Typer(no_args_is_help=True, help="Tenants: one Matrix homeserver each.")

COLUMNS = ("id", "slug", "status", "plan", "server_name", "created_at")
FIELDS = (
    "id",
    "slug",
    "display_name",
    "status",
    "plan",
    "server_name",
    "homeserver_url",
    "homeserver_path_url",
    "created_at",
    "updated_at",
    "deleted_at",
)
TenantRef = Annotated[str, typer.Argument(help="Tenant id or slug")]


@app.command("list")
def list_tenants(api_url: ApiUrl = None, token: Token = None, as_json: AsJson = False) -> None:
    """Every tenant this credential sees (all pages)."""
    with client(api_url, token) as c3:
        tenants = list(c3.tenants.iter(page_size=200))
    show_rows(tenants, COLUMNS, as_json=as_json)


def _show(tenant: Tenant, as_json: bool) -> None:
    show_record(tenant, FIELDS, as_json=as_json)


def _finish(
    c3: Client, accepted: TenantAccepted, wait: bool, timeout: float, as_json: bool
) -> None:
    """Show the tenant as the request left it, or (--wait) as the operation left it."""
    if not wait:
        if as_json:
            print_json(accepted)
        else:
            print_record(accepted, FIELDS)
            typer.echo(f"{'operation'.ljust(19)}  {accepted.operation.id}")
        return
    wait_with_progress(c3, accepted.operation.id, timeout, as_json=as_json)
    _show(c3.tenants.get(accepted.id), as_json)


@app.command("create")
def create(
    slug: Annotated[str, typer.Argument(help="DNS label; the homeserver is <slug>.<domain>")],
    name: Annotated[str | None, typer.Option("--name", help="Display name [slug]")] = None,
    plan: Annotated[str | None, typer.Option(help="Plan code [the default plan]")] = None,
    server_name: Annotated[
        str | None, typer.Option("--server-name", help="A custom Matrix domain")
    ] = None,
    wait: Wait = False,
    timeout: Timeout = 300.0,
    api_url: ApiUrl = None,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Create a tenant (its homeserver is provisioned by an operation)."""
    with client(api_url, token) as c3:
        accepted = c3.tenants.create(slug, name or slug, plan=plan, server_name=server_name)
        _finish(c3, accepted, wait, timeout, as_json)


@app.command("get")
def get(
    tenant: TenantRef, api_url: ApiUrl = None, token: Token = None, as_json: AsJson = False
) -> None:
    """One tenant."""
    with client(api_url, token) as c3:
        _show(c3.tenants.get(resolve_tenant(c3, tenant)), as_json)


@app.command("suspend")
def suspend(
    tenant: TenantRef,
    wait: Wait = False,
    timeout: Timeout = 300.0,
    api_url: ApiUrl = None,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Stop serving a tenant (its homeserver stops; data is kept)."""
    with client(api_url, token) as c3:
        _finish(c3, c3.tenants.suspend(resolve_tenant(c3, tenant)), wait, timeout, as_json)


@app.command("resume")
def resume(
    tenant: TenantRef,
    wait: Wait = False,
    timeout: Timeout = 300.0,
    api_url: ApiUrl = None,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Serve a suspended tenant again."""
    with client(api_url, token) as c3:
        _finish(c3, c3.tenants.resume(resolve_tenant(c3, tenant)), wait, timeout, as_json)


@app.command("delete")
def delete(
    tenant: TenantRef,
    purge: Annotated[
        bool, typer.Option(help="Delete the archived data at once, not after the retention")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation")] = False,
    wait: Wait = False,
    timeout: Timeout = 300.0,
    api_url: ApiUrl = None,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Delete a tenant: its homeserver stops, its data is archived (purged with --purge)."""
    with client(api_url, token) as c3:
        tenant_id = resolve_tenant(c3, tenant)
        if not yes:
            typer.confirm(f"Delete tenant {tenant}?", abort=True, err=True)
        _finish(c3, c3.tenants.delete(tenant_id, purge=purge), wait, timeout, as_json)
