"""What the backup store holds, read and written the same way by every workflow: `manifest`
(what a backup is), `backups` (list, find, delete, a verify's outcome), `dates` (the newest, a
clock that lies), `records` (the JSON records under one naming), `audit` and `audit_chain`
(the audit trail and its hash chain), `drill_records`, `restore_intent` (the record a restore
writes before its swap). It imports adapters and primitives only, never a method.
"""
