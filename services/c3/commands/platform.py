"""`c3 status`, `c3 logs <tenant>`, `c3 version`."""

from __future__ import annotations

from importlib import metadata
from typing import Annotated

import typer

from c3.commands._common import (
    ApiUrl,
    AsJson,
    Token,
    client,
    print_json,
    print_table,
    resolve_tenant,
)


def version_of_c3() -> str:
    try:
        return metadata.version("c3")
    except metadata.PackageNotFoundError:
        return "unknown"


def status(api_url: ApiUrl = None, token: Token = None, as_json: AsJson = False) -> None:
    """Which components (API, database, Redis, proxy, workers, homeservers) are up; exit 1 if any is down.

    Operators only; also lists each active tenant's homeserver."""
    with client(api_url, token) as c3:
        report = c3.status()
    if as_json:
        print_json(report)
    else:
        components = [
            {"component": c.name, "state": "up" if c.up else "DOWN", "detail": c.detail}
            for c in report.components
        ]
        print_table(components, ("component", "state", "detail"))
        if report.homeservers:
            typer.echo("")
            homeservers = [
                {"tenant": h.slug, "state": "up" if h.up else "DOWN", "detail": h.detail}
                for h in report.homeservers
            ]
            print_table(homeservers, ("tenant", "state", "detail"))
    if not report.ok:
        raise typer.Exit(1)


def logs(
    tenant: Annotated[str, typer.Argument(help="Tenant id or slug")],
    lines: Annotated[int, typer.Option("--lines", "-n", min=1, max=1000)] = 100,
    api_url: ApiUrl = None,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """The tenant homeserver's last log lines, credentials redacted (operators)."""
    with client(api_url, token) as c3:
        found = c3.tenants.logs(resolve_tenant(c3, tenant), lines=lines)
    if as_json:
        print_json(found)
    else:
        for line in found.lines:
            typer.echo(line)


def version(as_json: AsJson = False) -> None:
    """This C3's version."""
    if as_json:
        print_json({"c3": version_of_c3()})
    else:
        typer.echo(f"c3 {version_of_c3()}")
