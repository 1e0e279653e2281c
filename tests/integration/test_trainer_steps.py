"""Issue 25 through the real entry point: one epoch at batch 4 x 4 is ceil(targets / 16)
steps whether the targets are packed conversations or the per-pair recipe's rows, the line
saying so comes before the first step, and the two reach the same held-out loss, ours in
fewer tokens. (benchmarks/bench_steps.py prints the same comparison with more seeds.)"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from brightrun import layout, prepared
from tests.fixtures.training import (
    create_job,
    events,
    job_storage,
    metric_records,
    per_pair_set,
    run_trainer,
    small_spec,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _one_epoch(root: Path, data: Path, job_id: str, model: Path, packing: bool) -> dict[str, float]:
    spec = small_spec(
        job_id,
        model,
        quantization={"load_in_4bit": False},
        lora={"dropout": 0.0},
        training={
            "max_steps": None,
            "epochs": 1.0,
            "batch_size": 4,
            "gradient_accumulation_steps": 4,
            "packing": packing,
        },
        evaluation={"sample_generations": 0},
    )
    uri = create_job(root, data, spec)
    proc = run_trainer(uri)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "steps per epoch:" in proc.stderr
    assert proc.stderr.index("steps per epoch:") < proc.stderr.index("step 1/")
    storage = job_storage(uri)
    result = storage.get_json(layout.RESULT)
    (plan,) = [e["payload"] for e in events(storage, "step_plan")]
    records = metric_records(storage)
    last = max((r for r in records if r.get("loss") is not None), key=lambda r: r["step"])
    first_eval = min((r for r in records if r.get("eval_loss") is not None), key=lambda r: r["step"])
    return {
        "steps": result["steps"],
        "plan_steps": plan["steps_per_epoch"],
        "plan_examples": plan["trained_examples"],
        "before": first_eval["eval_loss"],
        "after": result["eval_loss"],
        "tokens": last["tokens_processed"] + last["padding_tokens"],
    }


def test_a_step_is_sixteen_targets_packed_or_not_and_reaches_the_per_pair_loss(
    tmp_path: Path, tiny_model: Path, prepared_dataset: Path
) -> None:
    targets = prepared.read_meta(prepared_dataset).train_targets
    assert targets is not None
    rows = per_pair_set(prepared_dataset, tmp_path / "per-pair-data")
    assert rows == targets
    per_pair = _one_epoch(tmp_path / "a", tmp_path / "per-pair-data", "per-pair", tiny_model, packing=False)
    ours = _one_epoch(tmp_path / "b", prepared_dataset, "packed", tiny_model, packing=True)
    expected = math.ceil(targets / 16)
    assert expected >= 2  # more than one step, or the rule would be untested
    for run in (per_pair, ours):
        assert run["steps"] == run["plan_steps"] == expected
        assert run["plan_examples"] == targets
    assert per_pair["before"] == pytest.approx(ours["before"], abs=1e-5)
    assert per_pair["before"] - per_pair["after"] > 0.01  # the epoch moved the loss
    assert abs(ours["after"] - per_pair["after"]) < 0.01
    assert ours["tokens"] < per_pair["tokens"]
