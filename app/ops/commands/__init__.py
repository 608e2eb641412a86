"""The workflows, one module per task: they orchestrate, nothing below them does.

`release` (migrate, rollback, stamp), `restore`, `drills` (restore tests, rehearsals), `prune`,
`status`, `health` (check), `key_health`, `rekey`, `evidence` and `evidence_html` (report),
`backup_run` (the backup a run takes), `watch/` (the watch after a change). What every locked,
audited run shares is `run_scaffold`; what a run reads once for its guards is `run_facts`.
They call down: guards (pure), the backup methods, the catalog, the adapters; never up.
"""
