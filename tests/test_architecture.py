"""The shape docs/ARCHITECTURE.md describes: no import circle in the library, none hidden inside functions,
and benchmarks that use only the library (never the tests)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support.app_server import ROOT

PACKAGE = ROOT / "quantizer"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[str, bool]]:
    """(imported quantizer module, imported inside a function) for every import in the file."""
    tree = ast.parse(path.read_text())
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            else:
                target = node.module or ""
            names = [f"{target}.{a.name}" for a in node.names] if not node.module or node.level else []
            targets = [target, *names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        nested = any(isinstance(p, ast.FunctionDef | ast.AsyncFunctionDef) for p in parents(tree, node))
        found += [(t, nested) for t in targets if t.startswith("quantizer")]
    return found


def parents(tree: ast.AST, target: ast.AST) -> list[ast.AST]:
    chain: list[ast.AST] = []

    def walk(node: ast.AST, path: list[ast.AST]) -> bool:
        if node is target:
            chain.extend(path)
            return True
        return any(walk(child, [*path, node]) for child in ast.iter_child_nodes(node))

    walk(tree, [])
    return chain


def library_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        graph[name] = {t for t, _ in imports(path) if t in modules and t != name}
    return graph


def test_the_library_has_no_import_circle():
    graph = library_graph()
    done: set[str] = set()

    def visit(node: str, stack: list[str]) -> None:
        assert node not in stack, "import circle: " + " -> ".join([*stack[stack.index(node) :], node])
        if node in done:
            return
        for child in sorted(graph[node]):
            # a package's __init__ re-exporting its own modules is not a circle
            if not child.startswith(node + "."):
                visit(child, [*stack, node])
        done.add(node)

    for name in sorted(graph):
        visit(name, [])


def test_no_library_import_is_hidden_inside_a_function():
    hidden = [(module_name(p), t) for p in PACKAGE.rglob("*.py") for t, nested in imports(p) if nested]
    assert hidden == []


def test_benchmarks_use_the_library_not_the_tests():
    for path in (ROOT / "benchmarks").glob("*.py"):
        assert "from tests" not in path.read_text() and "import tests" not in path.read_text(), path.name


def environment_reads(path: Path) -> list[int]:
    """Lines of `path` that touch os.environ or os.getenv."""
    tree = ast.parse(path.read_text())
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and node.attr in ("environ", "getenv")
        and isinstance(node.value, ast.Name)
        and node.value.id == "os"
    ]


def test_only_the_settings_module_reads_the_environment():
    files = [*PACKAGE.rglob("*.py"), *(ROOT / "ui").rglob("*.py"), ROOT / "app.py"]
    found = {str(p.relative_to(ROOT)): lines for p in files if (lines := environment_reads(p))}
    assert list(found) == ["quantizer/settings.py"], found


MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 60


def code_files() -> list[Path]:
    return [*PACKAGE.rglob("*.py"), *(ROOT / "ui").rglob("*.py")]


def test_no_module_is_over_400_lines():
    long = {
        str(p.relative_to(ROOT)): n for p in code_files() if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}


def test_no_function_is_over_60_lines():
    long = {}
    for path in code_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(ROOT)}:{node.name}"] = lines
    assert long == {}


def test_the_pipeline_reads_as_its_stages():
    """pipeline.py hands each step to its module: far fewer of the project's modules than the 24 it once imported."""
    assert len(library_graph()["quantizer.pipeline"]) <= 10
