"""`c3 operations get|retry|wait`."""

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
    describe,
    show_record,
    wait_with_progress,
)

if TYPE_CHECKING:
    from c3.sdk import Operation

app = typer.Typer(no_args_is_help=True, help="Operations: asynchronous lifecycle requests.")

OperationId = Annotated[str, typer.Argument(help="Operation id")]
FIELDS = (
    "id",
    "tenant_id",
    "kind",
    "state",
    "attempts",
    "steps_done",
    "last_error",
    "created_at",
    "started_at",
    "finished_at",
)


def _show(operation: Operation, as_json: bool) -> None:
    show_record(operation, FIELDS, as_json=as_json)
    if operation.history and not as_json:
        typer.echo("history")
        for event in operation.history:
            typer.echo(f"  {event.at:%Y-%m-%d %H:%M:%S}  {describe(event)}")


@app.command("get")
def get(
    operation_id: OperationId,
    api_url: ApiUrl = None,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """One operation: state, steps done, attempts, last error and history."""
    with client(api_url, token) as c3:
        _show(c3.operations.get(operation_id), as_json)


@app.command("retry")
def retry(
    operation_id: OperationId,
    wait: Wait = False,
    timeout: Timeout = 300.0,
    api_url: ApiUrl = None,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Run a failed operation again (operators)."""
    with client(api_url, token) as c3:
        operation = c3.operations.retry(operation_id)
        if wait:
            operation = wait_with_progress(c3, operation.id, timeout, as_json=as_json)
        _show(operation, as_json)


@app.command("wait")
def wait(
    operation_id: OperationId,
    timeout: Timeout = 300.0,
    api_url: ApiUrl = None,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Wait until the operation ends, showing its steps; exit 1 if it fails."""
    with client(api_url, token) as c3:
        _show(wait_with_progress(c3, operation_id, timeout, as_json=as_json), as_json)
