"""contexts: rooms bound to business references, participants, outbox, appservice transactions

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table(
        "appservice_transactions",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("txn_id", sa.String(length=255), nullable=False),
        sa.Column("events", sa.Integer(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_appservice_transactions_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint("tenant_id", "txn_id", name=op.f("pk_appservice_transactions")),
    )
    op.create_table(
        "contexts",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("ref", sa.String(length=200), nullable=False),
        sa.Column("title", sa.String(length=300), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("room_id", sa.String(length=255), nullable=False),
        sa.Column(
            "status",
            sa.Enum("open", "closed", name="contextstate", native_enum=False, length=32),
            nullable=False,
        ),
        sa.Column("message_count", sa.BigInteger(), nullable=False),
        sa.Column("last_activity_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_contexts_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_contexts")),
        sa.UniqueConstraint("room_id", name=op.f("uq_contexts_room_id")),
        sa.UniqueConstraint("tenant_id", "ref", name="uq_contexts_tenant_id_ref"),
    )
    with op.batch_alter_table("contexts", schema=None) as batch_op:
        batch_op.create_index(
            "ix_contexts_tenant_id_created_at_id", ["tenant_id", "created_at", "id"], unique=False
        )

    op.create_table(
        "context_events",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("context_id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("natural_id", sa.String(length=300), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["context_id"], ["contexts.id"], name=op.f("fk_context_events_context_id_contexts")
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_context_events_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_context_events")),
        sa.UniqueConstraint("tenant_id", "natural_id", name="uq_context_events_tenant_natural"),
    )
    with op.batch_alter_table("context_events", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_context_events_context_id"), ["context_id"], unique=False
        )
        batch_op.create_index(
            "ix_context_events_undelivered", ["delivered_at", "occurred_at"], unique=False
        )

    op.create_table(
        "context_participants",
        sa.Column("context_id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column(
            "kind",
            sa.Enum(
                "tenant_user", "external", name="participantkind", native_enum=False, length=32
            ),
            nullable=False,
        ),
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("display_name", sa.String(length=256), nullable=True),
        sa.Column(
            "status",
            sa.Enum(
                "active",
                "removed",
                "expired",
                "closed",
                name="participantstate",
                native_enum=False,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("joined_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("credential_encrypted", sa.Text(), nullable=True),
        sa.Column("cut_off_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["context_id"],
            ["contexts.id"],
            name=op.f("fk_context_participants_context_id_contexts"),
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_context_participants_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_context_participants")),
        sa.UniqueConstraint("context_id", "user_id", name="uq_context_participants_context_user"),
    )
    with op.batch_alter_table("context_participants", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_context_participants_context_id"), ["context_id"], unique=False
        )
        batch_op.create_index(
            "ix_context_participants_status_expires_at", ["status", "expires_at"], unique=False
        )


def downgrade() -> None:

    with op.batch_alter_table("context_participants", schema=None) as batch_op:
        batch_op.drop_index("ix_context_participants_status_expires_at")
        batch_op.drop_index(batch_op.f("ix_context_participants_context_id"))

    op.drop_table("context_participants")
    with op.batch_alter_table("context_events", schema=None) as batch_op:
        batch_op.drop_index("ix_context_events_undelivered")
        batch_op.drop_index(batch_op.f("ix_context_events_context_id"))

    op.drop_table("context_events")
    with op.batch_alter_table("contexts", schema=None) as batch_op:
        batch_op.drop_index("ix_contexts_tenant_id_created_at_id")

    op.drop_table("contexts")
    op.drop_table("appservice_transactions")
