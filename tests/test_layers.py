"""The house's layers: imports run one way, down (README, Layout), counting imports made inside
functions too, as ../shared/tools/import_circles.py does.

tasks.py -> target (the composition root) -> commands (workflows) -> guards (pure policy) ->
methods -> catalog -> adapters (databases, storage, schema) -> primitives. A module may import
its own layer or any layer below it, never one above; on top of that, the issue's ten rules are
pinned one by one, so a broken rule is named in the failure.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ["primitives", "adapters", "catalog", "methods", "guards", "commands", "target", "tasks"]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    if module == "tasks":
        return "tasks"
    if module == "app.ops.target":
        return "target"
    for folder, layer in (("commands", "commands"), ("guards", "guards"), ("methods", "methods"),
                          ("catalog", "catalog"), ("databases", "adapters"),
                          ("storage", "adapters"), ("schema", "adapters")):
        if module == f"app.ops.{folder}" or module.startswith(f"app.ops.{folder}."):
            return layer
    return "primitives"


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[:len(parts) - (node.level - 1)] if node.level > 1 else parts
                base = ".".join(parts + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    files = [*sorted((ROOT / "app").rglob("*.py")), ROOT / "tasks.py"]
    known = {module_name(path) for path in files}
    # A package's own __init__ only hands names on: importing it is importing what it names.
    known -= {"app", "app.ops"}
    return {module_name(path): imports_of(path, module_name(path), known) for path in files}


def edges(source: str, target: str) -> list[str]:
    return sorted(f"{a} -> {b}" for a, deps in graph().items() if layer_of(a) == source
                  for b in deps if layer_of(b) == target)


def test_every_import_goes_down_or_sideways():
    upward = sorted(f"{a} ({layer_of(a)}) -> {b} ({layer_of(b)})" for a, deps in graph().items()
                    for b in deps if LAYERS.index(layer_of(b)) > LAYERS.index(layer_of(a)))
    assert upward == []


def _adapter_edges(kind: str) -> list[str]:
    return [edge for edge in edges("adapters", "commands") + edges("adapters", "catalog")
            + edges("adapters", "methods") if edge.startswith(kind)]


@pytest.mark.parametrize("kind", ["app.ops.databases", "app.ops.databases.postgres.dumper",
                                  "app.ops.databases.sqlite.dumper", "app.ops.storage",
                                  "app.ops.databases.lock", "app.ops.databases.connection",
                                  "app.ops.schema"])
def test_adapters_import_no_workflow_catalog_or_method(kind):
    assert _adapter_edges(kind) == []


def test_the_catalog_imports_no_method():
    assert edges("catalog", "methods") == []


def test_guards_import_no_catalog_target_or_workflow():
    assert edges("guards", "catalog") + edges("guards", "target") + edges("guards", "commands") == []


def test_methods_import_no_guard_or_workflow():
    assert edges("methods", "guards") + edges("methods", "commands") == []


def test_primitives_import_no_adapter():
    assert [edge for layer in LAYERS[1:] for edge in edges("primitives", layer)] == []


def test_the_layer_map_knows_every_package():
    """A new folder under app/ops must be given its layer here, not fall into primitives."""
    folders = {p.name for p in (ROOT / "app/ops").iterdir() if p.is_dir() and p.name != "templates"
               and p.name != "__pycache__"}
    assert folders == {"commands", "guards", "methods", "catalog", "databases", "storage", "schema"}
