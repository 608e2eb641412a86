"""Key health in `invoke check` (production): an identity file readable by others, one that
cannot open the newest backup (its age header is all that is read), and a newest backup
encrypted to none of the current recipients each make the check warn; a sound set-up is OK."""
from __future__ import annotations

import os

from helpers import prod_at_first, ok, sealed, shown


def encryption_line(result) -> str:
    [line] = [l for l in result.stdout.splitlines() if " encryption: " in l]
    return line


def prod_with_backup(project, key):
    prod_at_first(project, **sealed(key, identity=key))
    ok(project.run("backup", "--env=prod"))
    result = project.run("check", "--env=prod")
    assert encryption_line(result).startswith("OK encryption"), shown(result)


def test_an_identity_file_readable_by_others_warns(project, keys):
    key = keys("prod")
    prod_with_backup(project, key)
    os.chmod(key.path, 0o644)
    result = project.run("check", "--env=prod")
    assert result.returncode == 1, shown(result)
    line = encryption_line(result)
    assert line.startswith("WARNING encryption") and "readable by others" in line
    assert "0644" in line and f"chmod 600 {key.path}" in line


def test_an_identity_that_cannot_open_the_newest_backup_warns(project, keys):
    key, other = keys("prod"), keys("other")
    prod_with_backup(project, key)
    result = project.run("check", "--env=prod", env=sealed(key, identity=other))
    assert result.returncode == 1, shown(result)
    line = encryption_line(result)
    assert "cannot open the newest backup" in line and "no matching key" in line
    assert "encrypted to none" not in line  # the recipients are still the backup's


def test_a_newest_backup_encrypted_to_none_of_the_current_recipients_warns(project, keys):
    old, new = keys("old"), keys("new")
    prod_with_backup(project, old)
    # Rotated: the new recipient is set, both keys still open what is there.
    both = old.path.parent / "both.key"
    fd = os.open(both, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(old.path.read_text() + new.path.read_text())
    env = {**sealed(new), "BACKUP_ENCRYPTION_IDENTITY_FILE": str(both)}
    result = project.run("check", "--env=prod", env=env)
    assert result.returncode == 1, shown(result)
    line = encryption_line(result)
    assert "encrypted to none of the current" in line and "invoke rekey --env=prod" in line
    ok(project.run("rekey", "--env=prod", env=env))
    result = project.run("check", "--env=prod", env=env)
    assert encryption_line(result).startswith("OK encryption"), shown(result)
