"""The train/validation split: by conversation, deterministic, decided once by the writer.

The rule (DESIGN.md section 5): a conversation goes to validation when its seeded hash is
below `validation_fraction`. A small file can come out with no validation example at all;
then, with a non-zero fraction and at least two conversations that produced examples, the
one of those with the smallest hash is held out. Conversations with no trainable target
never serve as that fallback (they would hold out nothing).

Only `SplitDecider` applies the rule, while the writer streams; what it decided is written
to `splits.json` and copied to the registry. Nobody re-derives the split from conversation
ids or re-reads the written files.

When the data allows, `balance.stratified_split` plans the split by emotional arc ahead of the
stream and the decider follows that plan; the small-file fallback applies to either.
"""

from __future__ import annotations

import hashlib
from typing import Literal

from brightrun.prepared import ConversationSplits

SplitName = Literal["train", "validation"]


def split_hash(conversation_id: str, seed: int) -> float:
    """A conversation's place in [0, 1), stable across runs and machines."""
    digest = hashlib.sha256(f"{seed}:{conversation_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class SplitDecider:
    """Applies the rule to conversations as they stream past and remembers every decision."""

    def __init__(
        self, validation_fraction: float, seed: int, planned: dict[str, SplitName] | None = None
    ) -> None:
        self.validation_fraction = validation_fraction
        self.seed = seed
        # A stratified split planned ahead (balance.py); conversations it lacks use the rule.
        self.planned = planned or {}
        self.decisions: dict[str, SplitName] = {}
        self._hashes: dict[str, float] = {}

    def decide(self, conversation_id: str) -> SplitName:
        h = split_hash(conversation_id, self.seed)
        self._hashes[conversation_id] = h
        split: SplitName = self.planned.get(
            conversation_id, "validation" if h < self.validation_fraction else "train"
        )
        self.decisions[conversation_id] = split
        return split

    def fallback(self, train_with_examples: list[str], validation_examples: int) -> str | None:
        """The conversation to move to validation when the hash rule held out no example."""
        if self.validation_fraction <= 0 or validation_examples or len(train_with_examples) < 2:
            return None
        chosen = min(train_with_examples, key=lambda cid: self._hashes[cid])
        self.decisions[chosen] = "validation"
        return chosen

    def record(self) -> ConversationSplits:
        return ConversationSplits(
            train=sorted(c for c, s in self.decisions.items() if s == "train"),
            validation=sorted(c for c, s in self.decisions.items() if s == "validation"),
        )
