"""A static reading of farmedge's source for the rules tests (import rules,
class sizes, logging style): every module parsed once with :mod:`ast`,
nothing imported, so the scans take a fraction of a second."""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: The shipped package and the developer tooling's (tools/, its own distribution).
PACKAGES = {"farmedge": ROOT / "farmedge", "farmedge_dev": ROOT / "tools" / "farmedge_dev"}


@dataclass(frozen=True, slots=True)
class Module:
    name: str
    path: Path
    tree: ast.Module

    @property
    def rel(self) -> str:
        return str(self.path.relative_to(ROOT))

    @property
    def package(self) -> str:
        """The package relative imports are resolved against."""
        return self.name if self.path.name == "__init__.py" else self.name.rpartition(".")[0]


@dataclass(frozen=True, slots=True)
class Import:
    importer: str
    #: The module imported, fully qualified (``from a.b import c`` gives
    #: ``a.b.c`` when that is a module of the tree, else ``a.b``).
    target: str
    line: int
    #: Run when the importer is imported (module or class level, outside
    #: ``if TYPE_CHECKING:``), not only when one of its functions runs.
    at_import: bool
    #: Inside ``if TYPE_CHECKING:`` (for annotations only).
    type_only: bool


@functools.cache
def modules(package: str = "farmedge") -> tuple[Module, ...]:
    base = PACKAGES[package]
    out = []
    for path in sorted(base.rglob("*.py")):
        parts = list(path.relative_to(base.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out.append(Module(".".join(parts), path,
                          ast.parse(path.read_text(encoding="utf-8"), filename=str(path))))
    return tuple(out)


@functools.cache
def module_names() -> frozenset[str]:
    return frozenset(m.name for p in PACKAGES for m in modules(p))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _resolve(mod: Module, level: int, name: str | None) -> str:
    if level == 0:
        return name or ""
    base = mod.package.split(".")
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join([*base, name] if name else base)


def imports(mod: Module) -> list[Import]:
    """Every import statement of the module (and ``importlib.import_module``
    of a literal name), wherever it is."""
    known = module_names()
    found: list[Import] = []

    def add(target: str, node: ast.AST, at_import: bool, type_only: bool) -> None:
        found.append(Import(mod.name, target, getattr(node, "lineno", 0), at_import, type_only))

    def visit(node: ast.AST, at_import: bool, type_only: bool) -> None:
        if isinstance(node, ast.Import):
            for a in node.names:
                add(a.name, node, at_import, type_only)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(mod, node.level, node.module)
            for a in node.names:
                sub = f"{base}.{a.name}" if base else a.name
                add(sub if sub in known else base, node, at_import, type_only)
        elif (isinstance(node, ast.Call) and isinstance(node.func, (ast.Attribute, ast.Name))
              and (getattr(node.func, "attr", None) or getattr(node.func, "id", None))
              == "import_module" and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)):
            name = node.args[0].value
            if name.startswith("."):
                level = len(name) - len(name.lstrip("."))
                name = _resolve(mod, level, name.lstrip(".") or None)
            add(name, node, at_import, type_only)
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, False, True)
            for child in node.orelse:
                visit(child, at_import, type_only)
            return
        inner = at_import and not isinstance(
            node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for kid in ast.iter_child_nodes(node):
            visit(kid, inner, type_only)

    for stmt in mod.tree.body:
        visit(stmt, True, False)
    return found


@functools.cache
def all_imports(package: str = "farmedge") -> tuple[Import, ...]:
    return tuple(i for m in modules(package) for i in imports(m))


def in_part(name: str, part: str) -> bool:
    """``name`` is the module ``part`` or inside it."""
    return name == part or name.startswith(part + ".")
