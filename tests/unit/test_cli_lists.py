"""`jobs list` shows names; `artifacts list` keeps ids whole on one line, even when narrow."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

from rich.console import Console
from typer.testing import CliRunner

from brightrun.registry import open_registry_url
from brightrun.registry import repository as repo
from cli.main import app
from cli.registry import _artifacts_table

ARTIFACT = "3f6c1a9e-2b7d-4c8e-9f01-a2b3c4d5e6f7"
JOB = "9d8c7b6a-5f4e-4d3c-8b2a-1f0e9d8c7b6a"


def test_jobs_list_shows_each_jobs_name(brightrun_home: Path) -> None:
    engine = open_registry_url(f"sqlite:///{brightrun_home / 'registry.db'}")
    repo.create_job(engine, job_id=JOB, job_name="support-bot round 3", base_model="org/model")
    engine.dispose()
    result = CliRunner().invoke(app, ["jobs", "list"])
    assert result.exit_code == 0, result.output
    assert "support-bot round 3" in result.output and JOB in result.output


def test_artifacts_list_keeps_ids_on_one_line_in_a_narrow_terminal() -> None:
    artifact = SimpleNamespace(
        id=ARTIFACT,
        served_name="support-bot-v3",
        training_job_id=JOB,
        artifact_type="lora_adapter",
        base_model="meta-llama/Meta-Llama-3-8B-Instruct",
        file_size_bytes=12_345_678,
        validation_loss=1.2345,
        validation_perplexity=3.44,
        deployment_status="stored",
        storage_path=f"s3://bucket/jobs/{JOB}/adapter",
    )
    out = io.StringIO()
    _artifacts_table(Console(file=out, width=120), [artifact])
    lines = out.getvalue().splitlines()
    assert any(ARTIFACT in line and JOB in line for line in lines), out.getvalue()
