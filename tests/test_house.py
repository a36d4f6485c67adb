"""The house rules on code size (issue 26), checked over fsd_gs/ by AST so that they stay true.

* no class longer than MAX_CLASS_LINES,
* no function or method (nested ones included) longer than MAX_FUNCTION_LINES,
* every ``__init__.py`` only re-exports: a docstring, imports and ``__all__``; no definitions, no other code.

A length counts the lines from the ``def`` / ``class`` line to the node's last line, both included; decorators
are not counted, blank lines and comments inside the body are.
"""

from __future__ import annotations

import ast
import functools
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "fsd_gs"
MAX_CLASS_LINES = 200
MAX_FUNCTION_LINES = 80


@functools.cache
def parsed(root: pathlib.Path) -> tuple[tuple[pathlib.Path, ast.Module], ...]:
    """Every .py file under ``root`` with its syntax tree, parsed once per test session."""
    return tuple((path, ast.parse(path.read_text(encoding="utf-8"), filename=str(path))) for path in sorted(root.rglob("*.py")))


def length(node: ast.stmt) -> int:
    """Lines from the def / class line (decorators excluded) to the node's last line, both included."""
    assert node.end_lineno is not None, "the parser records end_lineno"
    return node.end_lineno - node.lineno + 1


def oversized(root: pathlib.Path, max_class: int, max_function: int) -> list[str]:
    """'path:line kind name (n lines)' for every class or function over its limit."""
    found = []
    for path, tree in parsed(root):
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                kind, limit = "class", max_class
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                kind, limit = "function", max_function
            else:
                continue
            if length(node) > limit:
                found.append(f"{path.relative_to(root.parent)}:{node.lineno} {kind} {node.name} ({length(node)} lines)")
    return found


def _only_reexports(node: ast.stmt, index: int) -> bool:
    """Whether a top-level statement of an ``__init__.py`` is allowed: the docstring, an import or ``__all__ = ...``."""
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return True
    if index == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
        return True
    targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
    return len(targets) == 1 and isinstance(targets[0], ast.Name) and targets[0].id == "__all__"


def init_code(root: pathlib.Path) -> list[str]:
    """'path:line statement' for every statement of an ``__init__.py`` that is not a re-export."""
    return [
        f"{path.relative_to(root.parent)}:{node.lineno} {type(node).__name__} {getattr(node, 'name', '')}".rstrip()
        for path, tree in parsed(root)
        if path.name == "__init__.py"
        for index, node in enumerate(tree.body)
        if not _only_reexports(node, index)
    ]


def test_the_package_is_there():
    assert len(parsed(PACKAGE)) > 50 and any(p.name == "__init__.py" for p, _ in parsed(PACKAGE))


def test_no_class_or_function_is_too_long():
    found = oversized(PACKAGE, MAX_CLASS_LINES, MAX_FUNCTION_LINES)
    assert not found, (
        f"classes over {MAX_CLASS_LINES} or functions over {MAX_FUNCTION_LINES} lines (split them into named parts): "
        + "; ".join(found)
    )


def test_every_init_only_reexports():
    found = init_code(PACKAGE)
    assert not found, (
        "__init__.py files may hold only a docstring, imports and __all__ (move the code to a module): " + "; ".join(found)
    )


@pytest.fixture()
def bad_package(tmp_path: pathlib.Path) -> pathlib.Path:
    """A package that breaks each rule once: a 3-line function, a 5-line class, code in its __init__.py."""
    root = tmp_path / "pkg"
    root.mkdir()
    (root / "__init__.py").write_text(
        '"""Doc."""\n\nfrom pkg.mod import f\n\n__all__ = ["f"]\nVERSION = "1"\n\n\ndef g():\n    pass\n'
    )
    (root / "mod.py").write_text(
        "@staticmethod\ndef f():\n    x = 1\n    return x\n\n\nclass C:\n    def m(self):\n        return 1\n\n    y = 2\n"
    )
    return root


def test_the_checks_catch_violations(bad_package: pathlib.Path):
    assert oversized(bad_package, max_class=5, max_function=3) == []  # at the limits: allowed (decorator not counted)
    assert oversized(bad_package, max_class=4, max_function=2) == [
        "pkg/mod.py:2 function f (3 lines)",
        "pkg/mod.py:7 class C (5 lines)",
    ]
    assert init_code(bad_package) == ["pkg/__init__.py:6 Assign", "pkg/__init__.py:9 FunctionDef g"]
