"""`c3 keys create|list|revoke`."""

from __future__ import annotations

from typing import Annotated

import typer

from c3.commands._common import (
    ApiUrl,
    AsJson,
    Token,
    client,
    print_json,
    print_record,
    resolve_tenant,
    show_record,
    show_rows,
)

app = typer.Typer(no_args_is_help=True, help="API keys (integrator credentials).")

COLUMNS = ("id", "name", "scopes", "tenant_id", "created_at", "last_used_at", "revoked_at")


@app.command("create")
def create(
    name: Annotated[str, typer.Option("--name", help="What the key is for")],
    scopes: Annotated[
        list[str],
        typer.Option("--scope", help="A scope, e.g. tenants:read (repeat for more)"),
    ],
    tenant: Annotated[
        str | None, typer.Option(help="Bind the key to this tenant (id or slug)")
    ] = None,
    api_url: ApiUrl = None,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Mint a key; its secret is printed once (C3 keeps only a hash)."""
    with client(api_url, token) as c3:
        tenant_id = resolve_tenant(c3, tenant) if tenant else None
        created = c3.keys.create(name, scopes, tenant_id=tenant_id)
    if as_json:
        print_json(created)
        return
    print_record(created, ("id", "name", "scopes", "tenant_id", "created_at"))
    typer.echo(f"{'key'.ljust(10)}  {created.key}")
    typer.echo("Store the key now: it is not shown again.", err=True)


@app.command("list")
def list_keys(api_url: ApiUrl = None, token: Token = None, as_json: AsJson = False) -> None:
    """The keys this credential may manage (no secrets)."""
    with client(api_url, token) as c3:
        keys = c3.keys.list()
    show_rows(keys, COLUMNS, as_json=as_json)


@app.command("revoke")
def revoke(
    key_id: Annotated[str, typer.Argument(help="The key id (its public part)")],
    api_url: ApiUrl = None,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Revoke a key: refused from the next request on."""
    with client(api_url, token) as c3:
        key = c3.keys.revoke(key_id)
    show_record(key, ("id", "name", "revoked_at"), as_json=as_json)
