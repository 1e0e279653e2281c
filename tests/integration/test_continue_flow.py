"""`train_adapter(init_adapter="production")` end to end on real parts (Prefect API, SQLite
registry, local storage, the trainer process): round 2 continues from the production adapter,
records its lineage (job, artifact, `brightrun artifacts list`), and an adapter whose rank
differs is refused before any job exists."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from brightrun.errors import InputError
from brightrun.settings import load_settings
from cli.training import demo_params

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_round_two_continues_from_production_and_records_the_lineage(
    prefect_harness: str, brightrun_home: Path, tiny_model: Path
) -> None:
    from brightrun.registry import open_registry, promotion
    from brightrun.registry import repository as repo
    from cli.main import app
    from flows.train_adapter import train_adapter

    first = train_adapter(**demo_params(tiny_model, max_steps=2))
    engine = open_registry(load_settings())
    try:
        (round1,) = repo.list_artifacts(engine, training_job_id=first["job_id"])
        promotion.promote(engine, round1.id, "production", force=True, reason="round 1 of the test")

        # Another rank cannot start from it: refused with what differs, and no job is created.
        jobs_before = len(repo.list_jobs(engine, limit=None))
        other = demo_params(tiny_model, max_steps=2)
        other["lora"] = {**other["lora"], "r": 4, "alpha": 8}
        with pytest.raises(InputError) as refused:
            train_adapter(**other, init_adapter="production")
        assert "LoRA rank 8, this job's lora.r is 4" in "\n".join(refused.value.problems)
        assert len(repo.list_jobs(engine, limit=None)) == jobs_before

        second = train_adapter(**demo_params(tiny_model, max_steps=2), init_adapter="production")
        assert second["status"] == "completed"
        (round2,) = repo.list_artifacts(engine, training_job_id=second["job_id"])
        job2 = repo.get_job(engine, second["job_id"])
        staged = [e for e in repo.list_events(engine, second["job_id"]) if e.type == "init_adapter_staged"]
    finally:
        engine.dispose()
    assert round2.metadata["continued_from"]["artifact_id"] == round1.id
    assert round2.metadata["continued_from"]["training_job_id"] == first["job_id"]
    assert job2.metadata["continued_from"]["artifact_id"] == round1.id
    assert job2.metadata["params"]["init_adapter"] == "production"  # a resume asks the same
    assert len(staged) == 1
    spec = json.loads(Path(job2.storage_prefix, "spec.json").read_text())
    assert spec["init_adapter"]["artifact_id"] == round1.id
    assert Path(job2.storage_prefix, "init_adapter", "MANIFEST.json").is_file()

    listed = CliRunner().invoke(app, ["artifacts", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    rows = {row["id"]: row for row in json.loads(listed.output)}
    assert rows[round2.id]["metadata"]["continued_from"]["artifact_id"] == round1.id
    table = CliRunner().invoke(app, ["artifacts", "list"], env={"COLUMNS": "400"})
    assert "continued from" in table.output  # the table's own column (ids fold across lines)
