"""How a pgBackRest restore point, and the stanza behind it, read in the tasks' output: the line
after one is taken, its lines in a restore's summary, its encryption, and the status block.
"""
from __future__ import annotations


def summary(manifest) -> str:
    """The line `invoke backup` (and a migrate's or rollback's backup) prints."""
    rp = manifest.pgbackrest
    return (f"Backup {manifest.id}: restore point {rp['restore_point']} at LSN {rp['lsn']} "
            f"(timeline {rp['timeline']}), WAL segment {rp['segment']} archived, resting on "
            f"pgBackRest backup {rp['backup_label']} of stanza {rp['stanza']}; revision "
            f"{manifest.revision or 'base'}, taken in {manifest.duration_seconds:.2f} s")


def describe(manifest) -> list[tuple[str, str]]:
    """What `invoke restore` shows of the backup it restores, besides its id and revision."""
    rp = manifest.pgbackrest
    return [("restore point", f"{rp['restore_point']} at LSN {rp['lsn']}, a point-in-time "
                              "recovery of the whole cluster")]


def status_line(facts: dict) -> str:
    """The stanza, the newest backups, the archive and the archiver (`status_facts`)."""
    if "error" in facts:
        return f"stanza {facts['stanza']}: ERROR {facts['error']}"
    full, incr, archive, archiver = (facts.get("newest_full"), facts.get("newest_incr"),
                                     facts.get("archive") or {}, facts.get("archiver") or {})
    return (f"stanza {facts['stanza']} ({facts.get('repo_status')}), pgBackRest "
            f"{facts.get('version')}, newest full "
            f"{full['label'] if full else 'none'}, newest incr {incr['label'] if incr else 'none'}, "
            f"archive {archive.get('min')}..{archive.get('max')}, archiver "
            + ("FAILING" if archiver.get("failing") else
               f"{archiver.get('segments_behind')} segment(s) behind")
            + (f", .ready backlog unknown ({archiver['ready_unknown']})"
               if archiver.get("ready_unknown") else
               f", {archiver.get('ready')} segment(s) ready to archive"))
