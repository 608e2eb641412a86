"""Add phone_number field to user table

Revision ID: f8ff2ab1fdfa
Revises: a9ef987fd631
Create Date: 2024-01-22 10:00:00.000000

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = "f8ff2ab1fdfa"
down_revision: Union[str, Sequence[str], None] = "a9ef987fd631"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("phone_number", sa.String(length=20), nullable=True))


def downgrade() -> None:
    """Downgrade schema: undo exactly what upgrade() does. A rollback runs this."""
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("phone_number")
