"""End to end with BACKUP_METHOD=pgbackrest: `invoke` runs as a subprocess against a throwaway
PostgreSQL cluster that archives its WAL to a real local pgBackRest repository (the
`archiving_cluster` fixture, tests/pgbackrest_cluster.py). The tests assert on exit codes,
output, the manifests in the store and the database's schema and rows afterwards.
"""
from __future__ import annotations

import json

import pytest


def test_the_throwaway_cluster_archives_and_has_a_full_backup(archiving_cluster):
    cluster = archiving_cluster
    info = json.loads(cluster.pgbackrest("info", "--output=json").stdout)
    assert [b["type"] for b in info[0]["backup"]] == ["full"]
    segment = cluster.psql("SELECT pg_walfile_name(pg_switch_wal())")
    archived = cluster.psql("SELECT last_archived_wal FROM pg_stat_archiver")
    # archive-push runs asynchronously to the switch: poll the archiver's own record
    for _ in range(200):
        if archived >= segment:
            break
        archived = cluster.psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")
    assert archived >= segment
    assert cluster.psql("SHOW fsync") == "off"
    assert cluster.data.stat().st_uid != 0 and cluster.repo.stat().st_uid != 0
