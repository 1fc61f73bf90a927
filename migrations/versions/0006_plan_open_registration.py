"""plans: allow_open_registration (tenant admins may open sign-up only on plans that allow it)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Existing plans do not allow it: an operator opts a plan in.
    with op.batch_alter_table("plans") as batch_op:
        batch_op.add_column(
            sa.Column(
                "allow_open_registration", sa.Boolean(), nullable=False, server_default=sa.false()
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("plans") as batch_op:
        batch_op.drop_column("allow_open_registration")
