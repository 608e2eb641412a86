"""app.ops.catalog.audit: one object per event, beside the backups, read back newest first."""
from __future__ import annotations

import json
import os
import socket
from datetime import timedelta

from app.ops.catalog.audit import AUDIT_SUFFIX, read_events, record
from app.ops.catalog.backups import list_backups
from app.ops.target import open_target
from app.settings import load_settings
from helpers import T0, dev_target

PASSWORD = "p@ss:w/o%rd#1 'q' \"dq\" end"


def audit_files(target) -> list[str]:
    folder = target.settings.backup_dir / target.env
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(AUDIT_SUFFIX))


def test_record_returns_and_stores_the_event(tmp_path):
    target = dev_target(tmp_path)
    event = record(target, action="migrate", now=T0, outcome="ok",
                   from_revision="a9ef987fd631", to_revision="f8ff2ab1fdfa",
                   backup_id="20260302T101530Z-abcdef")
    assert event["action"] == "migrate"
    assert event["env"] == "dev"
    assert event["at"] == "2026-03-02T10:15:30Z"
    assert event["outcome"] == "ok"
    assert event["from_revision"] == "a9ef987fd631"
    assert event["to_revision"] == "f8ff2ab1fdfa"
    assert event["backup_id"] == "20260302T101530Z-abcdef"
    assert event["pid"] == os.getpid()
    assert event["host"] == socket.gethostname()
    assert event["user"]
    assert event["database"] == target.database.masked_url
    assert read_events(target) == [event]
    (name,) = audit_files(target)
    assert json.loads((target.settings.backup_dir / "dev" / name).read_text()) == event


def test_read_events_newest_first(tmp_path):
    target = dev_target(tmp_path)
    for offset, action in ((1, "rollback"), (0, "migrate"), (2, "restore"), (-1, "break-glass")):
        record(target, action=action, now=T0 + timedelta(days=offset), outcome="ok")
    events = read_events(target)
    assert [e["action"] for e in events] == ["restore", "rollback", "migrate", "break-glass"]
    assert [e["at"] for e in events] == sorted((e["at"] for e in events), reverse=True)


def test_events_are_separate_objects_even_in_the_same_instant(tmp_path):
    target = dev_target(tmp_path)
    first = record(target, action="migrate", now=T0, outcome="failed", error="boom")
    second = record(target, action="migrate", now=T0, outcome="ok")
    assert len(audit_files(target)) == 2
    events = read_events(target)
    assert len(events) == 2
    assert sorted(e["outcome"] for e in events) == ["failed", "ok"]
    assert first in events and second in events
    # Reading back gives fresh objects: changing one changes neither the store nor the other.
    events[0]["outcome"] = "tampered"
    assert sorted(e["outcome"] for e in read_events(target)) == ["failed", "ok"]


def test_audit_objects_are_private(tmp_path):
    target = dev_target(tmp_path)
    previous = os.umask(0o022)
    try:
        record(target, action="restore", now=T0, outcome="ok")
    finally:
        os.umask(previous)
    folder = target.settings.backup_dir / "dev"
    assert os.stat(folder).st_mode & 0o777 == 0o700
    (name,) = audit_files(target)
    assert os.stat(folder / name).st_mode & 0o777 == 0o600


def test_audit_never_holds_the_password(tmp_path):
    (tmp_path / ".env.pgtest").write_text("")
    target = open_target(load_settings("pgtest", environ={
        "POSTGRES_SERVER": "db.internal", "POSTGRES_USER": "mida", "POSTGRES_DB": "mida",
        "POSTGRES_PASSWORD": PASSWORD}, root=tmp_path))
    event = record(target, action="migrate", now=T0, outcome="ok", break_glass="INC-1")
    (name,) = audit_files(target)
    text = (target.settings.backup_dir / "pgtest" / name).read_text()
    assert "db.internal" in event["database"]
    for haystack in (text, json.dumps(event)):
        assert PASSWORD not in haystack
        assert "p@ss" not in haystack
        assert "p%40ss" not in haystack


def test_unreadable_event_is_reported_not_fatal(tmp_path):
    target = dev_target(tmp_path)
    record(target, action="migrate", now=T0, outcome="ok")
    broken = f"20990101T000000000000Z-000000{AUDIT_SUFFIX}"
    (target.settings.backup_dir / "dev" / broken).write_text("{not json")
    events = read_events(target)
    assert events[0] == {"action": "unreadable", "object": broken}
    assert events[1]["action"] == "migrate"


def test_audit_and_backups_do_not_mix(tmp_path):
    target = dev_target(tmp_path)
    record(target, action="migrate", now=T0, outcome="ok")
    assert list_backups(target) == []
    assert len(read_events(target)) == 1


def test_no_events_yet(tmp_path):
    assert read_events(dev_target(tmp_path)) == []


def test_an_object_that_is_not_an_event_is_skipped_with_a_warning_naming_it(tmp_path):
    target = dev_target(tmp_path)
    record(target, action="migrate", now=T0, outcome="succeeded")
    folder = target.settings.backup_dir / target.env
    (folder / f"29990101T000000000000Z-aaaaaa{AUDIT_SUFFIX}").write_text("[1, 2]")
    (folder / f"29990101T000000000001Z-bbbbbb{AUDIT_SUFFIX}").write_text('"just a string"')
    warnings = []
    events = read_events(target, warnings.append)
    assert [e["action"] for e in events] == ["migrate"]
    assert len(warnings) == 2 and "29990101T000000000000Z-aaaaaa" in warnings[1]
    assert "holds a JSON list, not an event" in warnings[1]


def test_printable_escapes_control_characters_but_keeps_newlines_and_tabs():
    from app.ops.printable import printable
    assert printable("a\x1b[2Jb\x07\r\x9b\u202ec\n\td") == "a\\x1b[2Jb\\x07\\x0d\\x9b\\u202ec\n\td"
    assert printable(None) == "None" and printable("plain é ü") == "plain é ü"
