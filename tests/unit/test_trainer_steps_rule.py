"""Issue 25: a step is `batch_size x gradient_accumulation_steps` assistant targets (the
per-pair recipe's rows), whatever the packing; the orchestrator's estimate agrees."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from brightrun import prepared
from brightrun.prepared import IGNORE_INDEX as X
from brightrun.spec import JobSpec
from brightrun.steps import count_targets, steps_per_epoch, target_spans, total_steps
from tasks import cost_model as cm
from trainer.data import Example, TargetStream, load_examples, make_batch, plan_steps, plan_target_epoch


def conversation(targets: int, rng: random.Random) -> Example:
    """A merged conversation: a prompt, then `targets` (user turn, assistant reply) runs."""
    ids = [1] * rng.randint(1, 4)
    labels = [X] * len(ids)
    for _ in range(targets):
        user, reply = rng.randint(1, 5), rng.randint(1, 6)
        ids += [2] * user + [3] * reply
        labels += [X] * user + [3] * reply
    return Example(ids, labels)


def dataset(n: int, seed: int, most: int = 7) -> list[Example]:
    rng = random.Random(seed)
    return [conversation(rng.randint(1, most), rng) for _ in range(n)]


def test_target_spans_are_the_runs_of_trained_labels() -> None:
    assert target_spans([X, X, 5, 6, X, 7, X]) == [(2, 4), (5, 6)]
    assert target_spans([X, 5, 6]) == [(1, 3)]
    # Position 0 predicts nothing: a label there is no target.
    assert target_spans([5, X, 6]) == [(2, 3)]
    assert count_targets([X] * 4) == 0


def test_a_piece_trains_its_own_targets_and_ends_after_the_last() -> None:
    e = Example([1, 2, 3, 4, 5, 6, 7, 8], [X, X, 3, X, 5, 6, X, 8])
    p = e.piece(1, 2)
    assert p.input_ids == [1, 2, 3, 4, 5, 6]
    assert p.labels == [X, X, X, X, 5, 6]
    assert e.piece(0, 1).labels == [X, X, 3]
    assert e.piece(2, 3).labels == [X] * 7 + [8]


@pytest.mark.parametrize("batch_size", [1, 3, 4, 8])
@pytest.mark.parametrize("group_by_length", [True, False])
def test_every_target_is_trained_once_an_epoch_in_micro_batches_of_batch_size(
    batch_size: int, group_by_length: bool
) -> None:
    examples = dataset(37, seed=batch_size)
    stream = TargetStream(examples, batch_size, seed=3, group_by_length=group_by_length)
    total = sum(count_targets(e.labels) for e in examples)
    assert stream.batches_per_epoch == math.ceil(total / batch_size)
    seen: list[tuple[int, int]] = []
    trained = 0
    for m in range(stream.batches_per_epoch):
        pieces = stream.pieces(m)
        counts = sum(stop - first for _, first, stop in pieces)
        last = m == stream.batches_per_epoch - 1
        assert counts == batch_size or (last and counts == total - m * batch_size)
        seen += [(i, t) for i, first, stop in pieces for t in range(first, stop)]
        batch = stream.micro_batch(m)
        assert sum(count_targets(e.labels) for e in batch) == counts
        trained += make_batch(batch, 0, packing=True).trained_tokens
    assert sorted(seen) == sorted(
        (i, t) for i, e in enumerate(examples) for t in range(count_targets(e.labels))
    )
    assert trained == sum(e.trained_tokens - (e.labels[0] != X) for e in examples)
    # The next epoch is another order of the same targets.
    assert stream.pieces(stream.batches_per_epoch) != stream.pieces(0) or batch_size >= total


def test_packing_changes_the_rows_not_the_supervision() -> None:
    stream = TargetStream(dataset(20, seed=1), 4, seed=0)
    for m in range(stream.batches_per_epoch):
        packed = make_batch(stream.micro_batch(m), 0, packing=True)
        padded = make_batch(stream.micro_batch(m), 0, packing=False)
        assert packed.trained_tokens == padded.trained_tokens
        assert packed.tokens == padded.tokens and packed.padding_tokens == 0


def test_the_plan_is_a_pure_function_so_a_resume_rebuilds_it() -> None:
    examples = dataset(50, seed=9)
    lengths = [len(e.input_ids) for e in examples]
    targets = [count_targets(e.labels) for e in examples]
    first = plan_target_epoch(lengths, targets, 4, seed=5, epoch=2)
    assert first == plan_target_epoch(list(lengths), list(targets), 4, seed=5, epoch=2)
    assert first != plan_target_epoch(lengths, targets, 4, seed=6, epoch=2)
    # A fresh stream (a new attempt) asked for micro-batch m gives what a running one gave.
    running = TargetStream(examples, 4, seed=5)
    seen = [running.micro_batch(m) for m in range(3 * running.batches_per_epoch)]
    resumed = TargetStream(examples, 4, seed=5)
    for m in (running.batches_per_epoch + 1, 2 * running.batches_per_epoch - 1, 5):
        assert resumed.micro_batch(m) == seen[m]


@pytest.mark.parametrize(
    ("n", "most", "epochs", "batch", "accumulation", "max_steps"),
    [
        (60, 9, 1.0, 4, 4, None),
        (1, 1, 2.0, 4, 2, None),
        (37, 5, 1.5, 3, 4, None),
        (9, 3, 3.0, 2, 1, None),
        (100, 12, 0.3, 8, 2, None),
        (25, 4, 2.0, 4, 4, 7),
    ],
)
def test_the_estimate_and_the_progress_bar_count_the_trainers_steps(
    n: int, most: int, epochs: float, batch: int, accumulation: int, max_steps: int | None
) -> None:
    examples = dataset(n, seed=n, most=most)
    stream = TargetStream(examples, batch, seed=0)
    trainer_steps, micro = plan_steps(stream.batches_per_epoch, epochs, max_steps, accumulation)
    job = JobSpec(
        job_id="j",
        base_model="m",
        training={
            "epochs": epochs,
            "batch_size": batch,
            "gradient_accumulation_steps": accumulation,
            "max_steps": max_steps,
            "warmup_steps": 1,
        },
    )
    assert cm.estimated_total_steps(job, stream.total_targets) == trainer_steps
    assert (
        total_steps(
            stream.total_targets,
            batch_size=batch,
            gradient_accumulation_steps=accumulation,
            epochs=epochs,
            max_steps=max_steps,
        )
        == trainer_steps
    )
    # The seed's rule: an epoch is ceil(targets / (batch x accumulation)) optimizer steps.
    assert steps_per_epoch(stream.total_targets, batch, accumulation) == math.ceil(
        stream.total_targets / (batch * accumulation)
    )
    if max_steps is None and epochs == 1.0:
        assert trainer_steps == math.ceil(stream.total_targets / (batch * accumulation))
        assert micro == stream.batches_per_epoch


def test_the_prepared_set_records_the_targets_the_trainer_counts(
    tiny_model: Path, sample_dataset: Path, tmp_path: Path
) -> None:
    from tasks.dataset import PrepareOptions, prepare_dataset

    out = tmp_path / "data"
    prepare_dataset(
        sample_dataset, tiny_model, out, PrepareOptions(max_seq_length=256, skip_overlong_targets=True)
    )
    meta = prepared.read_meta(out)
    stream = TargetStream(load_examples(out / prepared.TRAIN, 256), 4, seed=0)
    assert meta.train_targets == stream.total_targets == prepared.step_examples(meta)
    pairs = sum(len(e.pair_ids) for e in prepared.iter_examples(out / prepared.TRAIN))
    assert meta.train_targets == pairs > meta.train_examples  # merged turns: several per sequence
    # A set prepared before the field counts its sequences, as estimates did then.
    assert prepared.step_examples(meta.model_copy(update={"train_targets": None})) == meta.train_examples


def test_a_checkpoint_from_another_plan_is_refused_not_resumed_out_of_place() -> None:
    from brightrun.errors import BrightrunError
    from trainer.checkpoints import TrainerState
    from trainer.plan import check_plan

    stream = TargetStream(dataset(30, seed=2), 4, seed=0)
    steps, _ = plan_steps(stream.batches_per_epoch, 2.0, None, 4)

    def state(total: int, per_epoch: int | None) -> TrainerState:
        return TrainerState(
            step=3,
            total_steps=total,
            epoch=0.5,
            micro_batches_done=12,
            data_epoch=0,
            data_batch_index=12,
            sampler_seed=0,
            micro_batches_per_epoch=per_epoch,
        )

    check_plan(state(steps, stream.batches_per_epoch), stream, steps)
    check_plan(state(steps, None), stream, steps)  # written before the field: the steps agree
    # Written under the old rule (a micro-batch of 4 sequences): another plan.
    old = math.ceil(30 / 4)
    with pytest.raises(BrightrunError, match=r"checkpoint 3 .* micro-batches an epoch.*step rule"):
        check_plan(state(steps, old), stream, steps)
    with pytest.raises(BrightrunError, match="start the job again"):
        check_plan(state(math.ceil(2 * old / 4), None), stream, steps)


@pytest.mark.parametrize(("batch", "most"), [(2, 7), (4, 7), (4, 3), (8, 12)])
def test_the_cost_models_tokens_per_step_counts_the_repeated_prefixes(batch: int, most: int) -> None:
    examples = dataset(200, seed=batch + most, most=most)
    stream = TargetStream(examples, batch, seed=1)
    actual = sum(
        make_batch(stream.micro_batch(m), 0, packing=True).tokens for m in range(stream.batches_per_epoch)
    )
    tokens = sum(len(e.input_ids) for e in examples)
    job = JobSpec(
        job_id="j", base_model="m", training={"batch_size": batch, "gradient_accumulation_steps": 1}
    )
    estimated = (
        cm.tokens_per_step(job, stream.total_targets, tokens, len(examples)) * stream.batches_per_epoch
    )
    blind = cm.tokens_per_step(job, stream.total_targets, tokens) * stream.batches_per_epoch
    assert actual > tokens  # straddling sequences are computed twice in part
    assert abs(estimated / actual - 1) < 0.15
    assert abs(estimated - actual) < abs(blind - actual)
