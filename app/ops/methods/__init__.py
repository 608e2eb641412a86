"""The backup methods (BACKUP_METHOD), one object each, chosen once: `dump/` (our own artifact
in the store, read back whole) and `pgbackrest/` (a restore point in pgBackRest's repository).
`registry` holds the objects (`method_of(manifest)`, `verify_backup`); `contract` what they are
handed and give back (`RestorePlan`, `RestoreResult`). Each method says everything that is its
own: how it takes, verifies, restores and describes a backup, and how it rests at rest. They
import the catalog and the adapters, never a guard or a workflow.
"""
