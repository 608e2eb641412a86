"""End to end: `invoke report` over a history built by real runs (migrates, backups, a
restore-test, a rehearsal, a restore), its verdicts, the trail's integrity, the HTML page in a
real browser, and that it writes nothing."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from helpers import (FIRST, HEAD, audit_events, ok, pg_env, pg_state, sealed, shown,
                           take_backup)
from png import read_png

CHROMIUM = shutil.which("chromium-headless-shell") or shutil.which("chromium")


def store_state(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file of a store with its bytes and modification time."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def reported(project, *args: str, env: dict | None = None) -> dict:
    return json.loads(ok(project.run("report", "--json", *args, env=env)).stdout)


def wait_until_past(moment: datetime) -> None:
    """Until the clock reads later than `moment` (a target of a second must be exceeded)."""
    while datetime.now(UTC) <= moment:
        time.sleep(0.05)


def parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.mark.postgres
def test_a_history_of_real_runs_meets_every_target_and_report_writes_nothing(
        project, pgdb, keys):
    key = keys("ops")
    plain, encrypted = pg_env(pgdb), pg_env(pgdb, **sealed(key, identity=key))
    ok(project.run("migrate", f"--revision={FIRST}", env=plain))
    ok(project.run("rehearse", env=plain))
    ok(project.run("migrate", env=encrypted))
    newest = take_backup(project, "pgtest", encrypted)
    ok(project.run("verify", "--restore-test", env=encrypted))
    ok(project.run("restore", f"--backup={newest['id']}", "--yes", env=encrypted))
    store = project.store("pgtest")
    before, database = store_state(store), pg_state(pgdb)

    report = reported(project, env=plain)
    html = project.root / "evidence.html"
    terminal = ok(project.run("report", f"--html={html}", env=plain)).stdout
    assert store_state(store) == before and pg_state(pgdb) == database  # read only
    assert html.is_file()

    listed = project.backups("pgtest", env=plain)
    assert [b["id"] for b in report["backups"]] == [b["id"] for b in listed]
    manifests = {b["id"]: json.loads((store / f"{b['id']}.manifest.json").read_text())
                 for b in listed}
    assert {b["id"]: b["encryption"] for b in report["backups"]} == {
        i: "age" if m.get("recipients") else "none" for i, m in manifests.items()}
    assert {b["encryption"] for b in report["backups"]} == {"age", "none"}
    assert sorted(d["kind"] for d in report["drills"]) == ["rehearse", "restore", "restore-test"]
    assert all(d["seconds"] > 0 and d["outcome"] == "succeeded" for d in report["drills"])
    events = audit_events(store)
    assert [(e["action"], e["outcome"]) for e in report["changes"]] == [
        ("restore", "succeeded"), ("migrate", "succeeded"), ("migrate", "succeeded")]
    assert report["changes"][0]["backup_id"] == newest["id"]
    assert report["trail"]["intact"] is True and report["trail"]["problems"] == []
    assert report["trail"]["events"] == len(events) == 3
    assert {t["name"]: t["met"] for t in report["targets"]} == {
        "rpo": True, "rto": True, "drill_age": True}
    # The period starts at the env's first event, not 90 days ago.
    assert report["period"]["from"][:19] == events[0]["at"][:19]
    rto = next(t for t in report["targets"] if t["name"] == "rto")
    assert rto["achieved_seconds"] == max(d["rto_seconds"] for d in report["drills"]) > 0
    for name in ("rpo", "rto", "drill_age"):
        assert re.search(rf"^\s*{name}\s+met: ", terminal, re.M), terminal
    assert report["trail"]["newest"]["name"] in terminal


def test_an_rpo_target_shorter_than_the_time_since_the_newest_backup_is_missed(project):
    ok(project.run("migrate"))
    backup = take_backup(project, "dev")
    wait_until_past(parse(backup["created_at"]) + timedelta(seconds=1))
    # The period starts at the backup, so the one stretch is the one up to now; exit 0
    # although a target is missed.
    report = reported(project, f"--since={backup['created_at']}", env={"RPO_TARGET": "1s"})
    rpo = next(t for t in report["targets"] if t["name"] == "rpo")
    assert rpo["met"] is False and rpo["target_seconds"] == 1
    (stretch,) = report["rpo_stretches"]
    assert stretch["after"] == backup["id"] and stretch["before"] is None
    assert rpo["achieved_seconds"] == stretch["seconds"] > 1
    assert f"(backup {backup['id']}) to" in rpo["evidence"] and rpo["evidence"].endswith("(now)")
    # With no drill on record the recovery time is not evidenced: missed, not met.
    rto = next(t for t in report["targets"] if t["name"] == "rto")
    assert rto["met"] is False and rto["achieved_seconds"] is None
    report = reported(project)  # the default target, 24h
    assert next(t for t in report["targets"] if t["name"] == "rpo")["met"] is True


def test_an_old_drill_makes_check_warn_in_production(project, keys):
    key = keys("prod")  # production backups are encrypted (BACKUP_ENCRYPTION=required)
    project.env_file("prod", USE_SQLITE="True", SQLITE_PATH="prod.db",
                     **sealed(key, identity=key))
    ok(project.run("migrate", "--env=prod", "--break-glass=test set-up"))
    ok(project.run("backup", "--env=prod"))
    first = project.run("check", "--env=prod")
    assert first.returncode == 1, shown(first)
    assert "WARNING drill: no successful restore drill on record" in first.stdout
    ok(project.run("verify", "--env=prod", "--restore-test"))
    fresh = project.run("check", "--env=prod")
    assert fresh.returncode == 0 and "OK drill: newest successful drill (restore-test" \
        in fresh.stdout, shown(fresh)
    (drill,) = project.store("prod").glob("*.drill.json")
    wait_until_past(parse(json.loads(drill.read_text())["at"]) + timedelta(seconds=1))
    old = project.run("check", "--env=prod", env={"DRILL_MAX_AGE": "1s"})
    assert old.returncode == 1, shown(old)
    assert old.stdout.startswith("WARNING: env prod: newest successful drill (restore-test")
    assert "(limit 1s): run `invoke verify --restore-test --env=prod`" in old.stdout


def test_check_exports_the_newest_drill_and_the_rpo_achieved(project, tmp_path):
    ok(project.run("migrate"))
    take_backup(project, "dev")
    ok(project.run("verify", "--restore-test"))
    textfile = tmp_path / "mida.prom"
    ok(project.run("check", f"--prometheus={textfile}"))
    metrics = dict(line.rsplit(" ", 1) for line in textfile.read_text().splitlines()
                   if line and not line.startswith("#"))
    (drill,) = project.store("dev").glob("*.drill.json")
    record = json.loads(drill.read_text())
    assert float(metrics['mida_db_last_drill_timestamp_seconds{env="dev"}']) == \
        parse(record["at"]).timestamp()
    assert float(metrics['mida_db_last_drill_seconds{env="dev"}']) == record["restore_seconds"]
    report = reported(project)
    rpo = next(t for t in report["targets"] if t["name"] == "rpo")
    # The check ran a moment before the report: the stretch up to now only grew since.
    assert 0 < float(metrics['mida_db_rpo_achieved_seconds{env="dev"}']) <= \
        rpo["achieved_seconds"]


def sqlite_history(project) -> Path:
    ok(project.run("migrate", f"--revision={FIRST}"))
    take_backup(project, "dev")
    ok(project.run("migrate"))
    ok(project.run("stamp", FIRST))
    ok(project.run("stamp", HEAD))
    return project.store("dev")


def test_a_removed_event_and_an_edited_one_are_each_found_and_named(project):
    store = sqlite_history(project)
    names = sorted(p.name for p in store.glob("*.audit.json"))
    assert len(names) == 4
    assert reported(project)["trail"]["intact"] is True
    (store / names[1]).unlink()
    trail = reported(project)["trail"]
    assert trail["intact"] is False
    assert [p["kind"] for p in trail["problems"]] == ["removed"]
    assert names[1] in trail["problems"][0]["detail"] and names[2] in trail["problems"][0][
        "detail"]
    edited = store / names[2]
    edited.write_text(edited.read_text().replace('"succeeded"', '"nothing to do"'))
    trail = reported(project)["trail"]
    assert sorted(p["kind"] for p in trail["problems"]) == ["changed", "removed"]
    changed = next(p for p in trail["problems"] if p["kind"] == "changed")
    assert names[2] in changed["detail"]
    terminal = ok(project.run("report")).stdout
    assert "NOT INTACT" in terminal and "trail changed" in terminal and names[2] in terminal


def test_two_events_written_at_once_are_concurrent_not_a_break(project, tmp_path):
    ok(project.run("migrate", f"--revision={FIRST}"))
    # Two runs that read the trail in the same state: the second runs on a copy of the store
    # (its own BACKUP_DIR), and its event is then put beside the first run's.
    copy = tmp_path / "copy"
    shutil.copytree(project.root / "backups", copy)
    ok(project.run("stamp", FIRST))
    ok(project.run("stamp", HEAD, env={"BACKUP_DIR": str(copy)}))
    ours = {p.name for p in project.store("dev").glob("*.audit.json")}
    (theirs,) = {p.name for p in (copy / "dev").glob("*.audit.json")} - ours
    shutil.copy2(copy / "dev" / theirs, project.store("dev") / theirs)
    trail = reported(project)["trail"]
    assert trail["intact"] is True and trail["events"] == 3
    assert [p["kind"] for p in trail["problems"]] == ["concurrent"]
    assert theirs in trail["problems"][0]["detail"]
    chained = json.loads(ok(project.run("audit", "--json")).stdout)
    assert {e["object"] for e in chained} == ours | {theirs}
    first = min(ours)
    assert [e["previous"]["name"] for e in chained if e["object"] != first] == [first, first]


def test_since_limits_the_period_and_a_bad_value_is_exit_2(project):
    ok(project.run("migrate"))
    take_backup(project, "dev")
    report = reported(project, "--since=2000-01-01")
    events = audit_events(project.store("dev"))
    assert report["period"]["from"][:19] == events[0]["at"][:19]  # never before the first
    bad = project.run("report", "--since=soon")
    assert bad.returncode == 2 and "--since 'soon' is neither a duration nor a date" in \
        bad.stderr, shown(bad)
    nowhere = project.root / "no-such-folder" / "evidence.html"
    bad = project.run("report", f"--html={nowhere}")
    assert bad.returncode == 2 and f"the report could not be written to {nowhere}" in \
        bad.stderr and "Traceback" not in bad.stderr, shown(bad)
    bad = project.run("report", env={"RTO_TARGET": "fast"})
    assert bad.returncode == 2 and "RTO_TARGET 'fast' is not a duration" in bad.stderr


# Under CI=true a missing browser fails the test (.ci/run installs it), never skips it.
@pytest.mark.skipif(CHROMIUM is None and os.environ.get("CI") != "true",
                    reason="needs chromium-headless-shell (.ci/run installs it)")
def test_the_html_page_is_self_contained_and_a_real_browser_renders_it(project, tmp_path):
    assert CHROMIUM, "no chromium-headless-shell or chromium on PATH: apt-get install one"
    store = sqlite_history(project)
    ok(project.run("verify", "--restore-test"))
    before = store_state(store)
    page = tmp_path / "evidence.html"
    ok(project.run("report", f"--html={page}"))
    assert store_state(store) == before
    html = page.read_text()
    assert "<svg" in html and "RPO target" in html and "RTO target" in html
    for external in (r"<script", r"<link", r"\bsrc\s*=", r"\bhref\s*=", r"url\(", r"@import",
                     r"https?:", r"//[a-z0-9]"):
        assert not re.search(external, html, re.I), external
    shot = tmp_path / "shot.png"
    profile = tmp_path / "profile"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                    "--disable-background-networking", "--no-first-run",
                    f"--user-data-dir={profile}", "--window-size=800,1400",
                    f"--screenshot={shot}", page.as_uri()],
                   check=True, capture_output=True, timeout=120)
    width, height, pixels = read_png(shot)
    assert (width, height) == (800, 1400)
    colours = set(pixels)
    assert len(colours) > 8, "the screenshot is blank"
    non_white = sum(1 for p in pixels if p != (255, 255, 255))
    assert non_white > len(pixels) // 100
    # The charts' own colours: the series blue and the target lines' red were drawn.
    assert any(abs(r - 0x1f) < 12 and abs(g - 0x5f) < 12 and abs(b - 0xa8) < 12
               for r, g, b in colours)
    assert any(abs(r - 0xb0) < 12 and g < 24 and abs(b - 0x20) < 16 for r, g, b in colours)
