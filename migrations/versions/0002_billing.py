"""billing: plan prices, plan history, invoices (immutable on PostgreSQL), reconciliation

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

import uuid
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A finalized invoice and its lines never change: corrections go to a later invoice.
_IMMUTABLE_INVOICES = """
CREATE FUNCTION c3_refuse_finalized_invoice_change() RETURNS trigger AS $$
BEGIN
    IF TG_TABLE_NAME = 'invoices' THEN
        IF OLD.status = 'finalized' THEN
            RAISE EXCEPTION 'invoice % is finalized and cannot be changed', OLD.number
                USING ERRCODE = 'integrity_constraint_violation';
        END IF;
    ELSIF EXISTS (
        SELECT 1 FROM invoices WHERE id = OLD.invoice_id AND status = 'finalized'
    ) THEN
        RAISE EXCEPTION 'lines of finalized invoice % cannot be changed', OLD.invoice_id
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER invoices_immutable BEFORE UPDATE OR DELETE ON invoices
    FOR EACH ROW EXECUTE FUNCTION c3_refuse_finalized_invoice_change();
CREATE TRIGGER invoice_lines_immutable BEFORE UPDATE OR DELETE ON invoice_lines
    FOR EACH ROW EXECUTE FUNCTION c3_refuse_finalized_invoice_change();
"""


def upgrade() -> None:
    op.create_table(
        "invoice_counters",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("next_value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_invoice_counters")),
    )
    op.bulk_insert(
        sa.table("invoice_counters", sa.column("name", sa.String), sa.column("next_value")),
        [{"name": "invoice", "next_value": 1}],
    )
    op.create_table(
        "invoices",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("period", sa.String(length=7), nullable=False),
        sa.Column("number", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("total", sa.BigInteger(), nullable=False),
        sa.Column("terms", sa.JSON(), nullable=False),
        sa.Column("finalized_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_invoices_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_invoices")),
        sa.UniqueConstraint("number", name=op.f("uq_invoices_number")),
        sa.UniqueConstraint("tenant_id", "period", name="uq_invoices_tenant_period"),
    )
    op.create_index(op.f("ix_invoices_tenant_id"), "invoices", ["tenant_id"])
    op.create_table(
        "invoice_lines",
        sa.Column("invoice_id", sa.Uuid(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("description", sa.String(length=300), nullable=False),
        sa.Column("meter", sa.String(length=32), nullable=True),
        sa.Column("quantity", sa.BigInteger(), nullable=False),
        sa.Column("included", sa.BigInteger(), nullable=False),
        sa.Column("unit_price", sa.BigInteger(), nullable=False),
        sa.Column("per", sa.BigInteger(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("plan", sa.String(length=64), nullable=True),
        sa.Column("first_day", sa.Integer(), nullable=True),
        sa.Column("last_day", sa.Integer(), nullable=True),
        sa.Column("adjusts_period", sa.String(length=7), nullable=True),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["invoice_id"], ["invoices.id"], name=op.f("fk_invoice_lines_invoice_id_invoices")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_invoice_lines")),
        sa.UniqueConstraint("invoice_id", "position", name="uq_invoice_lines_position"),
    )
    op.create_index(op.f("ix_invoice_lines_invoice_id"), "invoice_lines", ["invoice_id"])
    op.create_table(
        "tenant_plan_changes",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("plan_id", sa.Uuid(), nullable=False),
        sa.Column("effective_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["plan_id"], ["plans.id"], name=op.f("fk_tenant_plan_changes_plan_id_plans")
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_tenant_plan_changes_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenant_plan_changes")),
    )
    op.create_index(op.f("ix_tenant_plan_changes_tenant_id"), "tenant_plan_changes", ["tenant_id"])
    op.create_table(
        "usage_reconciliations",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("meter", sa.String(length=32), nullable=False),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("billed", sa.BigInteger(), nullable=False),
        sa.Column("homeserver", sa.BigInteger(), nullable=False),
        sa.Column("drift", sa.BigInteger(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_usage_reconciliations_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_reconciliations")),
    )
    op.create_index(
        "ix_usage_reconciliations_tenant_checked",
        "usage_reconciliations",
        ["tenant_id", "checked_at"],
    )
    with op.batch_alter_table("billable_events") as batch_op:
        # "2026-11|" + a Matrix user id (up to 255 bytes) must fit.
        batch_op.alter_column(
            "natural_id", type_=sa.String(length=512), existing_type=sa.String(length=255)
        )
        batch_op.add_column(
            sa.Column("quantity", sa.BigInteger(), nullable=False, server_default="1")
        )
    with op.batch_alter_table("plans") as batch_op:
        batch_op.add_column(sa.Column("prices", sa.JSON(), nullable=False, server_default="{}"))

    # Every existing tenant has been on its current plan since it was created.
    bind = op.get_bind()
    tenants = bind.execute(sa.text("SELECT id, plan_id, created_at FROM tenants")).all()
    if tenants:
        op.bulk_insert(
            sa.table(
                "tenant_plan_changes",
                sa.column("id", sa.Uuid()),
                sa.column("tenant_id", sa.Uuid()),
                sa.column("plan_id", sa.Uuid()),
                sa.column("effective_at", sa.DateTime(timezone=True)),
            ),
            [
                {"id": uuid.uuid4(), "tenant_id": t, "plan_id": p, "effective_at": at}
                for t, p, at in tenants
            ],
        )
    if bind.dialect.name == "postgresql":
        op.execute(_IMMUTABLE_INVOICES)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER invoice_lines_immutable ON invoice_lines")
        op.execute("DROP TRIGGER invoices_immutable ON invoices")
        op.execute("DROP FUNCTION c3_refuse_finalized_invoice_change()")
    with op.batch_alter_table("plans") as batch_op:
        batch_op.drop_column("prices")
    with op.batch_alter_table("billable_events") as batch_op:
        batch_op.drop_column("quantity")
        batch_op.alter_column(
            "natural_id", type_=sa.String(length=255), existing_type=sa.String(length=512)
        )
    op.drop_table("usage_reconciliations")
    op.drop_table("tenant_plan_changes")
    op.drop_table("invoice_lines")
    op.drop_table("invoices")
    op.drop_table("invoice_counters")
