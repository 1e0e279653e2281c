"""`brightrun demo` ends with the noise note and its time with conditions (issue 21). The run
itself is replaced (tests/integration/test_cli_errors.py runs real trainings); what is checked
is what the user reads last."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import brightrun.tiny_model
import cli.training
from cli.main import app


def test_the_demo_ends_saying_replies_are_noise_and_how_long_it_took(
    brightrun_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[dict[str, Any]] = []
    monkeypatch.setattr(brightrun.tiny_model, "ensure_tiny_model", lambda model_dir, dataset: model_dir)
    monkeypatch.setattr(
        cli.training,
        "run_training",
        lambda params, job_id: ran.append(params) or {"job_id": job_id, "status": "completed"},
    )
    result = CliRunner().invoke(app, ["demo"])
    assert result.exit_code == 0, result.output
    assert ran and ran[0]["job_name"] == "brightrun demo"
    last = result.output.strip().splitlines()[-2:]
    assert "replies are noise by design" in last[0], result.output
    assert last[1].startswith("demo took ") and " cores, load average " in last[1], result.output
