"""A store someone else wrote to (issue 18): an audit object holding a JSON array, escape
sequences in an audit event's fields (a manifest's shown fields are refused when read). `invoke audit`, `check`,
`backups` and `status` run as subprocesses; what they print holds no raw control character,
what is not an event is skipped with a warning naming it, and the store is left as it was.
"""
from __future__ import annotations

import json

from helpers import FIRST, HEAD, audit_events, dev_db, ok, shown

# Clear the screen, move the cursor home, retitle the window, ring the bell, overwrite the line.
HOSTILE = "\x1b[2J\x1b[H\x1b]0;owned\x07ok\rall fine\u202e"


def raw_controls(text: str) -> list[str]:
    return sorted({c for c in text if (ord(c) < 32 and c not in "\n\t") or 0x7f <= ord(c) < 0xa0
                   or c == "\u202e"})


def test_hostile_audit_objects_and_fields_are_skipped_or_shown_escaped(project):
    ok(project.run("migrate"))
    ok(project.run("backup", "--label=nightly"))
    store = project.store("dev")
    events = audit_events(store)
    (store / "29991231T235959000000Z-aaaaaa.audit.json").write_text("[1, 2, 3]\n")
    forged = dict(events[-1], action="migrate", outcome=f"succeeded{HOSTILE}",
                  user=f"root{HOSTILE}", at="2999-12-31T23:59:58Z")
    (store / "29991231T235958000000Z-bbbbbb.audit.json").write_text(json.dumps(forged))
    before = {p.name: p.read_bytes() for p in store.iterdir()}

    audit = ok(project.run("audit"))
    assert raw_controls(audit.stdout + audit.stderr) == [], shown(audit)
    assert ("WARNING: audit object 29991231T235959000000Z-aaaaaa.audit.json holds a JSON list, "
            "not an event: skipped") in audit.stderr
    rows = audit.stdout.splitlines()[2:]
    assert len(rows) == len(events) + 1  # every real event, the forged one, not the array
    assert "root\\x1b[2J\\x1b[H\\x1b]0;owned\\x07ok\\x0dall fine\\u202e@" in rows[0]
    listed = json.loads(ok(project.run("audit", "--json")).stdout)
    assert [e["outcome"] for e in listed][0] == forged["outcome"]  # JSON keeps the data, escaped
    assert len(listed) == len(events) + 1

    for task in (["check"], ["backups"], ["status"]):
        result = project.run(*task)
        assert result.returncode in (0, 1), shown(result)
        assert "Traceback" not in result.stderr
        assert raw_controls(result.stdout + result.stderr) == [], shown(result)
    check = project.run("check")
    assert "\\x1b[2J" in check.stdout  # the forged outcome is named, escaped: a WARNING
    assert check.returncode == 1 and check.stdout.startswith("WARNING: ")

    assert {p.name: p.read_bytes() for p in store.iterdir()} == before  # read only
    assert dev_db(project).is_file() and FIRST != HEAD
