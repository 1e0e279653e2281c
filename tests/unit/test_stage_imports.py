"""The stage conventions, checked at run time: a stage's Prefect tasks live in its `task.py`
(so its pure modules import without Prefect), and the orchestrator's side of the dataset
stage never loads torch (DESIGN.md §1)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STAGES = ("feedback", "dataset", "monitor")

# Every stage module but its Prefect room (`task.py`): each must import alone without Prefect.
PURE_MODULES = sorted(
    f"tasks.{stage}.{path.stem}" if path.stem != "__init__" else f"tasks.{stage}"
    for stage in STAGES
    for path in (REPO / "tasks" / stage).glob("*.py")
    if path.stem != "task"
)


def _run(code: str, tmp_path: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO), "BRIGHTRUN_HOME": str(tmp_path / "home")}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def test_the_pure_modules_are_the_ones_the_issue_names() -> None:
    # The list is built from the tree: guard against a glob that finds nothing.
    assert {"tasks.feedback.scrub", "tasks.feedback.select", "tasks.dataset.schema"} <= set(PURE_MODULES)
    assert "tasks.feedback.task" not in PURE_MODULES


@pytest.mark.parametrize("module", PURE_MODULES)
def test_a_pure_stage_module_imports_without_prefect(module: str, tmp_path: Path) -> None:
    code = f"import sys, {module}; print('prefect' in sys.modules)"
    assert _run(code, tmp_path) == "False", f"importing {module} loads Prefect"


@pytest.mark.parametrize("stage", ["feedback", "dataset"])
def test_the_task_module_is_where_prefect_comes_in(stage: str, tmp_path: Path) -> None:
    # The check above would pass on a machine without Prefect: show it sees Prefect load.
    code = f"import sys, tasks.{stage}.task; print('prefect' in sys.modules)"
    assert _run(code, tmp_path) == "True"


def test_brightrun_prepare_never_loads_torch(tiny_model: Path, sample_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    argv = ["brightrun", "prepare", str(sample_dataset), "--tokenizer", str(tiny_model), "--out", str(out)]
    code = (
        "import sys\n"
        f"sys.argv = {argv!r}\n"
        "from cli.main import main\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as done:\n"
        "    assert not done.code, f'prepare exited {done.code}'\n"
        "print('torch' in sys.modules)\n"
    )
    assert _run(code, tmp_path) == "False", "brightrun prepare imported torch"
    assert (out / "report.json").is_file()
