"""What every client command shares: the connection options, the client, table and JSON
output, and turning the SDK's errors into a message and an exit code."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

# The SDK (httpx, pydantic models) is imported when a client command runs, not when `c3` starts:
# `c3 worker`, `c3 api` and `c3 up`'s children never need it (~1 s of imports each).
if TYPE_CHECKING:
    from pydantic import BaseModel

    from c3.sdk import Client, Operation, OperationEvent

DEFAULT_API_URL = "http://127.0.0.1:8000"  # `c3 up`'s API

ApiUrl = Annotated[
    str | None,
    typer.Option("--api-url", envvar="C3_API_URL", help=f"The tenant API [{DEFAULT_API_URL}]"),
]
Token = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="C3_API_TOKEN",
        show_default=False,
        help="Bearer token (API key, access token or operator token); default: the local "
        "run's operator token from <C3_DATA_DIR>/local-secrets.json",
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON for machines, not a table")]
Wait = Annotated[bool, typer.Option("--wait", help="Wait for the operation, showing its steps")]
Timeout = Annotated[float, typer.Option("--timeout", help="Seconds --wait waits at most")]


def local_operator_token() -> str | None:
    """The operator token a local run (`c3 up`) keeps in its data directory, if readable."""
    path = Path(os.environ.get("C3_DATA_DIR", ".c3")) / "local-secrets.json"
    try:
        return str(json.loads(path.read_text())["operator_token"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"c3: {message}", err=True)
    return typer.Exit(code)


@contextmanager
def client(api_url: str | None, token: str | None) -> Iterator[Client]:
    """A client for one command; the SDK's errors end the command with a clear message:
    1 for what the API or the operation said, 2 for missing configuration."""
    from c3.sdk import ApiError, C3Error, Client, OperationFailed, WaitTimeout

    secret = token or local_operator_token()
    if not secret:
        raise fail("no token: pass --token or set C3_API_TOKEN", 2)
    try:
        with Client(api_url or DEFAULT_API_URL, secret) as c3:
            yield c3
    except OperationFailed as exc:
        raise fail(str(exc)) from None
    except WaitTimeout as exc:
        raise fail(f"{exc} — `c3 operations wait {exc.operation.id}` waits again") from None
    except ApiError as exc:
        request = f" (request {exc.request_id})" if exc.request_id else ""
        raise fail(f"{exc.status} {exc.title}: {exc.detail}{request}") from None
    except C3Error as exc:
        raise fail(str(exc)) from None


def resolve_tenant(c3: Client, ref: str) -> str:
    """A tenant id from an id or a slug (slugs are unique among live tenants)."""
    try:
        return str(uuid.UUID(ref))
    except ValueError:
        pass
    for tenant in c3.tenants.iter(page_size=200):
        if tenant.slug == ref and tenant.status != "deleted":
            return str(tenant.id)
    raise fail(f"no tenant with id or slug {ref!r}")


def dump(value: Any) -> Any:
    if hasattr(value, "model_dump"):  # a pydantic model of the SDK
        return value.model_dump(mode="json", by_alias=True)
    if isinstance(value, list):
        return [dump(item) for item in value]
    return value


def print_json(value: Any) -> None:
    typer.echo(json.dumps(dump(value), indent=2, sort_keys=True))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "-"
    return str(value)


def _field(row: Any, name: str) -> Any:
    return row.get(name) if isinstance(row, dict) else getattr(row, name, None)


def print_table(rows: Sequence[Any], columns: Sequence[str]) -> None:
    """Aligned columns, one object (attributes) or dict per row, the fields ``columns``."""
    cells = [[_cell(_field(row, column)) for column in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = [columns, *cells]
    for line in lines:
        typer.echo("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())


def print_record(value: BaseModel, fields: Sequence[str]) -> None:
    width = max(len(f) for f in fields)
    for name in fields:
        typer.echo(f"{name.ljust(width)}  {_cell(getattr(value, name, None))}")


def show_record(value: BaseModel, fields: Sequence[str], *, as_json: bool) -> None:
    """One object: JSON (every field) with ``--json``, else the ``fields`` as a record."""
    if as_json:
        print_json(value)
    else:
        print_record(value, fields)


def show_rows(rows: Sequence[Any], columns: Sequence[str], *, as_json: bool) -> None:
    """A list: JSON (every field) with ``--json``, else the ``columns`` as a table."""
    if as_json:
        print_json(rows)
    else:
        print_table(rows, columns)


class Progress:
    """Prints an operation's progress while `--wait` polls it: each attempt, each step as it
    completes, retries with their reason, the end (the operation's own history). On stderr
    when stdout carries JSON."""

    def __init__(self, *, err: bool = False) -> None:
        self.err = err
        self.seen: set[tuple[Any, ...]] = set()
        self.state: str | None = None

    def say(self, text: str) -> None:
        typer.echo(text, err=self.err)

    def __call__(self, operation: Operation) -> None:
        if self.state is None:
            self.say(f"operation {operation.kind} {operation.id}")
        self.state = operation.state
        for event in operation.history:
            key = (event.at, event.event, event.step, event.attempt)
            if key not in self.seen:
                self.seen.add(key)
                self.say("  " + describe(event))


def describe(event: OperationEvent) -> str:
    if event.event == "attempt":
        return f"attempt {event.attempt}"
    if event.event == "step":
        return f"done: {event.step}"
    if event.event == "retry":
        delay = f"; next attempt in {event.delay_s:.0f} s" if event.delay_s is not None else ""
        return f"attempt {event.attempt} failed: {event.detail}{delay}"
    return event.event + (f": {event.detail}" if event.detail else "")


def wait_with_progress(
    c3: Client, operation_id: Any, timeout: float, *, as_json: bool
) -> Operation:
    return c3.wait_for_operation(operation_id, timeout, on_progress=Progress(err=as_json))


Command = Callable[..., None]
