"""The import rules of the package (docs/architecture.md, "The rooms"), read from the source
with ``ast``, so that a break fails here rather than in a reader's head:

1. The library (rnnkit/*.py) imports the standard library, torch and rnnkit's own compiled
   operators, and of rnnkit only the library: never training, lessons, bench or the CLI.
2. Imports run one way: cli -> lessons -> train -> library, and cli -> bench -> library. Nothing
   imports the CLI (rnnkit.cli, rnnkit.__main__). There are no import cycles, counting the
   imports inside functions too.
3. rnnkit/reference.py imports torch only (and ``__future__``, ``typing``).
4. An import inside a function is of a heavy optional dependency (LAZY_OK); in the CLI also of
   torch and of rnnkit's modules that load it, so that ``rnnkit --help`` answers at once.

Each rule is also shown to catch a break planted in a copy of the package.
"""

from __future__ import annotations

import ast
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "rnnkit"

#: What may be imported inside a function anywhere: heavy and optional, or slow to load and
#: needed by one path only (torch.compile's machinery, for bench's reference-compile; the export
#: extra's onnx packages, for rnnkit.onnx).
LAZY_OK = ("matplotlib", "torch._dynamo", "onnx", "onnxscript", "onnxruntime")

#: The rooms each room may import from (besides its own).
MAY_IMPORT = {
    "library": {"library"},
    "train": {"library"},
    "bench": {"library"},
    "lessons": {"library", "train"},
    "cli": {"library", "train", "bench", "lessons"},
}

REFERENCE_OK = ("torch", "__future__", "typing")


@dataclass(frozen=True)
class Import:
    importer: str  # dotted module that imports
    target: str  # dotted module imported (a submodule where `from pkg import sub` names one)
    line: int
    in_function: bool


def modules(root: Path) -> dict[str, Path]:
    """Every module of the package at ``root``, by dotted name."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = [root.name, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports_of(name: str, path: Path, known: set[str]) -> list[Import]:
    """The import statements of one module, relative ones resolved."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend(Import(name, a.name, child.lineno, in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package[:len(package) - (child.level - 1)]
                    module = ".".join(base + ([child.module] if child.module else []))
                else:
                    module = child.module or ""
                for a in child.names:
                    sub = f"{module}.{a.name}"
                    found.append(Import(name, sub if sub in known else module, child.lineno,
                                        in_function))
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                      ast.Lambda))
            visit(child, inner)

    visit(ast.parse(path.read_text(encoding="utf-8")), False)
    return found


def room(module: str, package: str) -> str:
    """library, train, lessons, bench or cli."""
    for sub in ("train", "lessons", "bench", "cli"):
        if module == f"{package}.{sub}" or module.startswith(f"{package}.{sub}."):
            return sub
    return "cli" if module == f"{package}.__main__" else "library"


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (or a self-import)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in edges.get(v, ()):
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return found


def violations(root: Path) -> list[str]:
    """Every break of the rules in the package at ``root``, one line each."""
    package = root.name
    mods = modules(root)
    known = set(mods)
    stdlib = set(sys.stdlib_module_names)
    problems: list[str] = []
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        where = f"{path.relative_to(root.parent)}"
        for imp in imports_of(name, path, known):
            top = imp.target.split(".")[0]
            at = f"{where}:{imp.line}: imports {imp.target}"
            internal = top == package
            mine, theirs = room(name, package), room(imp.target, package) if internal else None
            if internal and imp.target in known:
                edges[name].add(imp.target)
            if name == f"{package}.reference" and top not in REFERENCE_OK:
                problems.append(f"{at}: reference.py imports torch only")
            if internal and theirs == "cli" and mine != "cli":
                problems.append(f"{at}: nothing imports the CLI")
            elif internal and theirs != mine and theirs not in MAY_IMPORT[mine]:
                problems.append(f"{at}: the {mine} room may not import the {theirs} room")
            lazy_ok = imp.in_function and any(
                imp.target == ok or imp.target.startswith(ok + ".") for ok in LAZY_OK)
            if (mine == "library" and not internal and top not in stdlib and top != "torch"
                    and not lazy_ok):
                problems.append(f"{at}: the library imports torch and the standard library only "
                                f"(and {', '.join(LAZY_OK)} inside functions)")
            if imp.in_function and not (lazy_ok or (mine == "cli" and top in ("torch", package))):
                problems.append(f"{at}: inside a function (only {', '.join(LAZY_OK)} may be; "
                                "in the CLI also torch and rnnkit's modules)")
    for component in cycles(edges):
        problems.append(f"import cycle: {' <-> '.join(component)}")
    problems += lazy_names(root, mods)
    return problems


def lazy_names(root: Path, mods: dict[str, Path]) -> list[str]:
    """rnnkit/__init__.py loads its public names with importlib: they must name library modules."""
    package = root.name
    tree = ast.parse((root / "__init__.py").read_text(encoding="utf-8"))
    named: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id == "_LAZY" and isinstance(node.value, ast.Dict):
                named += [v.value for v in node.value.values if isinstance(v, ast.Constant)]
            if node.targets[0].id == "_SUBMODULES" and isinstance(node.value, ast.Set):
                named += [v.value for v in node.value.elts if isinstance(v, ast.Constant)]
    return [f"{package}/__init__.py: the public name module {n!r} is not a library module"
            for n in named
            if f"{package}.{n}" not in mods or room(f"{package}.{n}", package) != "library"]


# ---- the package as it is ------------------------------------------------------------------------
def test_the_package_keeps_the_import_rules():
    assert violations(PACKAGE) == []


def test_the_walk_sees_the_rooms():
    """The rules above are only as good as the walk: it finds every room and its imports."""
    mods = modules(PACKAGE)
    rooms = {room(m, "rnnkit") for m in mods}
    assert rooms == set(MAY_IMPORT)
    known = set(mods)
    trainer = imports_of("rnnkit.train.trainer", mods["rnnkit.train.trainer"], known)
    assert {"rnnkit.train.registry", "rnnkit", "torch"} <= {i.target for i in trainer}
    lazy = imports_of("rnnkit.cli.library", mods["rnnkit.cli.library"], known)
    assert any(i.in_function and i.target == "torch" for i in lazy)


# ---- each rule catches a planted break -----------------------------------------------------------
PLANTED = [
    ("nn.py", "from .train import trainer\n", "the library room may not import the train room"),
    ("check.py", "import tqdm\n", "the library imports torch and the standard library only"),
    ("reference.py", "from . import functional\n", "reference.py imports torch only"),
    ("reference.py", "import numpy\n", "reference.py imports torch only"),
    ("train/runs.py", "from ..cli import main\n", "nothing imports the CLI"),
    ("bench/run.py", "from ..train import config\n", "the bench room may not import the train"),
    ("train/models.py", "def later():\n    from . import registry\n", "import cycle: "),
    ("train/models.py", "def later():\n    import json\n", "inside a function"),
    ("__init__.py", "_SUBMODULES = {'train'}\n", "is not a library module"),
]


@pytest.mark.parametrize("path, line, message", PLANTED, ids=[f"{p}:{m[:24]}" for p, _, m in PLANTED])
def test_a_planted_break_is_caught(tmp_path, path, line, message):
    copy = tmp_path / "rnnkit"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("*.so", "__pycache__", "*.txt"))
    with open(copy / path, "a", encoding="utf-8") as f:
        f.write("\n" + line)
    found = violations(copy)
    assert any(message in v for v in found), found
