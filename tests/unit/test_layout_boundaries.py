"""The floors of the house (DESIGN.md §1): `brightrun/` is the shared ground and imports nothing
above it; `trainer/` stands on `brightrun/` only (the trainer image carries neither Prefect nor
the flows); the CLI is the top floor and nothing below imports it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ORCHESTRATION = {"flows", "tasks", "cli", "deployments"}


def _imports(path: Path) -> set[str]:
    """Top-level package of every module `path` imports, at any depth (lazy imports count)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


def _offenders(package: str, forbidden: set[str]) -> list[str]:
    return sorted(
        f"{path.relative_to(REPO)} imports {', '.join(sorted(_imports(path) & forbidden))}"
        for path in (REPO / package).rglob("*.py")
        if _imports(path) & forbidden
    )


def test_the_shared_package_imports_nothing_above_it() -> None:
    assert _offenders("brightrun", ORCHESTRATION | {"trainer", "prefect"}) == []


def test_the_trainer_stands_on_the_shared_package_only() -> None:
    assert _offenders("trainer", ORCHESTRATION | {"prefect"}) == []


@pytest.mark.parametrize("package", ["flows", "tasks", "deployments"])
def test_nothing_below_the_cli_imports_it(package: str) -> None:
    assert _offenders(package, {"cli"}) == []


def test_the_checks_see_an_upward_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from flows.train_adapter import train_adapter\n")
    assert "flows" in _imports(bad)
