"""The house's layering (docs/architecture.md): no import circles, each layer importing only those below it,
no function-local import of a cleanpipe module, short functions, and --help generated from the registries."""

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cleanpipe"

# Lowest first; a module may import from its own layer and those below (docs/architecture.md).
LAYERS = [
    ("leaves", ["errors", "lazy", "validation", "files", "progress", "metrics", "plots"]),
    ("building blocks", ["labels", "models", "engine", "executors"]),
    ("data", ["data", "saved_model"]),
    ("recipes", ["recipes"]),
    ("cores", ["noise", "detect", "robust", "audit"]),
    ("run directory", ["rundir"]),
    ("stages", ["stages"]),
    ("command line", ["cli", "__main__"]),
]
RANK = {name: rank for rank, (_, names) in enumerate(LAYERS) for name in names}


def _modules() -> dict[str, Path]:
    out = {}
    for p in PACKAGE.rglob("*.py"):
        parts = p.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if p.name == "__init__.py" else parts)] = p
    return out


MODULES = _modules()


def _file_of(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> list[tuple[str, bool]]:
    """(imported cleanpipe module, inside a function) for every import of ``module``, and every
    ``lazy_module("cleanpipe...")``: a deferred import is still an edge of the graph."""
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    local = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
             for n in ast.walk(f)}
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "lazy_module" and node.args \
                and isinstance(node.args[0], ast.Constant):
            names = [node.args[0].value]
        for name in names:
            target = _file_of(name) if name.startswith("cleanpipe") else None
            if target and target != module:
                found.append((target, id(node) in local))
    return found


GRAPH = {m: sorted({t for t, _ in _imports(m)}) for m in MODULES}


def _layer(module: str) -> int:
    parts = module.split(".")
    return RANK[parts[1]] if len(parts) > 1 else 0  # cleanpipe/__init__ holds only the version: a leaf


def test_no_function_imports_a_cleanpipe_module():
    local = [(m, t) for m in MODULES for t, inside in _imports(m) if inside]
    assert local == []


def test_no_import_circles():
    index, low, stack, on, circles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in GRAPH:
        if v not in index:
            visit(v)
    # a package's __init__ importing its own modules, which import each other, is no circle of files
    assert circles == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_each_module_imports_only_its_layer_and_those_below(module):
    above = [t for t in GRAPH[module] if _layer(t) > _layer(module)]
    assert above == [], f"{module} ({LAYERS[_layer(module)][0]}) imports {above}"


def test_every_module_has_a_layer():
    assert all(len(m.split(".")) == 1 or m.split(".")[1] in RANK for m in MODULES)


def test_functions_are_short():
    long = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = node.end_lineno - node.lineno + 1
                first = node.body[0]
                if isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None), ast.Constant) \
                        and isinstance(first.value.value, str):
                    size -= first.end_lineno - first.lineno + 1
                if size > (60 if module == "cleanpipe.cli" else 100):
                    long.append(f"{module}.{node.name}: {size}")
    assert long == []


def _help(cli, *command) -> str:
    code, out, err = cli(*command, "--help")
    assert code == 0, err
    return re.sub(r"[\s│]+", " ", out)  # rich wraps the help into a box


def test_help_lists_come_from_the_registries(cli):
    from cleanpipe.data import SOURCES
    from cleanpipe.data.unlabeled import KINDS
    from cleanpipe.detect.confident import ALIASES, FILTERS, RANK_BY
    from cleanpipe.engine import DEVICES
    from cleanpipe.executors import EXECUTORS
    from cleanpipe.models import MODELS
    from cleanpipe.noise import ALL_KINDS
    from cleanpipe.robust import METHODS

    crossval, run, prune = _help(cli, "crossval"), _help(cli, "run"), _help(cli, "prune")
    for text in (crossval, run):
        assert all(name in text for name in SOURCES) and all(name in text for name in EXECUTORS)
    assert all(name in crossval for name in MODELS) and all(name in _help(cli, "train") for name in METHODS)
    assert all(name in prune for name in (*FILTERS, *ALIASES, *RANK_BY))
    assert all(name in _help(cli, "noise") for name in ALL_KINDS)
    assert all(name in _help(cli, "predict") for name in KINDS)
    assert " | ".join(DEVICES) in crossval
