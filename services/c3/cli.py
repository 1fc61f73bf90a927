"""The `c3` command: the composition root that starts the platform's services, and a client
for the daily work.

`c3 up` runs everything locally on embedded defaults; `c3 api`, `c3 proxy`, `c3 worker`,
`c3 beat` run one service each (as in production); `c3 migrate` upgrades the database;
`c3 probe worker|beat|http` are the health checks the Helm chart's probes and `helm test` run;
`c3 openapi` prints the API's OpenAPI document (`--write` refreshes docs/openapi.json).
`c3 tenants|operations|keys|status|logs|version` talk to the API over HTTP through the SDK
(`C3_API_URL`, `C3_API_TOKEN`; docs/cli.md), never to the database.
"""

from __future__ import annotations

import logging
import os
import sys
from enum import StrEnum

import typer

_HELP = (
    "Run the C3 platform and work with it. `c3 up` starts everything locally; `c3 api|proxy|"
    "worker|beat|migrate` run one service each, as in production. `c3 tenants|operations|keys|"
    "status|logs|version` talk to the API over HTTP (C3_API_URL, C3_API_TOKEN; docs/cli.md)."
)
app = typer.Typer(no_args_is_help=True, help=_HELP)  # --install-completion: shell completion


@app.callback()
def _private_files() -> None:
    # Before anything is created or spawned: what every service and its children (Synapse,
    # the embedded Redis, SQLite, log files) create is readable by our user only.
    from platform_core.private_files import PRIVATE_UMASK

    os.umask(PRIVATE_UMASK)


# The modules whose Celery tasks a worker runs: the lifecycle and reconcile (provisioner), the
# usage consumer and invoice finalization (tenant_api). Composition is c3's job, so it is here.
WORKER_TASK_MODULES = (
    "provisioner.tasks",
    "tenant_api.usage.tasks",
    "tenant_api.invoices.tasks",
    "tenant_api.contexts.tasks",
    "tenant_api.webhooks.tasks",
)


def _logging() -> None:
    """One handler for the whole process, in C3_LOG_FORMAT (text on stderr, or JSON lines on
    stdout), every line stamped with the request id that caused it (platform_core.logging)."""
    from platform_core.logging import configure
    from platform_core.settings import get_settings

    configure(get_settings().log_format)


def _require_migrated() -> None:
    """Refuse to start a service on a database that is not at the latest schema."""
    from platform_core.migrate import DatabaseNotMigrated, assert_migrated

    try:
        assert_migrated()
    except DatabaseNotMigrated as exc:
        typer.echo(f"c3: {exc}", err=True)
        raise typer.Exit(2) from None


def _require_object_store() -> None:
    """Refuse to start the API or a worker whose object store cannot work (no such bucket,
    refused credentials); one that is only unreachable right now is a warning."""
    from platform_core import object_store
    from platform_core.errors import PermanentError, TemporaryError
    from platform_core.settings import get_settings

    try:
        object_store.from_settings(get_settings()).check()
    except PermanentError as exc:
        typer.echo(f"c3: {exc} (C3_OBJECT_STORE_*)", err=True)
        raise typer.Exit(2) from None
    except TemporaryError as exc:
        logging.getLogger("c3").warning("%s; exports and archives fail until it is back", exc)


def _require_backend() -> None:
    """Refuse to start a service that runs homeservers when the configured backend cannot
    work (C3_BACKEND=kubernetes without cluster access or without C3_TENANT_DATABASE_URL):
    a clear message now, rather than tenants failing one by one."""
    from platform_core.errors import PermanentError
    from platform_core.settings import get_settings
    from provisioner.steps import make_backend

    try:
        make_backend(get_settings())
    except PermanentError as exc:
        typer.echo(f"c3: {exc}", err=True)
        raise typer.Exit(2) from None


def _keep_our_logging() -> None:
    """Tell Celery the logging is configured already (ours, above), so it changes nothing."""
    from celery.signals import setup_logging

    setup_logging.connect(lambda **_: None, weak=False)


def _quiet_celery() -> list[str]:
    """With JSON logs, Celery's start-up banners (plain text on stdout) are left out."""
    from platform_core.settings import get_settings

    return ["--quiet"] if get_settings().log_format == "json" else []


@app.command()
def up() -> None:
    """Start the whole platform locally (SQLite + embedded Redis unless configured)."""
    from c3.local_run import run_local

    _logging()
    _require_backend()
    raise typer.Exit(run_local())


