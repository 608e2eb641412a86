"""app.ops.catalog.audit_chain: each event names its predecessor by name and SHA-256; the walk tells a
removed or changed event from two that were written at once."""
from __future__ import annotations

import json
import shutil
from datetime import timedelta

from app.ops.catalog.audit import record
from app.ops.catalog.audit_chain import AUDIT_SUFFIX, events_with_hashes, sha256_of, walk
from helpers import T0, dev_target



def names(target) -> list[str]:
    return sorted(target.storage.list(AUDIT_SUFFIX))


def chain_of(target, n: int) -> list[str]:
    for i in range(n):
        record(target, action="migrate", now=T0 + timedelta(minutes=i), outcome="succeeded")
    return names(target)


def test_each_event_names_the_previous_by_name_and_hash(tmp_path):
    target = dev_target(tmp_path)
    first, second, third = chain_of(target, 3)
    folder = target.settings.backup_dir / "dev"
    events = {n: json.loads((folder / n).read_bytes()) for n in (first, second, third)}
    assert events[first]["previous"] is None
    assert events[second]["previous"] == {"name": first,
                                          "sha256": sha256_of((folder / first).read_bytes())}
    assert events[third]["previous"]["name"] == second
    report = walk(target.storage)
    assert report.intact and report.problems == [] and report.events == 3
    assert report.newest["name"] == third
    shown = events_with_hashes(target.storage)
    assert [e["object"] for e in shown] == [third, second, first]
    assert shown[0]["sha256"] == sha256_of((folder / third).read_bytes())
    assert shown[0]["previous"]["name"] == second


def test_a_removed_event_is_removed_and_the_next_event_links_past_it(tmp_path):
    target = dev_target(tmp_path)
    first, second, third = chain_of(target, 3)
    (target.settings.backup_dir / "dev" / second).unlink()
    report = walk(target.storage)
    assert not report.intact
    assert [p["kind"] for p in report.problems] == ["removed"]
    assert second in report.problems[0]["detail"] and third in report.problems[0]["detail"]
    # The next event names the chain's newest end, not the older event left without successor.
    record(target, action="stamp", now=T0 + timedelta(hours=1), outcome="succeeded")
    newest = names(target)[-1]
    assert json.loads((target.settings.backup_dir / "dev" / newest).read_bytes()
                      )["previous"]["name"] == third


def test_an_edited_event_is_changed(tmp_path):
    target = dev_target(tmp_path)
    first, second, third = chain_of(target, 3)
    path = target.settings.backup_dir / "dev" / second
    path.write_bytes(path.read_bytes().replace(b'"succeeded"', b'"failed"'))
    report = walk(target.storage)
    assert not report.intact
    assert [p["kind"] for p in report.problems] == ["changed"]
    assert second in report.problems[0]["detail"]


def test_two_events_naming_one_predecessor_are_concurrent_not_a_break(tmp_path):
    target = dev_target(tmp_path)
    (first,) = chain_of(target, 1)
    # Two stores in the same state, one event written to each: what two runs writing at
    # once produce. Then both events in one store.
    other = tmp_path / "other"
    shutil.copytree(tmp_path / "backups", other / "backups")
    other_target = dev_target(other)
    record(target, action="migrate", now=T0 + timedelta(minutes=5), outcome="succeeded")
    record(other_target, action="rekey", now=T0 + timedelta(minutes=5), outcome="succeeded")
    (theirs,) = set(names(other_target)) - {first}
    shutil.copy2(other / "backups" / "dev" / theirs, tmp_path / "backups" / "dev" / theirs)
    report = walk(target.storage)
    assert report.intact
    assert [p["kind"] for p in report.problems] == ["concurrent"]
    assert first in report.problems[0]["detail"] and theirs in report.problems[0]["detail"]


def test_events_before_the_chain_are_unchained_not_problems(tmp_path):
    target = dev_target(tmp_path)
    folder = target.settings.backup_dir / "dev"
    folder.mkdir(parents=True)
    old = "20250101T000000000000Z-abcdef" + AUDIT_SUFFIX
    (folder / old).write_text(json.dumps({"action": "migrate", "outcome": "succeeded"}) + "\n")
    chain_of(target, 2)
    report = walk(target.storage)
    assert report.intact and report.problems == []
    assert report.unchained == 1 and report.events == 3
    assert json.loads((folder / names(target)[1]).read_bytes())["previous"]["name"] == old
