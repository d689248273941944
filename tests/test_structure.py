"""The package's shape: no import cycle (lazy imports counted), and tasks named only in tasks/."""

import ast
import re
from pathlib import Path

import mnistlab

PACKAGE = Path(mnistlab.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imported(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Every mnistlab module this module imports, at its top or inside a function."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        if type_checking_only(node):
            return
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("mnistlab"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("mnistlab"):
                for alias in node.names:  # `from . import x` imports the submodule x
                    sub = f"{target}.{alias.name}"
                    out.add(sub if sub in known else target)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    out.discard(name)
    return {m for m in out if m in known}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := walk(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := walk(node)):
            return found
    return None


def test_the_checker_finds_a_cycle_through_a_lazy_import(tmp_path):
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    lazy = tmp_path / "lazy.py"
    lazy.write_text("def f():\n    from . import config\n")
    known = {"mnistlab.lazy": lazy, "mnistlab.config": lazy}
    assert imported("mnistlab.lazy", lazy, known) == {"mnistlab.config"}


def test_no_import_cycle_lazy_imports_included():
    known = modules()
    graph = {name: imported(name, path, known) for name, path in known.items()}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_no_module_outside_tasks_names_a_task():
    from mnistlab.tasks import TASKS

    pattern = re.compile(r"""["'](%s)["']""" % "|".join(map(re.escape, TASKS)))
    named = []
    for path in PACKAGE.rglob("*.py"):
        if "tasks" in path.relative_to(PACKAGE).parts:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                named.append(f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}")
    assert not named, "\n".join(named)
