"""The prepared dataset as batches: length-grouped, deterministic, resumable at any micro-batch.

The batch order of an epoch is a pure function of (seed, epoch), drawn from a private
generator, so it never depends on (or disturbs) the global RNG that dropout uses. A run
is a stream of micro-batches; micro-batch `m` is batch `m % batches_per_epoch` of epoch
`m // batches_per_epoch`, so the data position after optimizer step `s` is simply
`s * gradient_accumulation_steps` micro-batches in.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from brightrun.prepared import IGNORE_INDEX, iter_examples
from brightrun.steps import micro_batches_per_epoch, plan_steps, target_spans  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)

# Examples sorted by length within windows of this many batches: small padding, still random.
GROUP_WINDOW_BATCHES = 64


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]

    @property
    def trained_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)

    def piece(self, first: int, stop: int) -> Example:
        """The sequence trained on its targets `first..stop-1` only, cut after the last of
        them: causal attention means the tokens after it change none of their predictions."""
        spans = target_spans(self.labels)
        end = spans[stop - 1][1]
        labels = [IGNORE_INDEX] * end
        for start, span_end in spans[first:stop]:
            labels[start:span_end] = self.labels[start:span_end]
        return Example(self.input_ids[:end], labels)


@dataclass(frozen=True)
class DataPosition:
    """Where the next micro-batch comes from."""

    epoch: int
    batch_index: int
    sampler_seed: int


def load_examples(path: Path, max_seq_length: int) -> list[Example]:
    """Read a prepared split; longer examples are cut at `max_seq_length` (the dataset stage
    normally fits them already) and examples left with no trained token are skipped."""
    examples: list[Example] = []
    cut = skipped = 0
    for prepared in iter_examples(path):
        ids, labels = prepared.input_ids, prepared.labels
        if len(ids) != len(labels):
            raise ValueError(
                f"{path}: example of conversation {prepared.conversation_id} has {len(ids)} input ids "
                f"but {len(labels)} labels; prepare the dataset again"
            )
        if len(ids) > max_seq_length:
            ids, labels = ids[:max_seq_length], labels[:max_seq_length]
            cut += 1
        example = Example(list(ids), list(labels))
        if example.trained_tokens == 0:
            skipped += 1
            continue
        examples.append(example)
    if cut or skipped:
        log.warning("%s: %d example(s) cut to %d tokens, %d skipped", path.name, cut, max_seq_length, skipped)
    return examples


def plan_epoch(
    lengths: Sequence[int], batch_size: int, seed: int, epoch: int, *, group_by_length: bool = True
) -> list[list[int]]:
    """The batches (lists of example indices) of one epoch, in training order."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths)).tolist()
    if not group_by_length:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    window = batch_size * GROUP_WINDOW_BATCHES
    batches: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: (-lengths[i], i))
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    # Shuffle batch order so the long batches do not all come first.
    return [batches[i] for i in rng.permutation(len(batches)).tolist()]


def epoch_position(micro_batch: int, batches_per_epoch: int, seed: int) -> DataPosition:
    """Where global micro-batch `micro_batch` falls: its epoch and its index in that epoch."""
    return DataPosition(
        epoch=micro_batch // batches_per_epoch,
        batch_index=micro_batch % batches_per_epoch,
        sampler_seed=seed,
    )


class BatchStream:
    """Micro-batches by global index; epoch plans are computed on demand and cached."""

    def __init__(
        self,
        examples: Sequence[Any],
        batch_size: int,
        seed: int,
        *,
        group_by_length: bool = True,
        lengths: Sequence[int] | None = None,
    ) -> None:
        if not examples:
            raise ValueError("the training split is empty")
        self.examples = examples
        self.batch_size = batch_size
        self.seed = seed
        self.group_by_length = group_by_length
        # `lengths` for items that are not Examples (a preference run streams example indices).
        self.lengths = list(lengths) if lengths is not None else [len(e.input_ids) for e in examples]
        self.batches_per_epoch = micro_batches_per_epoch(len(examples), batch_size)
        self._plans: dict[int, list[list[int]]] = {}

    def position(self, micro_batch: int) -> DataPosition:
        return epoch_position(micro_batch, self.batches_per_epoch, self.seed)

    def micro_batch(self, index: int) -> list[Any]:
        pos = self.position(index)
        plan = self._plans.get(pos.epoch)
        if plan is None:
            self._plans = {
                pos.epoch: plan_epoch(
                    self.lengths, self.batch_size, self.seed, pos.epoch, group_by_length=self.group_by_length
                )
            }
            plan = self._plans[pos.epoch]
        return [self.examples[i] for i in plan[pos.batch_index]]


def one_row_per_target(example: Example) -> list[Example]:
    """The per-pair recipe's rows (TRL's SFTTrainer, one example per pair, no packing): each
    target with the conversation before it, trained on that target alone."""
    return [example.piece(t, t + 1) for t in range(len(target_spans(example.labels)))]


# One piece of a micro-batch: (example index, first target, stop target).
Piece = tuple[int, int, int]


