"""pyproject declares exactly what ``src/atp`` imports: every third-party import comes from a declared runtime
dependency, and every declared dependency is imported (or is listed below with the reason it is declared)."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib

from tests.helpers.stages import REPO_ROOT

#: declared although ``src/atp`` does not import them, and why
DECLARED_NOT_IMPORTED = {
    "torchvision": "pinned as the pair of torch (segmentation-models-pytorch and timm import it)",
    "timm": "segmentation-models-pytorch's MiT encoder is built on it; the range keeps a version that works",
}


def _normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> set[str]:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    return {_normalised(re.split(r"[<>=!~ \[;]", requirement, maxsplit=1)[0]) for requirement in project["dependencies"]}


def _imported_modules() -> dict[str, set[str]]:
    """Top-level module → the files of src/atp that import it (lazy imports inside functions included)."""
    found: dict[str, set[str]] = {}
    for path in (REPO_ROOT / "src" / "atp").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                     else [])
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(path.relative_to(REPO_ROOT).as_posix())
    return {module: files for module, files in found.items()
            if module not in sys.stdlib_module_names and module not in ("atp", "__future__")}


def test_every_runtime_import_is_a_declared_dependency_and_back():
    distributions = importlib.metadata.packages_distributions()
    declared = _declared()
    used: set[str] = set()
    undeclared = {}
    for module, files in _imported_modules().items():
        owners = {_normalised(d) for d in distributions.get(module, [])}
        assert owners, f"{module} (imported by {sorted(files)}) belongs to no installed distribution"
        if owners & declared:
            used |= owners & declared
        else:
            undeclared[module] = (sorted(owners), sorted(files))
    assert not undeclared, f"imported but not declared in pyproject's dependencies: {undeclared}"
    unused = declared - used - set(DECLARED_NOT_IMPORTED)
    assert not unused, f"declared but never imported by src/atp (say why in DECLARED_NOT_IMPORTED): {unused}"
