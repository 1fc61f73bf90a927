"""The lifecycle's transition tables: every legal move lands where the table says, every other
one raises — and no code outside ``platform_core.lifecycle`` moves a tenant or operation."""

from __future__ import annotations

import ast
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from platform_core import lifecycle
from platform_core.errors import IllegalTransition, PermanentError, Superseded, TemporaryError
from platform_core.lifecycle import (
    OPERATION_TRANSITIONS,
    TENANT_TRANSITIONS,
    OperationTransition,
    Outcome,
    TenantTransition,
)
from platform_core.models import Operation, OperationKind, OperationState, Tenant, TenantStatus

SERVICES = Path(__file__).resolve().parents[2] / "services"


def operation(state: OperationState, kind: OperationKind = OperationKind.PROVISION) -> Operation:
    op = lifecycle.start_operation(uuid.uuid4(), kind)
    op.state = state
    op.history = []
    return op


def tenant(status: TenantStatus) -> Tenant:
    row = lifecycle.new_tenant(slug="t", display_name="t", server_name="t.c3.test")
    row.status = status
    return row


# The tables ---------------------------------------------------------------------------


def test_every_named_transition_has_a_table_entry() -> None:
    assert set(TENANT_TRANSITIONS) == set(TenantTransition)
    assert set(OPERATION_TRANSITIONS) == set(OperationTransition)


@pytest.mark.parametrize(
    ("table", "states"),
    [(TENANT_TRANSITIONS, list(TenantStatus)), (OPERATION_TRANSITIONS, list(OperationState))],
    ids=["tenant", "operation"],
)
def test_each_transition_moves_only_from_its_states(
    table: dict[object, dict[object, object]], states: list[object]
) -> None:
    for transition, moves in table.items():
        for current in [None, *states]:
            if current in moves:
                assert lifecycle.next_state(table, transition, current) is moves[current]
            else:
                with pytest.raises(IllegalTransition):
                    lifecycle.next_state(table, transition, current)


def test_an_unknown_transition_raises() -> None:
    with pytest.raises(IllegalTransition, match="unknown transition"):
        lifecycle.next_state(TENANT_TRANSITIONS, "hibernate", TenantStatus.ACTIVE)
    with pytest.raises(IllegalTransition, match="unknown transition"):
        lifecycle.next_state(OPERATION_TRANSITIONS, "hibernate", OperationState.RUNNING)


def test_an_illegal_transition_fails_the_operation_instead_of_retrying() -> None:
    assert issubclass(IllegalTransition, PermanentError)
    assert lifecycle.outcome_of(IllegalTransition("no")) is Outcome.FAIL


# The named transitions, applied to rows -----------------------------------------------

OPERATION_MOVES: dict[OperationTransition, Callable[[Operation], object]] = {
    OperationTransition.SCHEDULE_RETRY: lambda op: lifecycle.schedule_retry(op, "boom", 2.0),
    OperationTransition.SUCCEED: lifecycle.succeed,
    OperationTransition.FAIL: lambda op: lifecycle.fail(op, "boom", None),
    OperationTransition.SUPERSEDE: lambda op: lifecycle.supersede(op, "moved on"),
    OperationTransition.REQUEUE: lifecycle.requeue,
    OperationTransition.RETRY_REQUESTED: lifecycle.retry_requested,
    OperationTransition.BEGIN_ATTEMPT: lambda op: lifecycle.begin_attempt(op, 5, None),
}


def _operation_cases() -> Iterator[tuple[OperationTransition, OperationState]]:
    for transition in OPERATION_MOVES:
        for state in OperationState:
            yield transition, state


