"""Reading `invoke check`'s output: the monitoring plugins' states and exit codes, its first
line, one check's line; and the backed-up project most check tests start from."""
from __future__ import annotations

from helpers import assert_no_password, shown

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
STATES = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}


def checked(result, code: int) -> list[str]:
    """Exit `code`, the plugin's first line for that state, no traceback, no password;
    returns the output's lines."""
    assert result.returncode == code, shown(result)
    assert "Traceback" not in result.stdout + result.stderr, shown(result)
    assert_no_password(result.stdout, result.stderr)
    lines = result.stdout.splitlines()
    assert lines and lines[0].startswith(f"{STATES[code]}: "), shown(result)
    return lines


def line_of(lines: list[str], name: str) -> str:
    """The output line of one check: `STATE name: detail`."""
    found = [line for line in lines[1:] if line.split()[1:2] == [f"{name}:"]]
    assert len(found) == 1, "\n".join(lines)
    return found[0]


def state_of(lines: list[str], name: str) -> str:
    return line_of(lines, name).split()[0]


def backed_up(project, env: dict | None = None, env_name: str = "dev") -> dict:
    """A migrated database and one verified backup of it; returns the backup's item."""
    assert project.run("migrate", f"--env={env_name}", env=env).returncode == 0
    result = project.run("backup", f"--env={env_name}", env=env)
    assert result.returncode == 0, shown(result)
    return project.backups(env_name, env=env)[0]
