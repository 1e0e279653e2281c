"""The floors of the house (DESIGN.md §1): `brightrun/` is the shared ground and imports nothing
above it; `trainer/` stands on `brightrun/` only (the trainer image carries neither Prefect nor
the flows); the CLI is the top floor and nothing below imports it.

One stated exception: the adapter room (`tasks/adapters/`) is the one stage that may load the
trainer (`trainer.inference`: loading, losses, generation, merging), lazily, inside the
functions that need torch; the deployments that run it say so in prefect.yaml. Every other
stage, the flows and the deployments stand without the trainer."""

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
