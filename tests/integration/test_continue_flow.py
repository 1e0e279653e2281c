"""Rounds end to end on real parts (Prefect API, SQLite registry, local storage, the trainer
process): round 2 continues from the production adapter (round 1's) on curated + feedback
data, starts at round 1's final loss on round 1's held-out conversations, records its lineage
(job, artifact, `brightrun artifacts list`); an adapter whose rank differs is refused before
any job exists."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from brightrun import layout, prepared
from brightrun.errors import InputError
from brightrun.protocol import EvalReport
from brightrun.settings import load_settings
from brightrun.storage import LocalStorage
from cli.training import demo_params
from tests.fixtures.training import metric_records

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _feedback_file(curated: Path, out: Path, seed: int, fraction: float) -> tuple[Path, str]:
    """A feedback export as the daily flow writes it, in small: one conversation the curated
    set holds out (the same one, repeated), one it trains on (repeated), one new one that its
    file's split puts in training. Returns the file and the new conversation's id."""
    from tasks.dataset.split import split_hash

    data: dict[str, Any] = json.loads(curated.read_text())
    ids = [c["conversation_metadata"]["conversation_id"] for c in data["conversations"]]
    held = next(
        c
        for c in data["conversations"]
        if split_hash(c["conversation_metadata"]["conversation_id"], seed) < fraction
    )
    trained = next(c for c in data["conversations"] if c is not held)
    new = copy.deepcopy(trained)
    new_id = next(
        f"fb-{i}" for i in range(1000) if split_hash(f"fb-{i}", seed) >= fraction and f"fb-{i}" not in ids
    )
    new["conversation_metadata"]["conversation_id"] = new_id
    for pair in new["training_pairs"]:
        pair["id"] = f"{new_id}-{pair['id']}"
        if pair.get("target_response"):
            pair["target_response"] = "Thank you for telling me. " + pair["target_response"]
    data["conversations"] = [held, trained, new]
    out.write_text(json.dumps(data))
    return out, new_id


def test_round_two_continues_from_production_and_records_the_lineage(
    prefect_harness: str, brightrun_home: Path, tiny_model: Path, tmp_path: Path
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

        curated = Path(demo_params(tiny_model)["dataset"])
        feedback, new_id = _feedback_file(curated, tmp_path / "feedback.json", seed=42, fraction=0.1)
        params = demo_params(tiny_model, max_steps=2)
        del params["dataset"]
        params["datasets"] = [{"source": str(curated), "weight": 1}, {"source": str(feedback), "weight": 2}]
        second = train_adapter(**params, init_adapter="production")
        assert second["status"] == "completed"
        (round2,) = repo.list_artifacts(engine, training_job_id=second["job_id"])
        job2 = repo.get_job(engine, second["job_id"])
        events2 = repo.list_events(engine, second["job_id"])
        staged = [e for e in events2 if e.type == "init_adapter_staged"]
        (validated,) = [e.payload for e in events2 if e.type == "dataset_validated"]
        job1 = repo.get_job(engine, first["job_id"])
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
    table = CliRunner().invoke(app, ["artifacts", "list"])
    assert f"continued from {round1.id}" in table.output  # on round 2's own lines, never folded

    # Each file kept its split: round 2 holds out exactly round 1's conversations (the repeated
    # ones counted once), and trains on the new feedback conversation twice (weight 2).
    storage1, storage2 = LocalStorage(Path(job1.storage_prefix)), LocalStorage(Path(job2.storage_prefix))
    val1 = [e.conversation_id for e in prepared.iter_examples(storage1.root / "data" / prepared.VALIDATION)]
    val2 = [e.conversation_id for e in prepared.iter_examples(storage2.root / "data" / prepared.VALIDATION)]
    train2 = [e.conversation_id for e in prepared.iter_examples(storage2.root / "data" / prepared.TRAIN)]
    assert val1 and val2 == val1 and set(train2).isdisjoint(val1)
    assert train2.count(new_id) > 0 and train2.count(new_id) % 2 == 0  # every example twice
    curated_part, feedback_part = validated["parts"]
    assert (feedback_part["weight"], feedback_part["duplicates"]) == (2, 2)
    assert feedback_part["trained_examples"] == train2.count(new_id)
    # Before its first step, round 2's loss on those conversations is round 1's final loss.
    final1 = EvalReport.model_validate(storage1.get_json(layout.EVAL)).eval_loss
    start2 = [r["eval_loss"] for r in metric_records(storage2) if r["step"] == 0 and r["eval_loss"]]
    assert start2 and start2[0] == pytest.approx(final1, rel=1e-5, abs=1e-6)