@pytest.mark.parametrize(("transition", "state"), list(_operation_cases()))
def test_operation_moves_follow_the_table(
    transition: OperationTransition, state: OperationState
) -> None:
    op = operation(state)
    moves = OPERATION_TRANSITIONS[transition]
    if transition is OperationTransition.BEGIN_ATTEMPT and state in (
        OperationState.SUCCEEDED,
        OperationState.FAILED,
    ):
        # A late copy of a finished operation's task: nothing to do, nothing moves.
        assert OPERATION_MOVES[transition](op) is None
        assert op.state is state and op.history == []
    elif state in moves:
        OPERATION_MOVES[transition](op)
        assert op.state is moves[state]
        assert op.history[-1]["event"]  # the move is a row you can read later
    else:
        with pytest.raises(IllegalTransition):
            OPERATION_MOVES[transition](op)
        assert op.state is state and op.history == []


def test_a_new_operation_is_pending_and_a_new_tenant_provisioning() -> None:
    assert lifecycle.start_operation(uuid.uuid4(), OperationKind.SUSPEND).state is (
        OperationState.PENDING
    )
    assert tenant(TenantStatus.PROVISIONING).status is TenantStatus.PROVISIONING
    fresh = lifecycle.new_tenant(slug="n", display_name="n", server_name="n.c3.test")
    assert fresh.status is TenantStatus.PROVISIONING


TENANT_MOVES: dict[TenantTransition, Callable[[Tenant], None]] = {
    TenantTransition.SUSPEND: lifecycle.suspend_tenant,
    TenantTransition.RESUME: lifecycle.resume_tenant,
    TenantTransition.DELETED: lifecycle.tenant_deleted,
}


@pytest.mark.parametrize(
    ("transition", "status"), [(t, s) for t in TENANT_MOVES for s in TenantStatus]
)
def test_tenant_moves_follow_the_table(transition: TenantTransition, status: TenantStatus) -> None:
    row = tenant(status)
    moves = TENANT_TRANSITIONS[transition]
    if status in moves:
        TENANT_MOVES[transition](row)
        assert row.status is moves[status]
    else:
        with pytest.raises(IllegalTransition):
            TENANT_MOVES[transition](row)
        assert row.status is status


def test_refusals_keep_their_operator_facing_wording() -> None:
    with pytest.raises(IllegalTransition, match="^a deleting tenant cannot be suspended$"):
        lifecycle.suspend_tenant(tenant(TenantStatus.DELETING))
    with pytest.raises(IllegalTransition, match="^a provisioning tenant cannot be resumed$"):
        lifecycle.resume_tenant(tenant(TenantStatus.PROVISIONING))


@pytest.mark.parametrize("status", list(TenantStatus))
def test_provisioning_a_tenant_that_moved_on_is_superseded(status: TenantStatus) -> None:
    row = tenant(status)
    if status in (TenantStatus.DELETING, TenantStatus.DELETED):
        with pytest.raises(Superseded):
            lifecycle.tenant_provisioning(row)
        with pytest.raises(Superseded):
            lifecycle.tenant_provisioned(row)
        return
    lifecycle.tenant_provisioning(row)
    retried = status is TenantStatus.FAILED
    assert row.status is (TenantStatus.PROVISIONING if retried else status)
    if row.status in TENANT_TRANSITIONS[TenantTransition.PROVISIONED]:
        lifecycle.tenant_provisioned(row)
        assert row.status is TenantStatus.ACTIVE
    else:
        with pytest.raises(IllegalTransition):
            lifecycle.tenant_provisioned(row)


@pytest.mark.parametrize("status", list(TenantStatus))
def test_deletion_begins_from_any_live_status(status: TenantStatus) -> None:
    row = tenant(status)
    moves = TENANT_TRANSITIONS[TenantTransition.BEGIN_DELETION]
    if status is TenantStatus.DELETED:
        lifecycle.begin_tenant_deletion(row)  # its task delivered again: it stays deleted
        assert row.status is TenantStatus.DELETED
    elif status in moves:
        lifecycle.begin_tenant_deletion(row)
        assert row.status is TenantStatus.DELETING
    else:
        with pytest.raises(IllegalTransition):
            lifecycle.begin_tenant_deletion(row)


