"""Round 2 continues from round 1's adapter, through the real trainer entry point (tiny model,
real 4-bit NF4, CPU): its loss before the first step is round 1's final loss on the same
held-out conversations, a kill + resume still gives the uninterrupted adapter exactly, and an
init adapter that does not fit (another rank) or was altered is refused."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import pytest

from brightrun import layout
from brightrun.protocol import EvalReport, TrainerFailure
from brightrun.storage import LocalStorage
from tests.fixtures import training as tr
from tests.fixtures.training import EXACT, job_storage, metric_records, run_trainer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

QLORA = {"load_in_4bit": True}


@dataclass(frozen=True)
class Rounds:
    round1: str
    init: dict[str, str]
    reference: str  # round 2, uninterrupted
    root: Path


@pytest.fixture(scope="module")
def rounds(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, prepared_dataset: Path) -> Rounds:
    root = tmp_path_factory.mktemp("rounds")
    round1 = tr.trained_job(
        root / "r1", prepared_dataset, tr.small_spec("r1", tiny_model, quantization=QLORA)
    )
    init = tr.init_adapter_of(round1, "r1-adapter")
    spec = tr.small_spec("r2", tiny_model, quantization=QLORA, init_adapter=init)
    reference = tr.with_init_adapter(root / "r2", prepared_dataset, spec, round1)
    done = run_trainer(reference)
    assert done.returncode == 0, done.stderr[-4000:]
    return Rounds(round1, init, reference, root)


def test_round_two_starts_where_round_one_ended(rounds: Rounds) -> None:
    # The held-out set both losses are measured on: round 1's validation split (both rounds
    # prepared the same file with the same seed, so the same conversations).
    round1 = EvalReport.model_validate(job_storage(rounds.round1).get_json(layout.EVAL))
    baseline = [r["eval_loss"] for r in metric_records(job_storage(rounds.reference)) if r["step"] == 0]
    assert baseline and baseline[0] == pytest.approx(round1.eval_loss, rel=1e-5, abs=1e-6)
    # A fresh LoRA starts elsewhere (its B is zero: the base model's loss), so this is not trivial.
    fresh = [r["eval_loss"] for r in metric_records(job_storage(rounds.round1)) if r["step"] == 0]
    assert abs(fresh[0] - round1.eval_loss) > 1e-3
    card = (job_storage(rounds.reference).root / layout.ADAPTER_DIR / "README.md").read_text()
    assert "continued from adapter `r1-adapter`" in card


def test_a_killed_round_two_resumes_to_the_uninterrupted_adapter(
    rounds: Rounds, tiny_model: Path, prepared_dataset: Path
) -> None:
    kill_step = random.randint(4, 9)
    spec = tr.small_spec("r2-killed", tiny_model, quantization=QLORA, init_adapter=rounds.init)
    killed = tr.with_init_adapter(rounds.root / "killed", prepared_dataset, spec, rounds.round1)
    proc = run_trainer(killed, env={"BRIGHTRUN_TRAINER_FAULT": f"kill_after_step:{kill_step}"})
    assert proc.returncode == -9, proc.stderr[-3000:]
    proc = run_trainer(killed)
    assert proc.returncode == 0, proc.stderr[-4000:]
    storage = job_storage(killed)
    assert [e["attempt"] for e in tr.events(storage, "resumed")] == [2]
    diff = tr.adapter_diff(rounds.reference, killed)
    assert diff <= EXACT, f"killed at step {kill_step}: max abs diff {diff}"
    # Round 2 moved away from round 1 (else the equality above says nothing about training).
    assert tr.adapter_diff(rounds.round1, killed) > 1e-4


def _failure(uri: str) -> TrainerFailure:
    return TrainerFailure.model_validate(job_storage(uri).get_json(layout.FAILURE))


def test_an_init_adapter_of_another_rank_or_altered_is_refused(
    rounds: Rounds, tiny_model: Path, prepared_dataset: Path
) -> None:
    spec = tr.small_spec(
        "r2-rank", tiny_model, quantization=QLORA, init_adapter=rounds.init, lora={"r": 4, "alpha": 8}
    )
    other_rank = tr.with_init_adapter(rounds.root / "rank", prepared_dataset, spec, rounds.round1)
    assert run_trainer(other_rank).returncode != 0
    message = _failure(other_rank).error
    assert "does not fit this job's LoRA" in message and "shape" in message

    spec = tr.small_spec("r2-altered", tiny_model, quantization=QLORA, init_adapter=rounds.init)
    altered = tr.with_init_adapter(rounds.root / "altered", prepared_dataset, spec, rounds.round1)
    weights = LocalStorage(job_storage(altered).root).root / "init_adapter" / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert run_trainer(altered).returncode != 0
    assert "init adapter does not match its manifest" in _failure(altered).error
    assert not job_storage(altered).exists(layout.RESULT)
