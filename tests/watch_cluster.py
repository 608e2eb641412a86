"""The names bench/watch_bench.py imports, until it imports tests/clusters.py itself: the tests
use clusters.py (one builder for every throwaway cluster)."""
from __future__ import annotations

from functools import partial

from clusters import Cluster, Load, build_cluster as _build

build_watch_cluster = partial(_build, "watch-cluster-", statements=True)
remove_watch_cluster = Cluster.remove

__all__ = ["Load", "build_watch_cluster", "remove_watch_cluster"]