@pytest.mark.parametrize(
    ("kind", "status", "after"),
    [
        (OperationKind.PROVISION, TenantStatus.PROVISIONING, TenantStatus.FAILED),
        (OperationKind.DEPROVISION, TenantStatus.DELETING, TenantStatus.FAILED),
        (OperationKind.SUSPEND, TenantStatus.ACTIVE, TenantStatus.ACTIVE),
        (OperationKind.PROVISION, TenantStatus.ACTIVE, TenantStatus.ACTIVE),
        (OperationKind.RECONFIGURE, TenantStatus.SUSPENDED, TenantStatus.SUSPENDED),
    ],
)
def test_a_tenant_fails_with_the_operation_creating_or_deleting_it(
    kind: OperationKind, status: TenantStatus, after: TenantStatus
) -> None:
    op, row = operation(OperationState.RUNNING, kind), tenant(status)
    lifecycle.fail(op, "boom", row)
    assert (op.state, op.last_error, row.status) == (OperationState.FAILED, "boom", after)
    assert op.finished_at is not None


def test_an_attempt_whose_worker_died_counts_and_ends_the_budget() -> None:
    op, row = operation(OperationState.PENDING), tenant(TenantStatus.PROVISIONING)
    assert lifecycle.begin_attempt(op, 2, row) == 1
    assert lifecycle.begin_attempt(op, 2, row) == 2  # attempt 1 never ended
    assert op.last_error == "attempt 1 was interrupted: the worker running it died"
    assert lifecycle.begin_attempt(op, 2, row) is None
    assert op.state is OperationState.FAILED and row.status is TenantStatus.FAILED
    assert op.last_error.startswith("gave up after 2 attempts")
    events = [entry["event"] for entry in op.history]
    assert events == ["attempt", "interrupted", "attempt", "interrupted", "failed"]


def test_an_operator_retry_gives_a_fresh_budget() -> None:
    op = operation(OperationState.FAILED)
    op.attempts = 5
    lifecycle.retry_requested(op)
    assert (op.state, op.attempts, op.finished_at) == (OperationState.PENDING, 0, None)
    assert op.history[-1] == {**op.history[-1], "event": "retry-requested", "attempt": 0}


@pytest.mark.parametrize(
    ("exc", "outcome"),
    [
        (Superseded("gone"), Outcome.SUPERSEDE),
        (PermanentError("no"), Outcome.FAIL),
        (TemporaryError("later"), Outcome.RETRY),
        (ConnectionError("dropped"), Outcome.RETRY),
    ],
)
def test_the_exception_type_decides_what_follows_an_attempt(
    exc: Exception, outcome: Outcome
) -> None:
    assert lifecycle.outcome_of(exc) is outcome


# The source: one home for state changes ------------------------------------------------


def _modules() -> Iterator[tuple[Path, ast.AST]]:
    for path in sorted(SERVICES.rglob("*.py")):
        yield path, ast.parse(path.read_text(), filename=str(path))


_LIFECYCLE_ENUMS = {"TenantStatus", "OperationState"}


def _moves_lifecycle_state(node: ast.AST) -> bool:
    """An assignment to some row's ``status``/``state`` that could be a tenant's or an
    operation's: anything but another enum's member (an export's state) or ``self``'s own."""
    targets: list[ast.expr] = []
    value: ast.expr | None = None
    if isinstance(node, ast.Assign):
        targets, value = node.targets, node.value
    elif isinstance(node, ast.AugAssign | ast.AnnAssign):
        targets, value = [node.target], node.value
    for target in targets:
        if not (isinstance(target, ast.Attribute) and target.attr in ("status", "state")):
            continue
        if isinstance(target.value, ast.Name) and target.value.id == "self":
            continue
        other_enum = (
            isinstance(value, ast.Attribute)
            and isinstance(value.value, ast.Name)
            and value.value.id not in _LIFECYCLE_ENUMS
            and value.value.id.endswith("State")
        )
        if not other_enum:
            return True
    return False


