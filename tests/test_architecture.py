"""The layout's rules, checked on the source: every import statement counts, lazy ones inside functions too."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from tests.servers import REPO

PACKAGES = ("teacher_service", "student_client")
WEB_AND_SQL = ("sqlalchemy", "fastapi", "starlette", "uvicorn", "psycopg")


def project_modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    return modules


def imports_of(name: str, path: Path) -> set[str]:
    """Every module an import statement anywhere in the file names (relative imports resolved)."""
    found = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")[: len(name.split(".")) - node.level + is_package]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)  # `from pkg import submodule`
    return found


def graph() -> dict[str, set[str]]:
    """Project module -> the project modules it imports."""
    modules = project_modules()
    edges = {}
    for name, path in modules.items():
        edges[name] = {target for target in imports_of(name, path) if target in modules and target != name}
    return edges


def test_no_import_cycle_among_the_project_modules():
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges[node]):
            if state.get(target) == 1:
                cycles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, [*path, target])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(cycle) for cycle in cycles)


def test_the_student_side_imports_only_the_wire_schemas_of_the_service():
    # `from teacher_service import wire` names the package, then the module: the package alone is not a use.
    allowed = {"teacher_service", "teacher_service.wire"}
    modules = project_modules()
    wrong = {
        name: sorted(t for t in imports_of(name, path) if t.split(".")[0] == "teacher_service" and t not in allowed
                     and (t in modules or t.rsplit(".", 1)[0] not in allowed))
        for name, path in modules.items() if name.startswith("student_client")
    }
    assert {name: targets for name, targets in wrong.items() if targets} == {}


def test_the_launchers_are_imported_by_nothing_else():
    offenders = {
        name: sorted(t for t in targets if t.startswith("teacher_service.launch"))
        for name, targets in graph().items() if not name.startswith("teacher_service.launch")
    }
    assert {name: targets for name, targets in offenders.items() if targets} == {}


def test_the_learning_core_never_imports_the_web_framework_or_the_database():
    """On the source (every import statement of the core and of the project modules it reaches), and
    for real in a fresh interpreter (whatever it pulls in, directly or not, is in sys.modules)."""
    modules, edges = project_modules(), graph()
    learning = sorted(name for name in modules if name.startswith("teacher_service.learning"))
    reached, todo = set(), list(learning)
    while todo:
        name = todo.pop()
        if name not in reached:
            reached.add(name)
            todo.extend(edges[name])
    named = {name: sorted(t for t in imports_of(name, modules[name])
                          if t.split(".")[0] in WEB_AND_SQL or t.startswith("teacher_service.serving"))
             for name in reached}
    assert {name: targets for name, targets in named.items() if targets} == {}

    code = (
        "import importlib, json, sys\n"
        f"for name in {learning!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    loaded = json.loads(out.stdout)
    assert len(learning) >= 10 and "teacher_service.learning.teachers.gradnorm_reinforce" in loaded
    bad = [m for m in loaded if m.split(".")[0] in WEB_AND_SQL or m.startswith("teacher_service.serving")]
    assert bad == []


def test_no_module_shadows_the_standard_library():
    shadowing = [name for name in project_modules() if name.split(".")[-1] in sys.stdlib_module_names]
    assert shadowing == []
