"""How a multi-GPU pod starts the trainer, and how the trainer reads its place in the world."""

from __future__ import annotations

import pytest

from brightrun.compute.runpod import start_command, trainer_command_for
from trainer.distributed import World, world_from_env


def test_a_pod_with_several_gpus_starts_one_trainer_per_gpu_under_torchrun() -> None:
    assert trainer_command_for("python -m trainer", 1) == "python -m trainer"
    four = trainer_command_for("python -m trainer", 4)
    assert four == "python -m torch.distributed.run --standalone --nproc-per-node=4 -m trainer"
    assert start_command(four, "s3://b/jobs/j/spec.json", 3600).endswith(
        "-- python -m torch.distributed.run --standalone --nproc-per-node=4 -m trainer --spec s3://b/jobs/j/spec.json"
    )


def test_world_comes_from_torchruns_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert world_from_env() == World() and World().is_main and not World().distributed
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "3")
    world = world_from_env()
    assert (world.rank, world.size, world.local_rank, world.is_main, world.distributed) == (
        3,
        4,
        3,
        False,
        True,
    )


def test_world_micro_batch_shares_cover_each_step_once() -> None:
    for size in (1, 2, 3, 5):
        shares = [list(World(rank, size).micro_batches(8, 12)) for rank in range(size)]
        assert sorted(m for share in shares for m in share) == [8, 9, 10, 11]
    assert list(World(4, 5).micro_batches(8, 12)) == []  # a rank may sit a step out
