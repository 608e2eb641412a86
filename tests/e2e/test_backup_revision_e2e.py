"""End to end (issue 17, case 7): `invoke backup` while a migrate commits. The revision the
manifest records must be the one the dump holds: before, it was read before the dump's
snapshot, so a migrate committing in between left a "verified" backup at the old revision
holding the new schema, which restore then refused.
"""
from __future__ import annotations

import json
import shutil

import pytest

from fake_tools import fake_pg_bin
from helpers import FIRST, HEAD, insert_users, ok, pg_env, shown

PSQL = shutil.which("psql") or "/usr/bin/psql"


def migrate_commits_on_tool_check(tmp_path):
    """A PG_BIN_DIR whose `pg_dump --version` (the tool check a backup makes after it has
    read the revision, before its snapshot) first commits what the head revision's migrate
    commits, with the connection settings the tool hands pg_dump. Idempotent."""
    commit = (f"ALTER TABLE users ADD COLUMN IF NOT EXISTS phone_number varchar(20); "
              f"UPDATE alembic_version SET version_num = '{HEAD}'")
    return fake_pg_bin(tmp_path / "pg-bin", pg_dump=f"""if [ "$1" = "--version" ]; then
  '{PSQL}' -X -q -v ON_ERROR_STOP=1 -c "{commit}" > /dev/null || exit 9
fi
exec "$REAL" "$@"
""")


@pytest.mark.postgres
def test_the_manifest_records_the_revision_the_dump_holds(project, pgdb, tmp_path):
    db = pgdb
    env = pg_env(db)
    ok(project.run("migrate", f"--revision={FIRST}", env=env))
    db.sql("INSERT INTO users (email, full_name, hashed_password) VALUES ('ada@e.org', 'A', 'x')")
    racing = dict(env, PG_BIN_DIR=str(migrate_commits_on_tool_check(tmp_path)))

    result = ok(project.run("backup", env=racing))
    assert db.revision() == HEAD  # the migrate committed during the backup
    item = project.backups("pgtest", env=env)[0]
    assert item["reason"] == "on demand", item
    assert item["revision"] == HEAD, shown(result)
    manifest = json.loads((project.store("pgtest") / f"{item['id']}.manifest.json").read_text())
    assert manifest["revision"] == HEAD

    # What was recorded is what a restore finds: the restore test and the restore agree.
    ok(project.run("verify", "--restore-test", f"--backup={item['id']}", env=env))
    insert_users(db, ("grace@example.org", "+1 555 0100"))
    ok(project.run("restore", "--yes", f"--backup={item['id']}", env=env))
    assert db.revision() == HEAD
    assert db.sql("SELECT email, phone_number FROM users") == [("ada@e.org", None)]
