"""The package's layering, read from the module-level imports of every module: the data flow
data -> models -> losses (clustering) -> training -> (inference, validation) -> evaluation -> stages ->
tools / main, no cycle, no upward import, and training/ never importing models/."""

import ast
import os

import pytest

from conftest import REPO

PACKAGE = os.path.join(REPO, "personvit_jax")
# Layer of each top-level part; a module may import only its own layer or lower ones.
LAYERS = {
    "trees": 0, "files": 0, "config_args": 0, "cli": 0, "workdir": 0, "linalg": 0,
    "data": 1, "synthetic": 1, "datasets": 1,
    "models": 2,
    "losses": 3, "clustering": 3,
    "training": 4,
    "inference": 5, "validation": 5, "reid_state": 5,
    "evaluation": 6,
    "stages": 7,
    "tools": 8,
    "main": 9,
}


def _modules() -> dict[str, str]:
    out = {}
    for root, _, names in os.walk(PACKAGE):
        for n in names:
            if n.endswith(".py"):
                path = os.path.join(root, n)
                rel = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
                out[rel[:-len(".__init__")] if rel.endswith(".__init__") else rel] = path
    return out


def _module_level_imports(path: str) -> set[str]:
    """personvit_jax modules imported at module level (not inside functions)."""
    tree = ast.parse(open(path).read())
    found = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("personvit_jax")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("personvit_jax"):
            for a in node.names:  # `from personvit_jax import files` names a module
                sub = f"{node.module}.{a.name}"
                found.add(sub if sub in MODULES else node.module)
    return found


MODULES = _modules()
GRAPH = {m: _module_level_imports(p) for m, p in MODULES.items()}


def _part(module: str) -> str:
    return module.split(".")[1] if module != "personvit_jax" else ""


def test_every_module_has_a_layer():
    assert {_part(m) for m in MODULES} - {""} <= set(LAYERS)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != "personvit_jax"))
def test_no_upward_import(module):
    mine = LAYERS[_part(module)]
    upward = [d for d in GRAPH[module] if _part(d) and LAYERS[_part(d)] > mine]
    assert not upward, f"{module} (layer {mine}) imports {upward}"
    if _part(module) == "training":
        assert not [d for d in GRAPH[module] if _part(d) == "models"]


def test_no_import_cycle():
    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        for d in GRAPH.get(m, ()):
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack + [m, d]))
            if state.get(d) is None:
                visit(d, stack + [m])
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m, [])


def _all_imports(path: str) -> set[str]:
    """personvit_jax modules a file imports anywhere (function bodies included), as written."""
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("personvit_jax")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("personvit_jax"):
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _part(m) == "data"))
def test_data_never_imports_the_generator(module):
    """The generator writes the layouts data/ reads; building the synthetic set on first use is
    datasets.py's job, so data/ imports synthetic/ nowhere, not even lazily."""
    assert not [d for d in _all_imports(MODULES[module]) if _part(d) == "synthetic"]


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.count(".") == 2))
def test_no_module_imports_its_own_package_init(module):
    """`from personvit_jax.evaluation import ranking` inside evaluation/ goes through the
    package's __init__, which imports that very module: import the submodule itself (an
    __init__ that imports none of its modules is harmless)."""
    package = module.rsplit(".", 1)[0]
    if not [d for d in GRAPH[package] if d.startswith(package + ".")]:
        return
    tree = ast.parse(open(MODULES[module]).read())
    own = [n.lineno for n in tree.body if isinstance(n, ast.ImportFrom) and n.module == package]
    assert not own, f"{module}: line(s) {own} import from {package}'s __init__"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _part(m) == "stages"))
def test_stages_do_not_import_each_other(module):
    """What two stages share lives below them (e.g. reid_state: finetune and usl)."""
    others = [d for d in GRAPH[module] if _part(d) == "stages" and d != module
              and d != "personvit_jax.stages"]
    assert not others, f"{module} imports {others}"
