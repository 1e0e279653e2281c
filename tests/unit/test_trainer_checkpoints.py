"""Commit point, verification, fallback and pruning of checkpoints in storage."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from brightrun import layout
from brightrun.storage import LocalStorage, ObjectInfo, StorageError
from tests.fixtures.training import RunsCode
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
    torch.save({"state": RunsCode(marker)}, six / planted)
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


# ---------------------------------------------------------------- a read error is not a bad checkpoint

NO_WAIT = checkpoints.ReadRetry(attempts=3, first_delay_s=0.0)


class FlakyStorage(LocalStorage):
    """A local storage whose next `failures` reads fail as an outage would (any read:
    get, list, stat), then answer again."""

    def __init__(self, root: Path, failures: int = 0) -> None:
        super().__init__(root)
        self.failures = failures
        self.failed_reads = 0

    def _maybe_fail(self, key: str) -> None:
        if self.failures > 0:
            self.failures -= 1
            self.failed_reads += 1
            raise StorageError(f"{key}: connection reset (outage)")

    def get_bytes(self, key: str, *, expected_sha256: str | None = None) -> bytes:
        self._maybe_fail(key)
        return super().get_bytes(key, expected_sha256=expected_sha256)

    def get_file(self, key: str, dest: Path, *, expected_sha256: str | None = None) -> ObjectInfo:
        self._maybe_fail(key)
        return super().get_file(key, dest, expected_sha256=expected_sha256)


def _two_commits(tmp_path: Path) -> FlakyStorage:
    storage = FlakyStorage(tmp_path / "job")
    for step in (3, 6):
        checkpoints.commit(storage, _local_checkpoint(tmp_path, step), step, keep_last=2)
    return storage


def _snapshot(storage: LocalStorage) -> dict[str, ObjectInfo | None]:
    return {k: storage.stat(k) for k in storage.list()}


def test_two_failed_reads_are_retried_and_lose_no_checkpoint(tmp_path: Path) -> None:
    """The reproduction: two storage errors used to reject both valid checkpoints."""
    storage = _two_commits(tmp_path)
    before = _snapshot(storage)
    storage.failures = 2
    found = checkpoints.fetch_latest_valid(storage, tmp_path / "restore", NO_WAIT)
    assert storage.failed_reads == 2
    assert found is not None and found.step == 6 and found.rejected == [] and found.files is not None
    assert _snapshot(storage) == before


@pytest.mark.parametrize("failures", [1, 2, 100])
def test_an_outage_past_the_retries_is_unreadable_not_rejected(failures: int, tmp_path: Path) -> None:
    storage = _two_commits(tmp_path)
    before = _snapshot(storage)
    storage.failures = failures
    no_retry = checkpoints.ReadRetry(attempts=1, first_delay_s=0.0)
    with pytest.raises(checkpoints.CheckpointUnreadable) as raised:
        checkpoints.fetch_latest_valid(storage, tmp_path / "restore", no_retry)
    assert "no checkpoint was rejected or deleted" in str(raised.value)
    storage.failures = 0  # storage is back
    assert _snapshot(storage) == before  # nothing deleted, LATEST unchanged
    assert checkpoints.read_latest(storage) == 6


def test_an_outage_while_reading_a_file_never_falls_back(tmp_path: Path) -> None:
    storage = _two_commits(tmp_path)
    calls = {"n": 0}
    real = storage.get_file

    def failing_get_file(key: str, dest: Path, *, expected_sha256: str | None = None) -> ObjectInfo:
        calls["n"] += 1
        raise StorageError(f"{key}: 503 slow down")

    storage.get_file = failing_get_file  # type: ignore[method-assign]
    with pytest.raises(checkpoints.CheckpointUnreadable, match=r"checkpoints/00000006/.*after 3 tries"):
        checkpoints.fetch_latest_valid(storage, tmp_path / "restore", NO_WAIT)
    assert calls["n"] == 3  # retried, then stopped: step 3 was never tried as a fallback
    storage.get_file = real  # type: ignore[method-assign]
    found = checkpoints.fetch_latest_valid(storage, tmp_path / "restore", NO_WAIT)
    assert found is not None and found.step == 6  # storage is back: the same checkpoint resumes


def test_an_outage_reading_latest_is_not_start_from_scratch(tmp_path: Path) -> None:
    storage = _two_commits(tmp_path)
    storage.failures = 100
    with pytest.raises(checkpoints.CheckpointUnreadable, match="LATEST"):
        checkpoints.read_latest(storage, NO_WAIT)


def test_a_manifest_naming_a_path_outside_the_checkpoint_is_corrupt(tmp_path: Path) -> None:
    storage = _two_commits(tmp_path)
    manifest = storage.get_json(layout.checkpoint_manifest(6))
    manifest["files"]["../../spec.json"] = manifest["files"]["rng.pt"]
    storage.put_json(layout.checkpoint_manifest(6), manifest)
    found = checkpoints.fetch_latest_valid(storage, tmp_path / "restore", NO_WAIT)
    assert found is not None and found.step == 3
    assert "'../../spec.json'" in found.rejected[0][1]


def test_all_corrupt_checkpoints_are_quarantined_never_deleted(tmp_path: Path) -> None:
    storage = _two_commits(tmp_path)
    (storage.root / layout.checkpoint_dir(6) / "optimizer.pt").unlink()
    path = storage.root / layout.checkpoint_dir(3) / "adapter_model.safetensors"
    data = bytearray(path.read_bytes())
    data[0] ^= 1
    path.write_bytes(bytes(data))
    rng_3 = (storage.root / layout.checkpoint_dir(3) / "rng.pt").read_bytes()
    found = checkpoints.fetch_latest_valid(storage, tmp_path / "restore", NO_WAIT)
    assert found is not None and found.step == -1 and [s for s, _ in found.rejected] == [6, 3]

    moved = checkpoints.quarantine(storage, found.rejected, tmp_path / "restore", "attempt-2")

    base = f"{checkpoints.QUARANTINE_DIR}/attempt-2"
    assert f"{base}/{layout.checkpoint_manifest(6)}" in moved and f"{base}/{layout.LATEST}" in moved
    assert storage.get_bytes(f"{base}/{layout.checkpoint_dir(3)}/rng.pt") == rng_3
    note = storage.get_json(f"{base}/REJECTED.json")
    assert set(note["rejected"]) == {"3", "6"} and "optimizer.pt" in note["rejected"]["6"]
    # The flipped file: the storage refuses its bytes, so it is named, not silently dropped.
    assert list(note["not_copied"]) == [f"{layout.checkpoint_dir(3)}/adapter_model.safetensors"]
    assert checkpoints.stored_steps(storage) == [] and checkpoints.read_latest(storage) is None
