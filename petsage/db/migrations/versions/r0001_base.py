"""The base of PetSage's schema: no table yet; every feature's revision chains on it.

Revision ID: 0001
Revises:
Create Date: 2026-01-01
"""

from collections.abc import Sequence

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Nothing to make: the base only starts the chain."""


def downgrade() -> None:
    """Nothing to undo."""
