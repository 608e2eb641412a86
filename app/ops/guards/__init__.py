"""Pure policy before a change: `preflight` (the window, risky revisions, data a rollback drops,
staging first, free disk, will it fit), `window` (MAINTENANCE_WINDOW), `encryption_policy`
(BACKUP_ENCRYPTION), `confirmation` (a typed confirmation). They are handed the run's facts
(app/ops/commands/run_facts.py) and fetch nothing; they import no catalog, method or workflow.
"""
