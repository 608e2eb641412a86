"""The commands that undo a change the watch found wrong, ready to paste, each with what it
costs. The watch prints them; it never runs them."""
from __future__ import annotations


def undo_commands(env: str, change: dict | None) -> list[tuple[str, str]]:
    """[(command, cost)] for a change {action, from_revision, to_revision, backup_id,
    restore_point}; none when the watch follows no migrate or rollback (an application deploy:
    roll that back instead)."""
    if not change or change.get("action") not in ("migrate", "rollback"):
        return []
    before = change.get("from_revision") or "base"
    after = change.get("to_revision") or "base"
    undo = []
    if change["action"] == "migrate":
        undo.append((f"invoke rollback --env={env} --to={before}",
                     f"runs the downgrades from {after} back to {before}, after a verified "
                     "backup of its own; the application's rows stay, except what those "
                     "downgrades drop"))
    else:
        undo.append((f"invoke migrate --env={env} --revision={before}",
                     f"runs the upgrades from {after} back to {before} again, after a verified "
                     "backup of its own"))
    backup = change.get("backup_id")
    if backup:
        cost = ("rewinds the whole cluster to the restore point taken before the change" if
                change.get("restore_point") else
                "replaces the database with the backup taken before the change")
        undo.append((f"invoke restore --env={env} --backup={backup} --yes",
                     f"{cost}: writes made since are not in it, but kept in a safety backup "
                     "the restore takes first"))
    return undo
