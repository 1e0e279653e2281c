"""Commit point, verification, fallback and pruning of checkpoints in storage."""

from __future__ import annotations

from pathlib import Path

import pytest

from brightrun import layout
from brightrun.storage import LocalStorage
from trainer import checkpoints
from trainer.checkpoints import REQUIRED_FILES


def _local_checkpoint(tmp: Path, step: int) -> Path:
    directory = tmp / f"local-{step}"
    directory.mkdir()
    for name in REQUIRED_FILES:
        (directory / name).write_bytes(f"{name} at step {step}".encode() * 50)
    return directory


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