def plan_target_epoch(
    lengths: Sequence[int],
    targets: Sequence[int],
    batch_size: int,
    seed: int,
    epoch: int,
    *,
    group_by_length: bool = True,
) -> list[list[Piece]]:
    """The micro-batches of one epoch, each exactly `batch_size` assistant targets (the last
    possibly fewer), in training order.

    Sequences come in `plan_epoch`'s order; their targets, in conversation order, are cut
    into consecutive runs of `batch_size`. A sequence whose targets straddle two micro-batches
    is in both, each time trained on its own targets only: every target is trained exactly
    once an epoch, as in the per-pair recipe, and a step is `batch_size x accumulation`
    targets whatever the packing.
    """
    order = [
        i
        for batch in plan_epoch(lengths, batch_size, seed, epoch, group_by_length=group_by_length)
        for i in batch
    ]
    micro: list[list[Piece]] = []
    current: list[Piece] = []
    room = batch_size
    for i in order:
        done = 0
        while done < targets[i]:
            take = min(room, targets[i] - done)
            current.append((i, done, done + take))
            done += take
            room -= take
            if room == 0:
                micro.append(current)
                current, room = [], batch_size
    if current:
        micro.append(current)
    return micro


class TargetStream:
    """SFT micro-batches by global index, `batch_size` assistant targets each (brightrun.steps);
    same interface as BatchStream. The plan is a pure function of the examples (their lengths
    and targets), `batch_size`, the seed and the epoch: a resume rebuilds it exactly from the
    checkpoint's micro-batch count and seed."""

    def __init__(
        self, examples: Sequence[Example], batch_size: int, seed: int, *, group_by_length: bool = True
    ) -> None:
        if not examples:
            raise ValueError("the training split is empty")
        self.examples = examples
        self.batch_size = batch_size
        self.seed = seed
        self.group_by_length = group_by_length
        self.lengths = [len(e.input_ids) for e in examples]
        self.targets = [len(target_spans(e.labels)) for e in examples]
        self.total_targets = sum(self.targets)
        self.batches_per_epoch = micro_batches_per_epoch(self.total_targets, batch_size)
        self._plans: dict[int, list[list[Piece]]] = {}

    def position(self, micro_batch: int) -> DataPosition:
        return epoch_position(micro_batch, self.batches_per_epoch, self.seed)

    def pieces(self, index: int) -> list[Piece]:
        pos = self.position(index)
        plan = self._plans.get(pos.epoch)
        if plan is None:
            plan = plan_target_epoch(
                self.lengths,
                self.targets,
                self.batch_size,
                self.seed,
                pos.epoch,
                group_by_length=self.group_by_length,
            )
            self._plans = {pos.epoch: plan}
        return plan[pos.batch_index]

    def micro_batch(self, index: int) -> list[Example]:
        out = []
        for i, first, stop in self.pieces(index):
            example = self.examples[i]
            whole = first == 0 and stop == self.targets[i]
            out.append(example if whole else example.piece(first, stop))
        return out


@dataclass(frozen=True)
class Batch:
    input_ids: list[list[int]]
    labels: list[list[int]]
    attention_mask: list[list[int]] | None  # None when packed: position_ids mark the sequences
    tokens: int  # real tokens (no padding)
    trained_tokens: int  # tokens whose next-token prediction is trained
    padding_tokens: int
    position_ids: list[list[int]] | None = None


def collate(examples: Sequence[Example], pad_token_id: int) -> Batch:
    """Right-pad to the longest example; padding is masked out of attention and loss."""
    width = max(len(e.input_ids) for e in examples)
    input_ids, labels, mask = [], [], []
    tokens = trained = 0
    for e in examples:
        pad = width - len(e.input_ids)
        input_ids.append(e.input_ids + [pad_token_id] * pad)
        labels.append(e.labels + [IGNORE_INDEX] * pad)
        mask.append([1] * len(e.input_ids) + [0] * pad)
        tokens += len(e.input_ids)
        # The first position is never a prediction target (nothing precedes it).
        trained += sum(1 for label in e.labels[1:] if label != IGNORE_INDEX)
    return Batch(input_ids, labels, mask, tokens, trained, width * len(examples) - tokens)


def pack(examples: Sequence[Example]) -> Batch:
    """All examples of a micro-batch in one row, no padding at all.

    Position ids restart at 0 for each example; with no attention mask, transformers reads
    the restarts as packed sequences and builds a block-diagonal causal mask (any attention
    implementation; flash-attention uses varlen kernels), so no example attends to another.
    The first label of each example is masked: it would be predicted from the previous one.
    """
    input_ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    trained = 0
    for e in examples:
        input_ids.extend(e.input_ids)
        first, rest = IGNORE_INDEX, e.labels[1:]
        labels.append(first)
        labels.extend(rest)
        positions.extend(range(len(e.input_ids)))
        trained += sum(1 for label in rest if label != IGNORE_INDEX)
    return Batch([input_ids], [labels], None, len(input_ids), trained, 0, [positions])


def make_batch(examples: Sequence[Example], pad_token_id: int, *, packing: bool) -> Batch:
    return pack(examples) if packing else collate(examples, pad_token_id)


def padding_share(stream: BatchStream | TargetStream, micro_batches: int, *, packing: bool = False) -> float:
    """Share of padding among all positions of the first `micro_batches` micro-batches."""
    padding = total = 0
    for m in range(micro_batches):
        batch = make_batch(stream.micro_batch(m), 0, packing=packing)
        padding += batch.padding_tokens
        total += batch.tokens + batch.padding_tokens
    return padding / total if total else 0.0
