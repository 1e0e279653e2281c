"""Commit point, verification, fallback and pruning of checkpoints in storage."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from brightrun import layout
from brightrun.storage import LocalStorage
from trainer import checkpoints
from trainer.checkpoints import REQUIRED_FILES


def _local_checkpoint(tmp: Path, step: int) -> Path:
    """The five files as `save_local` writes them: safetensors, plain-tensor `.pt`, JSON."""
    directory = tmp / f"local-{step}"
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.ones(1, 4)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 / (s + 1))
    state = checkpoints.TrainerState(
        step=step,
        total_steps=10,
        epoch=0.5,
        micro_batches_done=step,
        data_epoch=0,
        data_batch_index=step,
        sampler_seed=1,
    )
    checkpoints.save_local(directory, model, optimizer, scheduler, state)
    return directory


class _RunsCode:
    """Loading this with full pickle would create `marker`: what an attacker plants."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (Path.write_text, (self.marker, "pwned"))  # type: ignore[return-value]


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "job")


def test_commit_writes_manifest_then_latest_and_keeps_last_k(storage: LocalStorage, tmp_path: Path) -> None:
    for step in (3, 6, 9):
        checkpoints.commit(storage, _local_checkpoint(tmp_path, step), step, keep_last=2)
        assert checkpoints.read_latest(storage) == step
    assert checkpoints.stored_steps(storage) == [6, 9]
    assert checkpoints.committed_steps(storage) == [9, 6]
    manifest = storage.get_json(layout.checkpoint_manifest(9))
    assert set(manifest["files"]) == set(REQUIRED_FILES) and manifest["step"] == 9


def test_fallback_to_previous_commit_on_any_damage(storage: LocalStorage, tmp_path: Path) -> None:
    for step in (3, 6):
        checkpoints.commit(storage, _local_checkpoint(tmp_path, step), step, keep_last=2)
    (storage.root / layout.checkpoint_dir(6) / "optimizer.pt").unlink()
    found = checkpoints.fetch_latest_valid(storage, tmp_path / "restore")
    assert found is not None and found.step == 3
    assert [s for s, _ in found.rejected] == [6] and "optimizer.pt" in found.rejected[0][1]
    assert (found.directory / "rng.pt").read_bytes() == (tmp_path / "local-3" / "rng.pt").read_bytes()


def test_same_size_byte_flip_is_rejected(storage: LocalStorage, tmp_path: Path) -> None:
    checkpoints.commit(storage, _local_checkpoint(tmp_path, 3), 3, keep_last=2)
    path = storage.root / layout.checkpoint_dir(3) / "adapter_model.safetensors"
    data = bytearray(path.read_bytes())
    data[0] ^= 1
    path.write_bytes(bytes(data))
    found = checkpoints.fetch_latest_valid(storage, tmp_path / "restore")
    assert found is not None and found.step == -1 and found.rejected[0][0] == 3


def test_uncommitted_upload_is_not_a_candidate_and_gets_discarded(
    storage: LocalStorage, tmp_path: Path
) -> None:
    checkpoints.commit(storage, _local_checkpoint(tmp_path, 3), 3, keep_last=2)
    # A complete-looking upload of step 6 that was killed before LATEST moved.
    checkpoints.upload_with_manifest(
        storage, layout.checkpoint_dir(6), _local_checkpoint(tmp_path, 6), 6, before_manifest=lambda: None
    )
    assert checkpoints.committed_steps(storage) == [3]
    assert checkpoints.discard_after(storage, 3) == [6]
    assert checkpoints.stored_steps(storage) == [3]


def test_no_latest_means_start_from_scratch(storage: LocalStorage, tmp_path: Path) -> None:
    assert checkpoints.fetch_latest_valid(storage, tmp_path / "restore") is None


def test_pruning_a_local_storage_leaves_no_empty_directories(storage: LocalStorage, tmp_path: Path) -> None:
    for step in (3, 6, 9):
        checkpoints.commit(storage, _local_checkpoint(tmp_path, step), step, keep_last=1)
    checkpoints.discard_after(storage, 9)
    step_dirs = sorted(p.name for p in (storage.root / layout.CHECKPOINTS_DIR).iterdir() if p.is_dir())
    assert step_dirs == ["00000009"]


def test_safe_files_read_back_exactly(tmp_path: Path) -> None:
    directory = _local_checkpoint(tmp_path, 4)
    files = checkpoints.read_local(directory)
    assert files.state.step == 4 and set(files.adapter) == {"weight", "bias"}
    assert files.optimizer["param_groups"][0]["lr"] == 1e-3
    assert isinstance(files.rng["torch"], torch.Tensor)


@pytest.mark.parametrize("planted", ["rng.pt", "optimizer.pt", "scheduler.pt"])
def test_a_crafted_pickle_with_a_matching_manifest_is_refused_and_never_run(
    planted: str, storage: LocalStorage, tmp_path: Path
) -> None:
    """The manifest lives in the same bucket: an attacker fixes the hash. Nothing may run."""
    for step in (3, 6):
        checkpoints.commit(storage, _local_checkpoint(tmp_path, step), step, keep_last=2)
    marker = tmp_path / "ran-attackers-code"
    six = tmp_path / "local-6"
    torch.save({"state": _RunsCode(marker)}, six / planted)
    manifest = checkpoints.build_manifest(six, 6)
    storage.put_file(f"{layout.checkpoint_dir(6)}/{planted}", six / planted)
    storage.put_bytes(layout.checkpoint_manifest(6), manifest.model_dump_json().encode())

    found = checkpoints.fetch_latest_valid(storage, tmp_path / "restore")

    assert not marker.exists()
    torch.load(six / planted, weights_only=False)  # the planted file really is an exploit
    assert marker.read_text() == "pwned"
    assert found is not None and found.step == 3 and found.files is not None
    ((step, reason),) = found.rejected
    assert step == 6 and f"checkpoints/00000006/{planted}" in reason and "refused" in reason
