"""The names bench/pgbackrest_bench.py imports, until it imports tests/clusters.py itself: the
tests use clusters.py (one builder for every throwaway cluster)."""
from __future__ import annotations

from functools import partial

from clusters import PG_BIN, Cluster, build_cluster as _build

build_cluster = partial(_build, "pgbackrest-cluster-", archiving=True)
remove_cluster = Cluster.remove

__all__ = ["PG_BIN", "build_cluster", "remove_cluster"]
