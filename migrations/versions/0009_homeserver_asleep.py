"""homeservers: asleep_since (sleeping homeservers, issue 16)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Every existing homeserver is awake.
    with op.batch_alter_table("homeservers") as batch_op:
        batch_op.add_column(sa.Column("asleep_since", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("homeservers") as batch_op:
        batch_op.drop_column("asleep_since")
