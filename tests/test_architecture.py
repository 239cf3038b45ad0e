"""Layering checks: no import cycle among our modules; `import mansu_audit` stays light.

The import graph is read statically (`ast`), so the test sees every module, also
those whose optional dependencies are not installed. Nodes are the modules of the
package `mansu_audit` and of `methods/` (installed as `mansu_audit.methods`).

Edges, for each `import` / `from ... import` of one of our modules:

* to the module named (`from a.b import c` -> `a.b.c` when that is a module, else
  `a.b`, whose `__init__` must run to provide the name);
* to each package above it that is not also above the importer (importing
  `a.b.c` runs `a/b/__init__`; a package the importer lives in is already
  being imported, so that edge can not start a cycle).

An import counts as *top-level* when it runs at import time: module and class
bodies, including `try`/`if` blocks there, except `if TYPE_CHECKING:`. Imports
inside functions are collected apart (`in_function`): they can not make a cycle at
import time, and the project keeps them for heavy optional dependencies only.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = None

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "mansu_audit"
SOURCES = {PACKAGE: ROOT / "mansu_audit", f"{PACKAGE}.methods": ROOT / "methods"}


def module_files() -> dict[str, Path]:
    """Every module of ours: dotted name -> file (`pkg/__init__.py` is `pkg`)."""
    files: dict[str, Path] = {}
    for prefix, folder in SOURCES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            if "__pycache__" in parts:
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            files[".".join((prefix, *parts))] = path
    return files


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """Yield (node, in_function) for every import statement, skipping TYPE_CHECKING blocks."""
    def walk(node: ast.AST, in_function: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for other in child.orelse:
                    yield from walk(ast.Module(body=[other], type_ignores=[]), in_function)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, in_function
            yield from walk(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))
    yield from walk(tree, False)


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_graph(external: dict[str, set[str]] | None = None) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(top_level, in_function): module -> the modules of ours it imports.

    `external`, when given, is filled with module -> the top-level names of the other
    distributions it imports at top level (`transformers`, `torch`, ...)."""
    files = module_files()
    top: dict[str, set[str]] = {name: set() for name in files}
    lazy: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node, in_function in _imports(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*anchor, *([base] if base else [])])
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    targets.append(full if full in files else base)
            for target in targets:
                if target not in files:
                    if external is not None and not in_function and target and not target.startswith(PACKAGE):
                        external.setdefault(name, set()).add(target.split(".")[0])
                    continue
                mine = set(_parents(name))
                for module in [*(p for p in _parents(target) if p not in mine), target]:
                    if module != name:
                        (lazy if in_function else top)[name].add(module)
    return top, lazy


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One concrete cycle per strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    cycles = []
    for component in components:
        members, start = set(component), min(component)
        # shortest path start -> ... -> start inside the component (breadth first)
        previous: dict[str, str] = {}
        frontier = [start]
        while frontier and start not in previous:
            following = []
            for node in frontier:
                for other in sorted(graph[node] & members):
                    if other not in previous:
                        previous[other] = node
                        following.append(other)
            frontier = following
        path = [start]
        node = previous[start]
        while node != start:
            path.append(node)
            node = previous[node]
        cycles.append([start, *reversed(path[1:]), start])
    return cycles


def test_graph_sees_the_package():
    top, _ = import_graph()
    assert {"mansu_audit", "mansu_audit.certify", "mansu_audit.methods", "mansu_audit.methods.ga"} <= set(top)
    assert "mansu_audit.api" in top["mansu_audit"]
    assert "mansu_audit.methods.base" in top["mansu_audit.methods.ga"]


def test_cycle_finder_reports_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_among_top_level_imports():
    top, _ = import_graph()
    cycles = find_cycles(top)
    assert not cycles, "import cycles among top-level imports:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_nothing_inside_the_package_imports_the_package_root():
    """`from mansu_audit import x` inside the package would tie every module to `__init__` (and its imports)."""
    top, lazy = import_graph()
    offenders = sorted(name for name in top if name != PACKAGE and (PACKAGE in top[name] or PACKAGE in lazy[name]))
    assert not offenders, f"modules importing the package root `{PACKAGE}`: {offenders}"


# Dependencies heavy enough to justify importing one of our modules inside a function:
# importing them costs seconds or pulls a GPU/runtime stack `import mansu_audit` must not load.
HEAVY = {"transformers", "lm_eval", "ray", "gguf", "peft", "bitsandbytes", "datasets", "accelerate",
         "huggingface_hub", "jinja2", "jsonschema", "scipy", "cryptography", "safetensors"}


def _closure(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = {start}, [start]
    while todo:
        for other in graph[todo.pop()]:
            if other not in seen:
                seen.add(other)
                todo.append(other)
    return seen


def _reaches_a_method(importer: str, target: str) -> bool:
    """The core reaches the bundled methods only on demand (through the registry or in a function)."""
    methods = f"{PACKAGE}.methods"
    inside = importer == methods or importer.startswith(methods + ".")
    return not inside and (target == methods or target.startswith(methods + "."))


def test_in_function_imports_of_our_modules_are_needed():
    """An in-function import of our own module stays only where it is needed: moving it to the
    top would make a cycle, the module brings a heavy dependency the importer does not have,
    or it is a bundled method's module imported by the core."""
    external: dict[str, set[str]] = {}
    top, lazy = import_graph(external)

    def heavy(module: str) -> set[str]:
        return {dep for m in _closure(top, module) for dep in external.get(m, ())} & HEAVY

    movable = []
    for name in sorted(lazy):
        for target in sorted(lazy[name]):
            if target in top[name]:  # imported at top level already
                movable.append(f"{name} -> {target} (already imported at top level)")
                continue
            if heavy(target) - heavy(name) or _reaches_a_method(name, target):
                continue
            trial = {k: set(v) for k, v in top.items()}
            trial[name].add(target)
            if not find_cycles(trial):
                movable.append(f"{name} -> {target}")
    assert not movable, "in-function imports of our modules that could be top-level:\n" + "\n".join(movable)


def _optional_modules() -> set[str]:
    if tomllib is None:
        return set()
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = {requirement.split(">")[0].split("=")[0].split("[")[0].strip() for name, deps in extras.items()
             if name != "dev" for requirement in deps}
    return {name.replace("-", "_") for name in names}


def test_import_mansu_audit_does_not_load_optional_dependencies():
    heavy = sorted(_optional_modules() | {"lm_eval", "ray", "gguf", "peft", "bitsandbytes"})
    code = ("import sys, mansu_audit\n"
            f"heavy = {heavy!r}\n"
            "print(sorted(h for h in heavy if h in sys.modules))\n"
            "print(sorted(m for m in sys.modules if m.startswith('mansu_audit.methods.')))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    loaded, methods = done.stdout.splitlines()[-2:]
    assert loaded == "[]", f"`import mansu_audit` loads optional dependencies: {loaded}"
    assert methods == "[]", f"`import mansu_audit` imports method modules: {methods}"
