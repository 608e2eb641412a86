"""app.ops.schema.review: reading revision files the way a reviewer would (risky operations in upgrade(),
and a downgrade() that does nothing). Each test writes a revision file to tmp_path and checks the
findings; the files are parsed, never imported or run.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from app.ops.schema.review import Finding, downgrade_does_nothing, risky_operations

REPO = Path(__file__).resolve().parents[2]
VERSIONS = REPO / "alembic" / "versions"
REV = "0123456789ab"

HEADER = '''"""A revision under review

Revision ID: 0123456789ab
Revises: f8ff2ab1fdfa
"""
import sqlalchemy as sa
from alembic import op

revision = "0123456789ab"
down_revision = "f8ff2ab1fdfa"
branch_labels = None
depends_on = None
'''

REAL_DOWNGRADE = '''
def downgrade():
    op.drop_column("users", "notes")
'''


def revision_file(tmp_path, upgrade_body: str, downgrade: str = REAL_DOWNGRADE) -> str:
    """A revision file whose upgrade() body is `upgrade_body` (unindented source)."""
    path = tmp_path / f"{REV}_under_review.py"
    body = textwrap.indent(textwrap.dedent(upgrade_body).strip("\n"), "    ")
    path.write_text(f"{HEADER}\n\ndef upgrade():\n{body}\n\n{textwrap.dedent(downgrade)}")
    return str(path)


def findings(tmp_path, upgrade_body: str) -> list[str]:
    result = risky_operations(revision_file(tmp_path, upgrade_body), REV)
    assert all(isinstance(f, Finding) and f.revision == REV for f in result)
    assert all(str(f).startswith(f"{REV}: ") for f in result)
    return [f.message for f in result]


def only(tmp_path, upgrade_body: str, fragment: str) -> str:
    """Exactly one finding, and it holds `fragment`."""
    messages = findings(tmp_path, upgrade_body)
    assert len(messages) == 1, messages
    assert fragment in messages[0], messages
    return messages[0]


# -- dropping data ---------------------------------------------------------------------------
def test_drop_table_is_flagged(tmp_path):
    only(tmp_path, 'op.drop_table("users")', "drops a table")


def test_drop_column_is_flagged(tmp_path):
    only(tmp_path, 'op.drop_column("users", "phone_number")', "drops a column")


def test_drop_column_inside_batch_alter_table_is_flagged(tmp_path):
    only(tmp_path, '''
        with op.batch_alter_table("users", schema=None) as batch_op:
            batch_op.drop_column("phone_number")
        ''', "drops a column")


def test_drop_in_downgrade_only_is_not_a_finding(tmp_path):
    path = revision_file(tmp_path, 'op.add_column("users", sa.Column("notes", sa.Text(), '
                                   'nullable=True))',
                         downgrade='''
def downgrade():
    op.drop_column("users", "notes")
    op.drop_table("audit")
''')
    assert risky_operations(path, REV) == []


# -- adding a NOT NULL column ----------------------------------------------------------------
def test_add_not_null_column_without_server_default_is_flagged(tmp_path):
    message = only(tmp_path, 'op.add_column("users", sa.Column("age", sa.Integer(), '
                             'nullable=False))', "NOT NULL")
    assert "server_default" in message


def test_add_not_null_column_in_batch_mode_is_flagged(tmp_path):
    only(tmp_path, '''
        with op.batch_alter_table("users") as batch_op:
            batch_op.add_column(sa.Column("age", sa.Integer(), nullable=False))
        ''', "NOT NULL")


def test_add_not_null_column_with_server_default_is_not_flagged(tmp_path):
    assert findings(tmp_path, 'op.add_column("users", sa.Column("age", sa.Integer(), '
                              'nullable=False, server_default="0"))') == []


def test_add_nullable_column_is_not_flagged(tmp_path):
    assert findings(tmp_path, 'op.add_column("users", sa.Column("notes", sa.Text(), '
                              'nullable=True))') == []
    assert findings(tmp_path, 'op.add_column("users", sa.Column("notes", sa.Text()))') == []


def test_add_not_null_column_to_a_table_created_in_the_same_revision_is_not_flagged(tmp_path):
    assert findings(tmp_path, '''
        op.create_table("studies", sa.Column("id", sa.Integer(), primary_key=True))
        op.add_column("studies", sa.Column("modality", sa.String(16), nullable=False))
        ''') == []


def test_add_not_null_column_to_another_table_than_the_one_created_is_flagged(tmp_path):
    only(tmp_path, '''
        op.create_table("studies", sa.Column("id", sa.Integer(), primary_key=True))
        op.add_column("users", sa.Column("age", sa.Integer(), nullable=False))
        ''', "NOT NULL")


# -- indexes ---------------------------------------------------------------------------------
def test_create_index_without_concurrently_is_flagged(tmp_path):
    only(tmp_path, 'op.create_index("ix_users_full_name", "users", ["full_name"])',
         "CONCURRENTLY")


def test_create_index_with_concurrently_false_is_flagged(tmp_path):
    only(tmp_path, 'op.create_index("ix_users_full_name", "users", ["full_name"], '
                   'postgresql_concurrently=False)', "CONCURRENTLY")


def test_create_index_concurrently_is_not_flagged(tmp_path):
    assert findings(tmp_path, '''
        with op.get_context().autocommit_block():
            op.create_index("ix_users_full_name", "users", ["full_name"],
                            postgresql_concurrently=True)
        ''') == []


def test_create_index_on_a_table_created_in_the_same_revision_is_not_flagged(tmp_path):
    assert findings(tmp_path, '''
        op.create_table("studies", sa.Column("id", sa.Integer(), primary_key=True),
                        sa.Column("modality", sa.String(16)))
        op.create_index(op.f("ix_studies_modality"), "studies", ["modality"])
        op.create_index("ix_studies_id_modality", table_name="studies", columns=["id", "modality"])
        ''') == []


# -- altering and renaming -------------------------------------------------------------------
def test_alter_column_type_is_flagged(tmp_path):
    only(tmp_path, 'op.alter_column("users", "phone_number", type_=sa.String(40))',
         "changes a column's type")


def test_alter_column_rename_is_flagged(tmp_path):
    only(tmp_path, 'op.alter_column("users", "full_name", new_column_name="display_name")',
         "renames a column")


def test_alter_column_type_and_rename_gives_both_findings(tmp_path):
    messages = findings(tmp_path, 'op.alter_column("users", "full_name", type_=sa.Text(), '
                                  'new_column_name="display_name")')
    assert len(messages) == 2, messages
    assert any("changes a column's type" in m for m in messages)
    assert any("renames a column" in m for m in messages)


def test_alter_column_nullable_only_is_not_flagged(tmp_path):
    assert findings(tmp_path, 'op.alter_column("users", "full_name", nullable=True)') == []


def test_rename_table_is_flagged(tmp_path):
    only(tmp_path, 'op.rename_table("users", "accounts")', "renames a table")


def test_every_risky_operation_in_one_revision_is_reported(tmp_path):
    messages = findings(tmp_path, '''
        op.drop_table("legacy")
        op.drop_column("users", "phone_number")
        op.rename_table("users", "accounts")
        op.create_index("ix_accounts_email2", "accounts", ["email"])
        ''')
    assert len(messages) == 4, messages
    for fragment in ("drops a table", "drops a column", "renames a table", "CONCURRENTLY"):
        assert any(fragment in m for m in messages), (fragment, messages)


def test_a_revision_without_upgrade_has_no_findings(tmp_path):
    path = tmp_path / "no_upgrade.py"
    path.write_text(HEADER + REAL_DOWNGRADE)
    assert risky_operations(str(path), REV) == []


# -- the guide's own revisions ---------------------------------------------------------------
@pytest.mark.parametrize("revision", ["a9ef987fd631", "f8ff2ab1fdfa"])
def test_the_guides_revisions_have_no_findings(revision):
    [path] = VERSIONS.glob(f"{revision}_*.py")
    assert risky_operations(str(path), revision) == []
    assert downgrade_does_nothing(str(path)) is False


# -- downgrade_does_nothing ------------------------------------------------------------------
@pytest.mark.parametrize("downgrade", [
    "def downgrade():\n    pass\n",
    'def downgrade() -> None:\n    """Downgrade schema."""\n',
    'def downgrade() -> None:\n    """Downgrade schema."""\n    pass\n',
    "def downgrade():\n    # nothing to undo\n    pass\n",
    "def downgrade():\n    ...\n",
], ids=["pass", "docstring", "docstring-and-pass", "comment-and-pass", "ellipsis"])
def test_downgrade_that_does_nothing(tmp_path, downgrade):
    path = revision_file(tmp_path, 'op.add_column("users", sa.Column("notes", sa.Text()))',
                         downgrade=downgrade)
    assert downgrade_does_nothing(path) is True


def test_missing_downgrade_does_nothing(tmp_path):
    path = tmp_path / "no_downgrade.py"
    path.write_text(HEADER + "\n\ndef upgrade():\n    op.drop_table('legacy')\n")
    assert downgrade_does_nothing(str(path)) is True


@pytest.mark.parametrize("downgrade", [
    REAL_DOWNGRADE,
    '''
def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("notes")
''',
], ids=["op-call", "batch"])
def test_downgrade_that_does_something(tmp_path, downgrade):
    path = revision_file(tmp_path, 'op.add_column("users", sa.Column("notes", sa.Text()))',
                         downgrade=downgrade)
    assert downgrade_does_nothing(path) is False
