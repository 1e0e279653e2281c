"""Batching and label masks of the prepared dataset the trainer reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from brightrun.prepared import IGNORE_INDEX, TRAIN, VALIDATION
from trainer.data import BatchStream, Example, collate, load_examples, padding_share, plan_epoch, plan_steps


def _lengths() -> list[int]:
    return [(i * 37) % 200 + 10 for i in range(101)]


def test_epoch_plan_is_a_deterministic_permutation_per_seed_and_epoch() -> None:
    lengths = _lengths()
    plan = plan_epoch(lengths, 4, seed=1, epoch=0)
    flat = [i for batch in plan for i in batch]
    assert sorted(flat) == list(range(len(lengths)))
    assert plan == plan_epoch(lengths, 4, seed=1, epoch=0)
    assert plan != plan_epoch(lengths, 4, seed=1, epoch=1)
    assert plan != plan_epoch(lengths, 4, seed=2, epoch=0)


def test_length_grouping_cuts_padding() -> None:
    lengths = _lengths()
    examples = [Example([1] * n, [1] * n) for n in lengths]

    def share(group: bool) -> float:
        stream = BatchStream(examples, 4, seed=0, group_by_length=group)
        return padding_share(stream, stream.batches_per_epoch)

    assert share(True) < 0.05 < share(False)


def test_stream_position_and_step_plan() -> None:
    examples = [Example([1, 2], [1, 2]) for _ in range(10)]
    stream = BatchStream(examples, 4, seed=0)
    assert stream.batches_per_epoch == 3
    pos = stream.position(7)
    assert (pos.epoch, pos.batch_index, pos.sampler_seed) == (2, 1, 0)
    assert plan_steps(3, epochs=2.0, max_steps=None, gradient_accumulation_steps=4) == (2, 6)
    assert plan_steps(3, epochs=2.0, max_steps=5, gradient_accumulation_steps=4) == (5, 20)


def test_collate_masks_padding_out_of_attention_and_loss() -> None:
    batch = collate([Example([5, 6, 7], [IGNORE_INDEX, 6, 7]), Example([8], [8])], pad_token_id=0)
    assert batch.input_ids == [[5, 6, 7], [8, 0, 0]]
    assert batch.labels == [[IGNORE_INDEX, 6, 7], [8, IGNORE_INDEX, IGNORE_INDEX]]
    assert batch.attention_mask == [[1, 1, 1], [1, 0, 0]]
    assert (batch.tokens, batch.padding_tokens, batch.trained_tokens) == (4, 2, 2)


def test_labels_train_only_targets_and_their_end_of_turn(
    prepared_dataset: Path, tiny_model: Path, sample_dataset: Path
) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    source = json.loads(sample_dataset.read_text())
    targets = {
        " ".join(p["target_response"].split())
        for c in source["conversations"]
        for p in c["training_pairs"]
        if p["target_response"]
    }
    spans = 0
    for split in (TRAIN, VALIDATION):
        for example in load_examples(prepared_dataset / split, 4096):
            span: list[int] = []
            for token, label in zip(example.input_ids, example.labels, strict=True):
                assert label in (IGNORE_INDEX, token)
                if label != IGNORE_INDEX:
                    span.append(token)
                elif span:
                    pytest.fail(f"a trained span does not end with <|eot_id|>: {tokenizer.decode(span)!r}")
                if span and span[-1] == eot:
                    text = " ".join(tokenizer.decode(span[:-1]).split())
                    assert text in targets, f"trained text is not a target: {text[:80]!r}"
                    spans += 1
                    span = []
            assert not span
    assert spans > 20
