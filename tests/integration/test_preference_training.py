"""DPO and KTO through the real trainer entry point on the tiny model (CPU, plain LoRA):
held-out preference accuracy rises above chance, and a run SIGKILLed mid-way and resumed
ends with the uninterrupted run's adapter."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

import pytest

from brightrun import layout
from brightrun.protocol import EvalReport
from tasks.dataset.preferences import PreferenceOptions, prepare_preferences
from tests.fixtures import training as tr
from tests.fixtures.preferences import write_dpo, write_kto
from tests.fixtures.training import EXACT, job_storage, metric_records, run_trainer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STEPS = 12


@dataclass(frozen=True)
class PreferenceRuns:
    reference: str
    killed: str
    kill_step: int


def _runs(objective: str, root: Path, tiny_model: Path, sample_dataset: Path) -> PreferenceRuns:
    write = write_dpo if objective == "dpo" else write_kto
    source = write(sample_dataset, root / f"{objective}.jsonl")
    prepared = root / "prepared"
    prepare_preferences(
        source,
        tiny_model,
        prepared,
        PreferenceOptions(objective, max_seq_length=tr.TEST_MAX_SEQ_LENGTH, validation_fraction=0.25, seed=7),
    )

    def spec(job_id: str) -> dict:
        return tr.small_spec(
            job_id,
            tiny_model,
            quantization={"load_in_4bit": False},
            training={"objective": objective, "max_steps": STEPS, "learning_rate": 1e-2, "beta": 0.1},
            evaluation={"sample_generations": 0},
        )

    reference = tr.trained_job(root / "ref", prepared, spec("ref"))
    kill_step = random.randint(4, STEPS - 1)  # after the first commit (step 3)
    killed = tr.killed_job(root / "killed", prepared, spec("killed"), kill_step)
    return PreferenceRuns(reference, killed, kill_step)


@pytest.fixture(scope="module", params=["dpo", "kto"])
def preference_runs(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    tiny_model: Path,
    sample_dataset: Path,
) -> PreferenceRuns:
    return _runs(request.param, tmp_path_factory.mktemp(request.param), tiny_model, sample_dataset)


def test_held_out_preference_accuracy_rises_above_chance(preference_runs: PreferenceRuns) -> None:
    storage = job_storage(preference_runs.reference)
    report = EvalReport.model_validate(storage.get_json(layout.EVAL))
    assert report.preference is not None
    baseline = [r for r in metric_records(storage) if r["step"] == 0 and r["eval_loss"] is not None]
    # Before step 0 the policy is its own reference: every reward is 0, no pair ranked right.
    assert baseline and baseline[0]["reward_accuracy"] == 0.0
    assert report.preference["reward_accuracy"] > 0.5, report.preference
    assert report.preference["reward_margin"] > 0
    assert report.eval_loss < baseline[0]["eval_loss"]
    train = [r for r in metric_records(storage) if r["loss"] is not None]
    assert len(train) == STEPS
    # A KTO micro-batch may hold thumbs of one kind only; each step has rewards of some kind.
    assert all(r["rewards_chosen"] is not None or r["rewards_rejected"] is not None for r in train)
    if storage.get_json("spec.json")["training"]["objective"] == "kto":
        assert all(r["kl"] is not None and r["kl"] >= 0 for r in train)
    assert all(r["trained_tokens"] > 0 for r in train)
    assert storage.exists("reference/logps.pt") and storage.exists("reference/MANIFEST.json")


def test_killed_and_resumed_preference_run_ends_equal(preference_runs: PreferenceRuns) -> None:
    storage = job_storage(preference_runs.killed)
    committed = int(storage.get_bytes(layout.LATEST).decode())
    proc = run_trainer(preference_runs.killed)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert [e["payload"]["from_step"] for e in tr.events(storage, "resumed")] == [committed]
    resumed = tr.adapter_tensors(storage)
    diff = tr.adapter_diff(preference_runs.reference, preference_runs.killed)
    assert diff <= EXACT, f"killed at {preference_runs.kill_step}, resumed from {committed}: {diff}"
    assert max(float(t.abs().max()) for k, t in resumed.items() if "lora_B" in k) > 1e-3
    a = EvalReport.model_validate(job_storage(preference_runs.reference).get_json(layout.EVAL))
    b = EvalReport.model_validate(storage.get_json(layout.EVAL))
    assert a.preference is not None and b.preference is not None
    assert abs(a.preference["loss"] - b.preference["loss"]) <= EXACT


def test_a_preference_round_from_an_sft_adapter_takes_it_as_its_reference(
    tmp_path: Path, tiny_model: Path, sample_dataset: Path, prepared_dataset: Path
) -> None:
    """Issue 25: a preference round starts from an SFT adapter, and its reference model is that
    adapter frozen. Before step 0 the policy is its reference, so every reward is 0 and the DPO
    loss is ln 2; and the reference is the SFT adapter's numbers, not the bare base's."""
    plain = {"load_in_4bit": False}
    sft = tr.trained_job(
        tmp_path / "sft", prepared_dataset, tr.small_spec("sft", tiny_model, quantization=plain)
    )
    source = write_dpo(sample_dataset, tmp_path / "dpo.jsonl")
    pairs = tmp_path / "pairs"
    options = PreferenceOptions(
        "dpo", max_seq_length=tr.TEST_MAX_SEQ_LENGTH, validation_fraction=0.25, seed=7
    )
    prepare_preferences(source, tiny_model, pairs, options)

    def spec(job_id: str, **sections: dict) -> dict:
        training = {"objective": "dpo", "max_steps": 2, "learning_rate": 1e-2, "beta": 0.1}
        return tr.small_spec(job_id, tiny_model, quantization=plain, training=training,
                             evaluation={"sample_generations": 0}, **sections)  # fmt: skip

    fresh = tr.trained_job(tmp_path / "fresh", pairs, spec("fresh"))
    continued = tr.with_init_adapter(
        tmp_path / "continued", pairs, spec("continued", init_adapter=tr.init_adapter_of(sft, "sft")), sft
    )
    done = run_trainer(continued)
    assert done.returncode == 0, done.stderr[-4000:]

    import torch

    def reference_logps(uri: str) -> torch.Tensor:
        path = job_storage(uri).root / "reference" / "logps.pt"
        return torch.load(path, weights_only=True)["validation"]

    # The reference of the continued round is the SFT adapter, not the base a fresh LoRA starts at.
    assert float((reference_logps(continued) - reference_logps(fresh)).abs().max()) > 1e-3
    (start,) = [r for r in metric_records(job_storage(continued)) if r["step"] == 0 and r["eval_loss"]]
    assert start["reward_accuracy"] == 0.0
    assert start["eval_loss"] == pytest.approx(math.log(2), abs=1e-6)  # zero margin: -log sigmoid(0)