def _sets_state_by_keyword(node: ast.AST) -> bool:
    """``Tenant(status=…)``, ``Operation(state=…)``, ``….values(status=…)``, setattr."""
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
    if name == "setattr" and len(node.args) >= 2:
        field = node.args[1]
        return isinstance(field, ast.Constant) and field.value in ("status", "state")
    keywords = {k.arg for k in node.keywords}
    if name == "Tenant":
        return "status" in keywords
    if name == "Operation":
        return "state" in keywords
    if name == "values":
        target = _update_target(func)
        if target == "Tenant":
            return "status" in keywords
        if target == "Operation":
            return "state" in keywords
        # update(<another model>) has states of its own (webhook deliveries, exports).
        return target is None and bool(keywords & {"status", "state"})
    return False


def _update_target(func: ast.expr) -> str | None:
    """The model of ``update(Model).where(…).values(…)``; None when it cannot be told."""
    node: ast.expr = func
    while isinstance(node, (ast.Attribute, ast.Call)):
        if isinstance(node, ast.Call):
            callee = node.func
            if isinstance(callee, ast.Name) and callee.id == "update" and node.args:
                model = node.args[0]
                return model.id if isinstance(model, ast.Name) else None
            node = callee
        else:
            node = node.value
    return None


def test_only_the_lifecycle_moves_tenants_and_operations() -> None:
    offenders = [
        f"{path.relative_to(SERVICES)}:{node.lineno}"  # type: ignore[attr-defined]
        for path, tree in _modules()
        if path != SERVICES / "platform_core" / "lifecycle.py"
        for node in ast.walk(tree)
        if _moves_lifecycle_state(node) or _sets_state_by_keyword(node)
    ]
    assert offenders == []


def test_the_source_check_sees_a_state_write() -> None:
    for code in (
        "tenant.status = TenantStatus.ACTIVE",
        "op.state = new",
        "Tenant(slug='x', status=TenantStatus.ACTIVE)",
        "update(Operation).values(state=OperationState.FAILED)",
        "setattr(op, 'state', s)",
    ):
        node = ast.parse(code).body[0]
        inner = node.value if isinstance(node, ast.Expr) else node
        assert _moves_lifecycle_state(inner) or _sets_state_by_keyword(inner), code
    assert not _moves_lifecycle_state(ast.parse("row.state = ExportState.READY").body[0])
    other = ast.parse("update(WebhookDelivery).where(x).values(state=DeliveryState.PENDING)")
    assert not _sets_state_by_keyword(other.body[0].value)  # type: ignore[attr-defined]


def _backend_classes() -> set[str]:
    return {
        node.name
        for path, tree in _modules()
        if (SERVICES / "provisioner" / "backends") in path.parents
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef) and node.name.endswith("Backend")
    }


def test_no_caller_asks_which_backend_it_has() -> None:
    backends = _backend_classes()
    assert {"Backend", "LocalBackend", "FakeBackend"} <= backends
    offenders = []
    for path, tree in _modules():
        if (SERVICES / "provisioner" / "backends") in path.parents:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "isinstance":
                names = {n.id for n in ast.walk(node.args[1]) if isinstance(n, ast.Name)}
                if names & backends:
                    offenders.append(f"{path.relative_to(SERVICES)}:{node.lineno}")
    assert offenders == []


def _import_graph() -> dict[str, set[str]]:
    modules: dict[str, Path] = {}
    for path in SERVICES.rglob("*.py"):
        parts = list(path.relative_to(SERVICES).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):  # function-level imports too
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    imported.add(full if full in modules else node.module)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
        graph[module] = {m for m in imported if m in modules and m != module}
    return graph


def test_no_module_imports_itself_through_others() -> None:
    graph = _import_graph()
    circles: list[list[str]] = []

    def visit(module: str, path: list[str], done: set[str]) -> None:
        for imported in sorted(graph[module]):
            if imported in path:
                circles.append([*path[path.index(imported) :], imported])
            elif imported not in done:
                visit(imported, [*path, imported], done)
        done.add(module)

    finished: set[str] = set()
    for module in sorted(graph):
        if module not in finished:
            visit(module, [module], finished)
    assert circles == []
