"""The floors of the house (DESIGN.md §1): `brightrun/` is the shared ground and imports nothing
above it; `trainer/` stands on `brightrun/` only (the trainer image carries neither Prefect nor
the flows); the CLI is the top floor and nothing below imports it.

One stated exception: the adapter room (`tasks/adapters/`) is the one stage that may load the
trainer (`trainer.inference`: loading, losses, generation, merging), lazily, inside the
functions that need torch; the deployments that run it say so in prefect.yaml. Every other
stage, the flows and the deployments stand without the trainer."""

from __future__ import annotations

import ast
import sys
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


#: The one stage allowed to load the trainer (issue 23's stated exception).
MAY_LOAD_THE_TRAINER = Path("tasks/adapters")


def _offenders(
    package: str, forbidden: set[str], *, allowed: Path | None = None, root: Path = REPO
) -> list[str]:
    return sorted(
        f"{path.relative_to(root)} imports {', '.join(sorted(_imports(path) & forbidden))}"
        for path in (root / package).rglob("*.py")
        if _imports(path) & forbidden and not (allowed and path.relative_to(root).is_relative_to(allowed))
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


def _module_name(path: Path) -> str:
    name = ".".join(path.relative_to(REPO).with_suffix("").parts)
    return name.removesuffix(".__init__")


def _module_imports(path: Path, known: set[str]) -> set[str]:
    """The modules of `known` that `path` imports, at any depth (`from a import b` counts a.b
    when b is a module)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{alias.name}" for alias in node.names)
    return out & known


def _import_circles(packages: list[str]) -> list[list[str]]:
    """Every set of modules under `packages` that import each other round a circle."""
    paths = {_module_name(p): p for package in packages for p in (REPO / package).rglob("*.py")}
    graph = {name: _module_imports(path, set(paths)) - {name} for name, path in paths.items()}
    circles: list[list[str]] = []
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        order[node] = low[node] = len(order)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in order:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], order[nxt])
        if low[node] == order[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for name in sorted(graph):
        if name not in order:
            visit(name)
    return circles


def test_no_import_circle_in_the_orchestration() -> None:
    """Each module of the orchestrator side depends one way (lazy imports count): tasks/provision
    and tasks/cost_model once imported each other through a re-export."""
    assert _import_circles(["tasks", "flows"]) == []


def test_the_circle_check_sees_a_circle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.b import f\n")
    (package / "b.py").write_text("def f():\n    from pkg import a\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    assert _import_circles(["pkg"]) == [["pkg.a", "pkg.b"]]


@pytest.mark.parametrize("package", ["flows", "tasks", "deployments"])
def test_only_the_adapter_room_loads_the_trainer(package: str) -> None:
    assert _offenders(package, {"trainer"}, allowed=MAY_LOAD_THE_TRAINER) == []


def test_the_adapter_room_is_where_the_trainer_is_loaded() -> None:
    # The exception is real (not a stale name): the room exists and does load the trainer.
    room = REPO / MAY_LOAD_THE_TRAINER
    assert any("trainer" in _imports(path) for path in room.rglob("*.py"))


def test_a_lazy_trainer_import_in_another_stage_is_caught(tmp_path: Path) -> None:
    stage = tmp_path / "tasks" / "monitor"
    stage.mkdir(parents=True)
    (stage / "lazy.py").write_text("def f():\n    import trainer.inference\n    return trainer\n")
    room = tmp_path / MAY_LOAD_THE_TRAINER
    room.mkdir(parents=True)
    (room / "chat.py").write_text("def f():\n    from trainer import inference\n")
    found = _offenders("tasks", {"trainer"}, allowed=MAY_LOAD_THE_TRAINER, root=tmp_path)
    assert found == ["tasks/monitor/lazy.py imports trainer"]
