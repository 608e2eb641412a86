"""A key of a `.env` file that is no setting (`BACKUP_KEEP_LAS=3`, a typo of BACKUP_KEEP_LAST):
every task names it once on stderr, with the closest declared name, and goes on as it would
have; `invoke check` shows it as a WARNING check (exit 1, the plugin convention's WARNING).
"""
from __future__ import annotations

import json

import pytest

from helpers import HEAD, ok, shown
from check_output import WARNING, backed_up, checked, line_of

pytestmark = pytest.mark.usefixtures("no_ambient_aws")

TYPO = ("WARNING: BACKUP_KEEP_LAS: not a setting; did you mean BACKUP_KEEP_LAST? "
        "(in .env.dev)")


def warnings(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("WARNING:")]


def test_status_names_the_typo_once_and_still_succeeds(project):
    project.env_file("dev", BACKUP_KEEP_LAS="3", AWS_PROFILE="ops", PGSSLMODE="prefer")
    result = ok(project.run("status"))
    assert warnings(result) == [TYPO], shown(result)
    assert "Environment dev" in result.stdout
    result = ok(project.run("status", "--json"))
    assert warnings(result) == [TYPO], shown(result)
    assert json.loads(result.stdout)["env"] == "dev"  # stdout stays the JSON alone


def test_migrate_names_the_typo_once_and_migrates(project):
    project.env_file("dev", BACKUP_KEEP_LAS="3", FLUX_CAPACITOR="1.21")
    result = ok(project.run("migrate"))
    assert warnings(result) == [TYPO, "WARNING: FLUX_CAPACITOR: not a setting (in .env.dev)"], \
        shown(result)
    status = json.loads(ok(project.run("status", "--json")).stdout)
    assert status["current"] == HEAD


def test_the_typo_is_why_prune_keeps_everything(project):
    project.env_file("dev", BACKUP_KEEP_LAS="1")
    backed_up(project)
    result = ok(project.run("prune", "--dry-run"))
    assert warnings(result) == [TYPO], shown(result)
    assert "no retention configured" in result.stdout


def test_declared_and_library_keys_warn_of_nothing(project):
    project.env_file("dev", BACKUP_KEEP_LAST="3", AWS_DEFAULT_REGION="eu-central-1",
                     PGCONNECT_TIMEOUT="5")
    result = ok(project.run("status"))
    assert warnings(result) == [], shown(result)


def test_the_process_environment_is_not_checked(project):
    result = ok(project.run("status", env={"BACKUP_KEEP_LAS": "3"}))
    assert warnings(result) == [], shown(result)


def test_check_shows_the_typo_as_a_warning(project):
    backed_up(project)
    project.env_file("dev", BACKUP_KEEP_LAS="3")
    result = project.run("check")
    lines = checked(result, WARNING)
    assert "BACKUP_KEEP_LAS: not a setting; did you mean BACKUP_KEEP_LAST?" in lines[0]
    assert line_of(lines, "settings") == TYPO.replace("WARNING: ", "WARNING settings: ")
    assert {line.split()[0] for line in lines[1:] if " settings: " not in line} == {"OK"}
    assert warnings(result) == [], shown(result)  # a check's finding, not stderr noise
    report = json.loads(project.run("check", "--json").stdout)
    assert report["status"] == "WARNING"
    assert {"name": "settings", "state": "WARNING",
            "detail": TYPO.replace("WARNING: ", "")} in report["checks"]
