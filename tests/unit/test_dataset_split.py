"""The train/validation split is one rule, applied once by the writer and recorded."""

from __future__ import annotations

from pathlib import Path

from brightrun import prepared
from tasks.dataset import PrepareOptions, prepare_dataset
from tasks.dataset.split import SplitDecider, split_hash
from tests.unit.test_dataset_schema import make_conversation, make_file, write


def test_split_is_deterministic_and_seeded() -> None:
    ids = [f"conv-{i}" for i in range(400)]

    def validation(seed: int) -> list[bool]:
        decider = SplitDecider(0.2, seed)
        return [decider.decide(c) == "validation" for c in ids]

    first = validation(42)
    assert first == validation(42)
    assert 40 < sum(first) < 120
    assert first != validation(7)


def test_fallback_never_holds_out_a_conversation_without_examples() -> None:
    decider = SplitDecider(0.01, 42)
    ids = ["a", "b", "c"]
    for cid in ids:
        decider.decide(cid)
    smallest = min(["b", "c"], key=lambda c: split_hash(c, 42))
    assert decider.fallback(["b", "c"], validation_examples=0) == smallest
    assert decider.fallback(["b"], validation_examples=0) is None  # would leave nothing to train
    assert SplitDecider(0.0, 42).fallback(["b", "c"], validation_examples=0) is None


def test_held_out_conversation_without_a_trainable_target(tiny_model: Path, tmp_path: Path) -> None:
    """The case where the old copies of the rule disagreed: the conversation the rule would hold
    out first (smallest hash) has no trainable target. The writer holds out the next one, and
    the record says exactly what the files hold."""
    seed = 42
    ids = [f"c{i}" for i in range(4)]
    untrainable = min(ids, key=lambda c: split_hash(c, seed))
    conversations = [make_conversation(c, 2, qualities=[1, 1] if c == untrainable else None) for c in ids]
    src = write(tmp_path, make_file(conversations))
    out = tmp_path / "out"
    # 0.01: no conversation hashes below it, so the small-file fallback decides.
    report = prepare_dataset(src, tiny_model, out, PrepareOptions(validation_fraction=0.01, seed=seed))

    validation_ids = {e.conversation_id for e in prepared.iter_examples(out / prepared.VALIDATION)}
    train_ids = {e.conversation_id for e in prepared.iter_examples(out / prepared.TRAIN)}
    expected = min((c for c in ids if c != untrainable), key=lambda c: split_hash(c, seed))
    assert validation_ids == {expected} and report.validation.conversations == 1
    splits = prepared.read_splits(out)
    assert splits.validation == [expected]
    assert set(splits.train) == train_ids | {untrainable}
    assert prepared.read_meta(out).files_sha256[prepared.SPLITS]
