"""Reading revision files the way a reviewer would: risky operations and empty downgrades.

Parses each file with `ast` (never imports or runs it) and looks at the `op.*` / `batch_op.*`
calls in upgrade(). A finding is a warning with the safer way, not a refusal; a downgrade()
that does nothing is what the production guard refuses.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Finding:
    revision: str
    message: str

    def __str__(self) -> str:
        return f"{self.revision}: {self.message}"


def _function(tree: ast.Module, name: str) -> ast.FunctionDef | None:
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return node
    return None


def _does_nothing(func: ast.FunctionDef | None) -> bool:
    if func is None:
        return True
    for stmt in func.body:
        if isinstance(stmt, ast.Pass):
            continue
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
            continue  # a docstring
        return False
    return True


def downgrade_does_nothing(path: str) -> bool:
    return _does_nothing(_function(ast.parse(Path(path).read_text()), "downgrade"))


def _kwarg(call: ast.Call, name: str):
    for keyword in call.keywords:
        if keyword.arg == name:
            return keyword.value
    return None


def _is_false(node) -> bool:
    return isinstance(node, ast.Constant) and node.value is False


def _column_call(call: ast.Call) -> ast.Call | None:
    """The sa.Column(...) passed to add_column, if any."""
    for arg in call.args:
        if isinstance(arg, ast.Call) and getattr(arg.func, "attr", getattr(arg.func, "id", "")) == "Column":
            return arg
    return None


def _table_of(call: ast.Call) -> str | None:
    """The table a create_index/add_column call acts on, when it is written literally."""
    node = _kwarg(call, "table_name") or (call.args[1] if call.func.attr == "create_index"
                                          and len(call.args) > 1 else
                                          call.args[0] if call.args else None)
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _risks_of(call: ast.Call, created: set[str]) -> list[str]:
    name = call.func.attr
    if name in ("create_index", "add_column") and _table_of(call) in created:
        return []  # a table created in this very revision is empty and unused: no risk
    if name == "drop_table":
        return ["drops a table: the data is gone; deploy code that stops using it first, and "
                "keep the backup until you are sure"]
    if name == "drop_column":
        return ["drops a column: the data is gone; stop reading it in a release before, then drop"]
    if name == "add_column":
        column = _column_call(call)
        if column is not None and _is_false(_kwarg(column, "nullable")) and \
                _kwarg(column, "server_default") is None:
            return ["adds a NOT NULL column without a server_default: it fails on a table with "
                    "rows; add it nullable, backfill, then set NOT NULL"]
    if name == "create_index":
        concurrent = _kwarg(call, "postgresql_concurrently")
        if not (isinstance(concurrent, ast.Constant) and concurrent.value is True):
            return ["creates an index without CONCURRENTLY: writes to the table block while it "
                    "builds; use postgresql_concurrently=True inside op.get_context()."
                    "autocommit_block()"]
    if name == "alter_column":
        risks = []
        if _kwarg(call, "type_") is not None:
            risks.append("changes a column's type: most type changes rewrite the table under an "
                         "exclusive lock; add a new column, backfill, and switch instead")
        if _kwarg(call, "new_column_name") is not None:
            risks.append("renames a column: running code that uses the old name breaks; add, "
                         "copy, and drop in separate releases")
        return risks
    if name == "rename_table":
        return ["renames a table: running code that uses the old name breaks; use a view or a "
                "two-step release"]
    return []


def risky_operations(path: str, revision: str) -> list[Finding]:
    upgrade = _function(ast.parse(Path(path).read_text()), "upgrade")
    if upgrade is None:
        return []
    calls = [node for node in ast.walk(upgrade)
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)]
    created = {c.args[0].value for c in calls if c.func.attr == "create_table" and c.args
               and isinstance(c.args[0], ast.Constant)}
    return [Finding(revision, risk) for call in calls for risk in _risks_of(call, created)]


def data_dropped_by_downgrade(path: str, revision: str) -> list[Finding]:
    """What a rollback through this revision deletes: the tables and columns its downgrade()
    drops (a rollback to base drops every table)."""
    downgrade = _function(ast.parse(Path(path).read_text()), "downgrade")
    if downgrade is None:
        return []
    found = []
    for call in ast.walk(downgrade):
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
                and call.func.attr in ("drop_table", "drop_column")):
            continue
        names = [a.value for a in call.args if isinstance(a, ast.Constant)
                 and isinstance(a.value, str)]
        what = "table" if call.func.attr == "drop_table" else "column"
        found.append(Finding(revision, f"drops {what} {'.'.join(names) or '(computed name)'}"))
    return found
