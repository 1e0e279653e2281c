"""The trainer through its real entry point (`python -m trainer --spec URI`), on the CPU with the
tiny model and real 4-bit NF4: exact resume after SIGKILL, kills during checkpoint upload,
corrupted checkpoints, the end-of-run outputs, and a finished job started again."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

import pytest

from brightrun import layout
from brightrun.protocol import EvalReport, Manifest, TrainerFailure, TrainerResult, TrainerStatus
from brightrun.storage import S3Storage, sha256_file
from tests.fixtures import training as tr
from tests.fixtures.training import EXACT, adapter_tensors, events, job_storage, metric_records, run_trainer
from trainer.run import job_workdir

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@dataclass(frozen=True)
class Scenario:
    """An uninterrupted reference run, and a twin job SIGKILLed at `kill_step` (not resumed)."""

    four_bit: bool
    reference: str
    killed: str
    kill_step: int
    root: Path


def _scenario(root: Path, tiny_model: Path, prepared: Path, four_bit: bool) -> Scenario:
    quant = {"load_in_4bit": four_bit}
    reference = tr.trained_job(root / "ref", prepared, tr.small_spec("ref", tiny_model, quantization=quant))
    # Any step after the first commit (step 3); random so that no one position is special.
    kill_step = random.randint(4, 9)
    spec = tr.small_spec("killed", tiny_model, quantization=quant)
    killed = tr.killed_job(root / "killed", prepared, spec, kill_step)
    assert not job_storage(killed).exists(layout.RESULT)
    return Scenario(four_bit, reference, killed, kill_step, root)


@pytest.fixture(scope="module")
def lora_runs(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, prepared_dataset: Path) -> Scenario:
    return _scenario(tmp_path_factory.mktemp("lora"), tiny_model, prepared_dataset, four_bit=False)


@pytest.fixture(scope="module")
def qlora_runs(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, prepared_dataset: Path
) -> Scenario:
    return _scenario(tmp_path_factory.mktemp("qlora"), tiny_model, prepared_dataset, four_bit=True)


@pytest.mark.parametrize("runs", ["lora_runs", "qlora_runs"])
def test_resume_after_sigkill_gives_the_uninterrupted_adapter(
    runs: str, request: pytest.FixtureRequest
) -> None:
    scenario: Scenario = request.getfixturevalue(runs)
    storage = job_storage(scenario.killed)
    committed = int(storage.get_bytes(layout.LATEST).decode())
    assert 3 <= committed <= scenario.kill_step
    # A SIGKILL leaves the scratch directory behind; the next attempt reuses it, then removes it.
    work = job_workdir("killed", storage.url)
    assert work.is_dir()
    assert not job_workdir("ref", job_storage(scenario.reference).url).exists()  # completed: removed

    proc = run_trainer(scenario.killed)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert not work.exists()

    resumed = events(storage, "resumed")
    assert [e["payload"]["from_step"] for e in resumed] == [committed]
    assert resumed[0]["attempt"] == 2
    reference, result = adapter_tensors(job_storage(scenario.reference)), adapter_tensors(storage)
    diff = tr.max_abs_diff(reference, result)
    assert diff <= EXACT, f"kill at step {scenario.kill_step}, resumed from {committed}: max abs diff {diff}"
    # The adapter did train (LoRA B starts at zero), so equality is not trivial.
    assert max(float(t.abs().max()) for k, t in result.items() if "lora_B" in k) > 1e-3
    status = TrainerStatus.model_validate(storage.get_json(layout.STATUS))
    assert (status.phase, status.attempt, status.step) == ("completed", 2, 10)
    # Steps after the commit are trained again in attempt 2, none skipped.
    steps = sorted(r["step"] for r in metric_records(storage) if r["attempt"] == 2 and r["loss"] is not None)
    assert steps == list(range(committed + 1, 11))


def test_end_of_run_outputs_and_validation_loss_goes_down(lora_runs: Scenario) -> None:
    storage = job_storage(lora_runs.reference)
    baseline = [r["eval_loss"] for r in metric_records(storage) if r["step"] == 0 and r["eval_loss"]]
    report = EvalReport.model_validate(storage.get_json(layout.EVAL))
    assert baseline and report.eval_loss < baseline[0]
    assert report.perplexity == pytest.approx(math.exp(report.eval_loss))
    assert len(report.samples) == 1 and report.samples[0]["reference"]

    result = TrainerResult.model_validate(storage.get_json(layout.RESULT))
    assert (result.steps, result.adapter_prefix, result.attempts) == (10, "adapter", 1)
    manifest = Manifest.model_validate(storage.get_json(f"{layout.ADAPTER_DIR}/{layout.MANIFEST}"))
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "README.md"):
        entry = manifest.files[name]
        assert sha256_file(storage.root / layout.ADAPTER_DIR / name) == entry.sha256
    card = (storage.root / layout.ADAPTER_DIR / "README.md").read_text()
    meta = storage.get_json("data/meta.json")
    assert meta["source_sha256"] in card and "base_model:" in card and "validation loss" in card

    records = [r for r in metric_records(storage) if r["loss"] is not None]
    last = max(records, key=lambda r: r["step"])
    assert last["tokens_processed"] > last["trained_tokens"] > 0
    assert last["padding_tokens"] < 0.05 * last["tokens_processed"]
    assert all(r["learning_rate"] is not None and r["grad_norm"] is not None for r in records)
    committed = [e["payload"]["step"] for e in events(storage, "checkpoint_committed")]
    assert committed == [3, 6, 9, 10]
    # keep_last=2: only the two newest committed checkpoints remain.
    remaining = {k.split("/")[1] for k in storage.list("checkpoints/") if k != layout.LATEST}
    assert remaining == {"00000009", "00000010"}


def test_restarting_a_finished_job_only_reports_it(lora_runs: Scenario) -> None:
    storage = job_storage(lora_runs.reference)
    before = {k: storage.stat(k) for k in storage.list()}
    proc = run_trainer(lora_runs.reference)
    assert proc.returncode == 0
    assert "already finished" in proc.stdout
    assert {k: storage.stat(k) for k in storage.list()} == before


@pytest.fixture(scope="module")
def upload_killed(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, prepared_dataset: Path, lora_runs: Scenario
) -> str:
    """A plain LoRA job SIGKILLed in the middle of uploading checkpoint 9 (LATEST = 6)."""
    root = tmp_path_factory.mktemp("upload-killed")
    uri = tr.create_job(
        root,
        prepared_dataset,
        tr.small_spec("killed-in-upload", tiny_model, quantization={"load_in_4bit": False}),
    )
    proc = run_trainer(uri, env={"BRIGHTRUN_TRAINER_FAULT": "kill_in_upload:9"})
    assert proc.returncode == -9, proc.stderr[-3000:]
    storage = job_storage(uri)
    assert storage.get_bytes(layout.LATEST).decode().strip() == "6"
    partial = storage.list(layout.checkpoint_dir(9) + "/")
    assert partial and layout.checkpoint_manifest(9) not in partial
    return uri


@pytest.mark.parametrize(
    "damage", ["none", "flip_bytes", "delete_file", "truncate_manifest", "crafted_pickle"]
)
def test_damaged_or_half_written_checkpoints_are_never_loaded(
    damage: str, upload_killed: str, lora_runs: Scenario, tmp_path: Path
) -> None:
    uri = tr.copy_job(upload_killed, tmp_path)
    storage = job_storage(uri)
    six = storage.root / layout.checkpoint_dir(6)
    if damage == "flip_bytes":
        path = six / "adapter_model.safetensors"
        data = bytearray(path.read_bytes())
        data[-5] ^= 0xFF
        path.write_bytes(bytes(data))  # same size, one byte differs: only the sha256 can tell
    elif damage == "delete_file":
        (six / "rng.pt").unlink()
    elif damage == "truncate_manifest":
        manifest = six / layout.MANIFEST
        manifest.write_bytes(manifest.read_bytes()[:40])
    elif damage == "crafted_pickle":
        # The bucket holds the manifest too: a planted file comes with a matching sha256.
        import torch

        from trainer import checkpoints

        local = tmp_path / "planted"
        storage.get_dir(layout.checkpoint_dir(6), local)
        torch.save({"torch": tr.RunsCode(tmp_path / "marker")}, local / "rng.pt")
        (local / layout.MANIFEST).unlink()
        storage.put_file(f"{layout.checkpoint_dir(6)}/rng.pt", local / "rng.pt")
        manifest_bytes = checkpoints.build_manifest(local, 6).model_dump_json().encode()
        storage.put_bytes(layout.checkpoint_manifest(6), manifest_bytes)

    proc = run_trainer(uri)
    assert proc.returncode == 0, proc.stderr[-4000:]
    expected_from = 6 if damage == "none" else 3
    assert [e["payload"]["from_step"] for e in events(storage, "resumed")] == [expected_from]
    rejected = [e["payload"] for e in events(storage, "checkpoint_rejected")]
    assert [r["step"] for r in rejected] == ([] if damage == "none" else [6])
    if damage == "crafted_pickle":
        assert not (tmp_path / "marker").exists()
        assert "checkpoints/00000006/rng.pt: refused" in rejected[0]["reason"]
    assert tr.adapter_diff(lora_runs.reference, uri) <= EXACT


def test_two_failed_checkpoint_reads_lose_no_checkpoint(
    upload_killed: str, lora_runs: Scenario, tmp_path: Path
) -> None:
    """The reproduction: two storage errors during resume used to reject both valid
    checkpoints, delete them all and restart from step 0. Now they are retried."""
    uri = tr.copy_job(upload_killed, tmp_path)
    storage = job_storage(uri)
    proc = run_trainer(uri, env={"BRIGHTRUN_TRAINER_FAULT": "checkpoint_read_errors:2"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "injected storage outage" in proc.stderr
    assert [e["payload"]["from_step"] for e in events(storage, "resumed")] == [6]
    assert events(storage, "checkpoint_rejected") == []
    assert tr.adapter_diff(lora_runs.reference, uri) <= EXACT


def test_a_storage_outage_past_the_retries_fails_the_attempt_and_keeps_every_checkpoint(
    upload_killed: str, lora_runs: Scenario, tmp_path: Path
) -> None:
    uri = tr.copy_job(upload_killed, tmp_path)
    storage = job_storage(uri)
    before = {k: storage.stat(k) for k in storage.list(layout.CHECKPOINTS_DIR + "/")}
    before[layout.LATEST] = storage.stat(layout.LATEST)
    proc = run_trainer(uri, env={"BRIGHTRUN_TRAINER_FAULT": "checkpoint_read_errors:1000"})
    assert proc.returncode == 1, proc.stderr[-4000:]
    failure = TrainerFailure.model_validate(storage.get_json(layout.FAILURE))
    assert failure.error_type == "CheckpointUnreadable" and "LATEST" in failure.error
    assert "no checkpoint was rejected or deleted" in failure.error
    after = {k: storage.stat(k) for k in storage.list(layout.CHECKPOINTS_DIR + "/")}
    after[layout.LATEST] = storage.stat(layout.LATEST)
    assert after == before
    # Storage answers again: the next attempt resumes from the same checkpoint.
    proc = run_trainer(uri)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert [e["payload"]["from_step"] for e in events(storage, "resumed")] == [6]


def test_resume_against_s3_storage(
    seaweed,
    tiny_model: Path,
    prepared_dataset: Path,
    lora_runs: Scenario,  # type: ignore[no-untyped-def]
) -> None:
    """The same kill-and-resume through SeaweedFS: the trainer's only channel is S3."""
    client = seaweed.client()
    storage = S3Storage(seaweed.bucket, "trainer-s3/jobs/s3job", client=client)
    storage.put_dir("data", prepared_dataset)
    storage.put_json("spec.json", tr.small_spec("s3job", tiny_model, quantization={"load_in_4bit": False}))
    uri = storage.uri("spec.json")
    env = seaweed.env()
    killed = run_trainer(uri, env={**env, "BRIGHTRUN_TRAINER_FAULT": "kill_after_step:7"})
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert storage.get_bytes(layout.LATEST).decode().strip() == "6"
    proc = run_trainer(uri, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]

    from safetensors.torch import load

    resumed = load(storage.get_bytes(f"{layout.ADAPTER_DIR}/adapter_model.safetensors"))
    assert tr.max_abs_diff(adapter_tensors(job_storage(lora_runs.reference)), resumed) <= EXACT
    assert [e for e in storage.list("events/") if e.startswith("events/002-")]


def test_nan_loss_stops_the_run_as_a_failure(
    tmp_path: Path, tiny_model: Path, prepared_dataset: Path
) -> None:
    uri = tr.create_job(
        tmp_path, prepared_dataset, tr.small_spec("nan", tiny_model, quantization={"load_in_4bit": False})
    )
    proc = run_trainer(uri, env={"BRIGHTRUN_TRAINER_FAULT": "nan_loss_at_step:2"})
    assert proc.returncode == 1
    storage = job_storage(uri)
    failure = TrainerFailure.model_validate(storage.get_json(layout.FAILURE))
    assert (failure.phase, failure.error_type, failure.step) == ("training", "TrainingDiverged", 1)
    assert "nan" in failure.error and "learning_rate" in failure.error and failure.traceback
    assert TrainerStatus.model_validate(storage.get_json(layout.STATUS)).phase == "failed"
    assert not storage.exists(layout.RESULT)
