"""TrainingRun's shape: `setup()` builds, `train()` runs, and nothing else creates state."""

from __future__ import annotations

import ast
from pathlib import Path

RUN = Path(__file__).resolve().parents[2] / "trainer" / "run.py"


def _attributes_by_method() -> dict[str, set[str]]:
    tree = ast.parse(RUN.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "TrainingRun")
    where: dict[str, set[str]] = {}
    for method in (n for n in cls.body if isinstance(n, ast.FunctionDef)):
        for node in ast.walk(method):
            if isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, ast.AnnAssign):
                targets = [node.target]
            else:
                continue
            for e in (e for target in targets for e in ast.walk(target)):
                if isinstance(e, ast.Attribute) and isinstance(e.value, ast.Name) and e.value.id == "self":
                    where.setdefault(e.attr, set()).add(method.name)
    return where


def test_every_attribute_is_created_in_init_or_setup() -> None:
    where = _attributes_by_method()
    assert {"model", "optimizer", "scheduler", "stream", "state"} <= set(where)
    assert {name: methods for name, methods in where.items() if not methods & {"__init__", "setup"}} == {}
