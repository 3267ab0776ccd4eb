"""Which petsage modules each petsage module imports, read from the source with ast,
wherever the statement is (inside a function, under TYPE_CHECKING)."""

import ast
from collections.abc import Iterator
from pathlib import Path


def module_paths(root: Path) -> dict[str, Path]:
    """Every module of the ``petsage`` package under ``root``, by dotted name; a
    package is its ``__init__``."""
    modules = {}
    for path in sorted((root / "petsage").rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imported_names(module: str, path: Path) -> Iterator[str]:
    """The dotted names ``module`` imports, wherever the statement is (inside a
    function, under TYPE_CHECKING), relative imports resolved: ``from a import b``
    gives ``a.b``, which is module a.b when there is one, else a's name b."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0]
                base = f"{anchor}.{base}" if base else anchor
            yield from (f"{base}.{alias.name}" for alias in node.names)


def import_graph(root: Path) -> dict[str, set[str]]:
    """The petsage modules each petsage module imports.

    A name counts as the longest module it starts with (``petsage.config.Setting``:
    ``petsage.config``). A package importing its own modules is no edge: that is how
    a package is made, not a cycle.
    """
    modules = module_paths(root)
    graph: dict[str, set[str]] = {module: set() for module in modules}
    for module, path in modules.items():
        for name in imported_names(module, path):
            parts = name.split(".")
            prefixes = (".".join(parts[:end]) for end in range(len(parts), 0, -1))
            imported = next((prefix for prefix in prefixes if prefix in modules), None)
            if imported is not None and not imported.startswith(module + "."):
                graph[module].add(imported)
        graph[module].discard(module)
    return graph