@app.command()
def migrate() -> None:
    """Upgrade the platform database to the latest schema."""
    from platform_core.migrate import upgrade

    _logging()
    upgrade()
    typer.echo("database is at the latest revision")


@app.command()
def api() -> None:
    """Run the tenant API (C3_API_HOST:C3_API_PORT)."""
    import uvicorn

    from platform_core.http_wall import PROBLEM_ANSWERS, guarded_protocol
    from platform_core.settings import get_settings

    _logging()
    _require_migrated()
    _require_object_store()
    settings = get_settings()
    uvicorn.run(
        "tenant_api.main:create_app",
        factory=True,
        host=settings.api_host,
        port=settings.api_port,
        # The same first gate as the proxy's (head size cap, head and body timeouts, strict
        # parser), answering problem+json; bodies are capped by tenant_api's middleware.
        http=guarded_protocol(
            answers=PROBLEM_ANSWERS,
            header_timeout=settings.api_header_timeout_s,
            body_timeout=settings.api_body_timeout_s,
        ),
        proxy_headers=False,
        timeout_graceful_shutdown=10,
        log_config=None,
    )


@app.command()
def proxy(
    metering: bool = typer.Option(True, help="Meter usage (off only for benchmarks)"),
) -> None:
    """Run the homeserver proxy (C3_PROXY_HOST:C3_PROXY_PORT)."""
    import uvicorn

    from homeserver_proxy.app import ProxyApp
    from homeserver_proxy.heap import ALLOCATOR_ENV
    from homeserver_proxy.relay import RelayProtocol
    from platform_core.http_wall import MATRIX_ANSWERS, guarded_protocol
    from platform_core.settings import get_settings

    _logging()
    settings = get_settings()
    name, value = ALLOCATOR_ENV
    if settings.proxy_return_memory and os.environ.get(name) != value:
        # The allocator is chosen when the interpreter starts (the chart sets it).
        logging.getLogger(__name__).warning(
            "%s=%s is not set: memory freed after a crowd of long-polls goes back to the "
            "system only in part (pymalloc keeps most of it; docs/benchmarks.md)",
            name,
            value,
        )
    uvicorn.run(
        ProxyApp(settings, metering=metering, tune_gc=True),
        host=settings.proxy_host,
        port=settings.proxy_port,
        loop="uvloop",
        # httptools (llhttp) is the strict parser; the subclass adds the header and body
        # timeouts and the head size cap (platform_core.http_wall), and the fast lane in front
        # of it relays plain requests without the ASGI app (homeserver_proxy.relay).
        http=guarded_protocol(
            base=RelayProtocol,
            answers=MATRIX_ANSWERS,
            header_timeout=settings.proxy_header_timeout_s,
            body_timeout=settings.proxy_body_timeout_s,
        ),
        lifespan="on",
        access_log=False,
        proxy_headers=False,
        server_header=False,
        date_header=False,  # the homeserver sends its own Date
        backlog=4096,
        timeout_keep_alive=75,
        timeout_graceful_shutdown=5,
        log_config=None,
    )


class WorkerLane(StrEnum):
    ALL = "all"  # `c3 worker`: every queue but the wake lane's (unless C3_WAKE_LANE=false)
    WAKE = "wake"  # `c3 worker --lane wake`: wakes of sleeping homeservers, in threads


def worker_node(lane: WorkerLane) -> str:
    """A lane's Celery node name on this host: Celery's default, celery@<hostname> (the pod
    name), for the worker; wake@<hostname> for its wake lane."""
    import socket

    return f"{'wake' if lane is WorkerLane.WAKE else 'celery'}@{socket.gethostname()}"


