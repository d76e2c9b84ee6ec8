"""The package's layers, checked on every import statement (module level and inside functions).

Lower layers never import higher ones; the simulator (`brainatt.synth`) is imported only by itself, by truth
scoring (`brainatt.truth`), by the kit that is trained and evaluated on its scenes, and by the CLI; and the file
contracts are read and written only through `brainatt.contracts` (no other stage opens HDF5 files, except the
readers of the datasets' own files and the simulator's).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "brainatt"
MODULES = sorted(PACKAGE.rglob("*.py"))

BOTTOM = {"brainatt.errors", "brainatt.io", "brainatt.metrics", "brainatt.images", "brainatt.models.spec"}
MODELS = {*BOTTOM, "brainatt.models"}
# What each part may import from brainatt besides itself; a module belongs to the longest part naming it.
ALLOWED: dict[str, set[str]] = {
    "brainatt": set(),
    "brainatt.errors": set(),
    "brainatt.io": {"brainatt", "brainatt.errors"},  # the version, the error type
    "brainatt.metrics": set(),
    "brainatt.images": set(),
    "brainatt.models.spec": {"brainatt.errors", "brainatt.io"},
    "brainatt.contracts": {"brainatt.io", "brainatt.models.spec"},
    "brainatt.nsd": {"brainatt.io"},
    "brainatt.models": {"brainatt", *BOTTOM},
    "brainatt.models.kit": {"brainatt", *MODELS, "brainatt.synth"},
    "brainatt.models.kit_eval": {*MODELS, "brainatt.synth"},
    "brainatt.prep": {*BOTTOM, "brainatt.contracts", "brainatt.nsd"},
    "brainatt.features": {*MODELS, "brainatt.contracts"},
    "brainatt.encoding": {*MODELS, "brainatt.contracts"},
    "brainatt.mindbridge": {*MODELS, "brainatt.contracts"},
    "brainatt.synth": {*BOTTOM, "brainatt.contracts", "brainatt.nsd", "brainatt.prep"},
    "brainatt.braindive": {*MODELS, "brainatt.contracts", "brainatt.encoding"},
    "brainatt.scuba": {*MODELS, "brainatt.contracts", "brainatt.encoding"},
    "brainatt.truth": {
        *MODELS,
        "brainatt.contracts",
        "brainatt.encoding",
        "brainatt.braindive",
        "brainatt.mindbridge",
        "brainatt.synth",
    },
    "brainatt.viz": {
        *BOTTOM,
        "brainatt.contracts",
        "brainatt.nsd",
        "brainatt.encoding",
        "brainatt.braindive",
        "brainatt.scuba",
    },
    "brainatt.cli": {"brainatt"},  # the top: everything, each stage imported inside its command
    "brainatt.__main__": {"brainatt.cli"},
}
# Who may open HDF5 files directly: the contracts, the readers of NSD's files, the simulator (its own files) and
# truth scoring (the simulator's ground truth).
H5PY = ("brainatt.io", "brainatt.contracts", "brainatt.nsd", "brainatt.synth", "brainatt.truth")


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _part(module: str) -> str:
    return max((p for p in ALLOWED if _within(module, p)), key=len)


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_nodes(node: ast.AST) -> list[ast.AST]:
    """Every node below ``node`` except those under ``if TYPE_CHECKING:`` (imports for annotations only)."""
    nodes = []
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and isinstance(child.test, ast.Name) and child.test.id == "TYPE_CHECKING":
            continue
        nodes += [child, *_runtime_nodes(child)]
    return nodes


def _imports(path: Path) -> set[str]:
    found = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_imports_only_what_its_layer_allows(path: Path) -> None:
    module = _module_name(path)
    part = _part(module)
    imported = {name for name in _imports(path) if _within(name, "brainatt")}
    wrong = sorted(
        name
        for name in imported
        if _part(name) != part
        and not any(_within(name, a) for a in ALLOWED[part] if a != "brainatt")
        and not (name == "brainatt" and "brainatt" in ALLOWED[part])
        and part != "brainatt.cli"
    )
    assert not wrong, f"{module} (layer {part}) imports {wrong}; it may import {sorted(ALLOWED[part])}"
    if "h5py" in _imports(path):
        assert any(_within(module, p) for p in H5PY), f"{module} opens HDF5 itself: read it through brainatt.contracts"


def test_the_layer_rule_catches_an_upward_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from brainatt.synth.world import WorldSpec\nimport h5py\n")
    assert _part("brainatt.encoding.fit") == "brainatt.encoding"
    assert "brainatt.synth.world" in _imports(bad)
    assert not any(_within("brainatt.synth.world", a) for a in ALLOWED["brainatt.encoding"])
    assert not any(_within("brainatt.encoding.fit", p) for p in H5PY)