@app.command()
def worker(
    concurrency: int = typer.Option(
        2, min=1, envvar="C3_WORKER_CONCURRENCY", help="Worker processes (lane all)"
    ),
    lane: WorkerLane = typer.Option(
        WorkerLane.ALL,
        help="all: provisioning, reconcile, usage, webhooks, in processes (and wakes when "
        "C3_WAKE_LANE=false); wake: only wakes of sleeping homeservers, in "
        "C3_WAKE_LANE_THREADS threads (docs/hibernation.md)",
    ),
) -> None:
    """Run a Celery worker (provisioning, reconcile, usage application; or the wake lane)."""
    from platform_core.celery import celery_app, queue_names
    from platform_core.settings import get_settings

    _logging()
    # Only the worker runs homeservers, so only it needs the backend (in the chart, only its
    # pod mounts a service-account token); the API, proxy and beat never check it.
    _require_backend()
    _require_migrated()
    _require_object_store()
    # Beat applies usage every second: per-task "received"/"succeeded" lines would drown the
    # log. Tasks log what matters themselves (tenant active, operation failed, ...).
    for chatty in ("celery.app.trace", "celery.worker.strategy"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    _keep_our_logging()
    settings = get_settings()
    default_queue, wake_queue = queue_names(settings.redis_namespace)
    if lane is WorkerLane.WAKE:
        # Wakes mostly wait (for a homeserver to start, a pod to be ready): threads, one
        # process. Its tasks' counts reach Redis like any task's, so the main worker's
        # /metrics has them; it serves no /metrics of its own (one port per pod).
        pool = [
            "--pool=threads",
            f"--concurrency={settings.wake_lane_threads}",
            f"--queues={wake_queue}",
            f"--hostname={worker_node(lane)}",
        ]
    else:
        _worker_metrics_listener()
        # A worker that listened on the lane's queue too would take wakes into its own
        # processes (and a stalled one would hold them): with the lane, the lane alone does.
        queues = default_queue if settings.wake_lane else f"{default_queue},{wake_queue}"
        pool = [f"--concurrency={concurrency}", f"--queues={queues}"]
    app = celery_app()
    app.conf.include = WORKER_TASK_MODULES
    app.worker_main(
        [
            *_quiet_celery(),
            "worker",
            "--loglevel=INFO",
            *pool,
            "--without-gossip",
            "--without-mingle",
            "--prefetch-multiplier=1",
        ]
    )


def _worker_metrics_listener() -> None:
    """GET /metrics on C3_WORKER_METRICS_HOST:PORT (when set), served by a thread of the main
    worker process; it reads Redis at scrape time (platform_core.worker_metrics), so what the
    prefork children did is in it without a multiprocess directory."""
    from prometheus_client import start_http_server

    from platform_core.settings import get_settings
    from platform_core.worker_metrics import worker_registry

    settings = get_settings()
    if settings.worker_metrics_port is not None:
        start_http_server(
            settings.worker_metrics_port,
            addr=settings.worker_metrics_host,
            registry=worker_registry(settings),
        )


@app.command()
def beat() -> None:
    """Run Celery beat (periodic reconcile and usage application)."""
    from platform_core.celery import celery_app
    from platform_core.settings import get_settings

    _logging()
    _keep_our_logging()
    schedule = get_settings().data_path / "celerybeat-schedule"
    schedule.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # At INFO beat logs every due task, i.e. the usage consumer every second.
    logging.getLogger("celery.beat").setLevel(logging.WARNING)
    celery_app().start([*_quiet_celery(), "beat", f"--schedule={schedule}"])


@app.command()
def reconcile() -> None:
    """Enqueue one reconcile run now."""
    from platform_core.celery import TaskNames, send_task

    send_task(TaskNames.RECONCILE)
    typer.echo("reconcile enqueued")


OPENAPI_PATH = "docs/openapi.json"


@app.command()
def openapi(
    write: bool = typer.Option(
        False, "--write", help=f"Write it to {OPENAPI_PATH} (run from the repository root)"
    ),
) -> None:
    """Print the tenant API's OpenAPI document (or write the committed copy with --write)."""
    from pathlib import Path

    from tenant_api import openapi as document
    from tenant_api.main import create_app

    text = document.document(create_app())
    if not write:
        typer.echo(text, nl=False)
        return
    target = Path(OPENAPI_PATH)
    if not target.parent.is_dir():
        typer.echo(f"c3: no {target.parent}/ here; run this from the repository root", err=True)
        raise typer.Exit(2)
    target.write_text(text)
    target.chmod(0o644)  # a public document (c3's umask keeps what it creates private)
    typer.echo(f"wrote {target}")


operator_app = typer.Typer(no_args_is_help=True, help="Operator accounts (platform staff).")
app.add_typer(operator_app, name="operator")


@operator_app.command("create")
def operator_create(
    email: str = typer.Option(..., help="Sign-in name of the operator"),
    password_stdin: bool = typer.Option(
        False, "--password-stdin", help="Read the password from stdin instead of a prompt"
    ),
) -> None:
    """Create an operator account (e.g. the first one; later ones via POST /v1/accounts)."""
    from pydantic import ValidationError
    from sqlalchemy import select

    from platform_core.auth.passwords import hash_password
    from platform_core.db import task_session
    from platform_core.models import Account, AccountRole
    from tenant_api.accounts.schemas import AccountCreate

    _require_migrated()
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    try:
        body = AccountCreate(email=email, password=password, role=AccountRole.OPERATOR)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        typer.echo(f"c3: {problems}", err=True)
        raise typer.Exit(2) from None
    with task_session() as session:
        if session.scalars(select(Account).where(Account.email == body.email)).first():
            typer.echo(f"c3: an account {body.email} exists already", err=True)
            raise typer.Exit(1)
        account = Account(
            email=body.email,
            password_hash=hash_password(body.password),
            role=AccountRole.OPERATOR.value,
        )
        session.add(account)
        session.flush()
        typer.echo(f"operator {body.email} created (id {account.id})")


probe_app = typer.Typer(
    no_args_is_help=True,
    help="Health checks for Kubernetes exec probes and `helm test` (exit 0 healthy, 1 not).",
)
app.add_typer(probe_app, name="probe")


def _unhealthy(message: str) -> typer.Exit:
    typer.echo(f"c3: {message}", err=True)
    return typer.Exit(1)


@probe_app.command("worker")
def probe_worker(
    timeout: float = typer.Option(5.0, help="Seconds to wait for the worker's answer"),
    lane: WorkerLane = typer.Option(
        WorkerLane.ALL, help="all: `c3 worker`; wake: `c3 worker --lane wake`"
    ),
) -> None:
    """This host's Celery worker answers a ping through the broker (its main loop is alive)."""
    from platform_core.celery import celery_app

    node = worker_node(lane)
    try:
        replies = celery_app().control.ping(destination=[node], timeout=timeout)
    except Exception as exc:  # the broker is unreachable: that is the answer, not a crash
        raise _unhealthy(f"cannot ping worker {node}: {type(exc).__name__}: {exc}") from None
    if not any(node in reply for reply in replies):
        raise _unhealthy(f"worker {node} did not answer a ping within {timeout:g} s")
    typer.echo(f"worker {node} answered")


@probe_app.command("beat")
def probe_beat(
    max_age: float = typer.Option(
        600.0, "--max-age", help="Seconds since beat last wrote its schedule file"
    ),
) -> None:
    """`c3 beat` wrote its schedule file lately (it does at start and, while it sends tasks,
    at least every three minutes)."""
    import time

    from platform_core.settings import get_settings

    data = get_settings().data_path
    # The dbm module behind the schedule's shelve decides the suffixes (none, .db, .dat, ...).
    written = [path.stat().st_mtime for path in data.glob("celerybeat-schedule*")]
    if not written:
        raise _unhealthy(f"beat has written no schedule under {data}")
    age = time.time() - max(written)
    if age > max_age:
        raise _unhealthy(f"beat last wrote its schedule {age:.0f} s ago (more than {max_age:g})")
    typer.echo(f"beat wrote its schedule {age:.0f} s ago")


@probe_app.command("http")
def probe_http(
    urls: list[str] = typer.Argument(..., help="URLs that must answer 2xx"),
    timeout: float = typer.Option(5.0, help="Seconds per request"),
) -> None:
    """Every URL answers 2xx (the chart's `helm test` Pod: API /healthz, proxy /_c3/health)."""
    import httpx

    failed = False
    for url in urls:
        try:
            status = httpx.get(url, timeout=timeout).status_code
        except httpx.HTTPError as exc:
            typer.echo(f"c3: {url}: {type(exc).__name__}: {exc}", err=True)
            failed = True
            continue
        typer.echo(f"{url}: {status}")
        failed = failed or not 200 <= status < 300
    if failed:
        raise typer.Exit(1)


def _client_commands() -> None:
    """The API client's commands (services/c3/commands/, on the SDK)."""
    from c3.commands import keys, operations, platform, tenants

    app.add_typer(tenants.app, name="tenants")
    app.add_typer(operations.app, name="operations")
    app.add_typer(keys.app, name="keys")
    app.command("status")(platform.status)
    app.command("logs")(platform.logs)
    app.command("version")(platform.version)


_client_commands()
