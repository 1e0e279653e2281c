"""Stream tokenized examples into the prepared-dataset files, deciding the split as they come.

The writer is where the split happens (see `split.py`): each conversation's examples go to
the file of its split, and `finish()` applies the small-file fallback and writes
`splits.json`, the record every later reader uses.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson
from pydantic import BaseModel

from brightrun import prepared
from tasks.dataset.split import SplitDecider, SplitName

MAX_HELD_OUT_PROMPTS = 16

#: One training example: token ids, labels (-100 where untrained), the pair ids it trains.
Example = tuple[list[int], list[int], list[str]]


class SplitStats(BaseModel):
    conversations: int = 0
    examples: int = 0
    tokens: int = 0
    trained_tokens: int = 0


@dataclass
class _Written:
    """What a train conversation added, so the fallback can move it to validation."""

    examples: int
    tokens: int
    trained: int
    prompt: dict[str, Any] | None


class SplitWriter:
    """Writes `train.jsonl`, `validation.jsonl` and `prompts.jsonl` into `directory`."""

    def __init__(
        self,
        directory: Path,
        validation_fraction: float,
        seed: int,
        planned: dict[str, SplitName] | None = None,
        dropped: frozenset[str] = frozenset(),
    ) -> None:
        self.directory = directory
        self.decider = SplitDecider(validation_fraction, seed, planned)
        # Training conversations the arc cap leaves out: written nowhere, listed in no split.
        self.dropped = dropped
        self.files: dict[str, IO[str]] = {
            # Open for the writer's whole life; close() in prepare_dataset's finally.
            "train": open(directory / prepared.TRAIN, "w", encoding="utf-8"),  # noqa: SIM115
            "validation": open(directory / prepared.VALIDATION, "w", encoding="utf-8"),  # noqa: SIM115
        }
        self.prompts = open(directory / prepared.PROMPTS, "w", encoding="utf-8")  # noqa: SIM115
        self.splits = {"train": SplitStats(), "validation": SplitStats()}
        self.sequences = 0
        self.longest = 0
        self.prompt_count = 0
        self._train_written: dict[str, _Written] = {}

    def close(self) -> None:
        for f in (*self.files.values(), self.prompts):
            f.close()

    def conversation(self, conversation_id: str, examples: Sequence[Example], prompt: Any) -> None:
        if conversation_id in self.dropped:
            return
        split = self.decider.decide(conversation_id)
        stats = self.splits[split]
        stats.conversations += 1
        tokens = trained = 0
        out = self.files[split]
        for ids, labels, pair_ids in examples:
            record = {
                "input_ids": ids,
                "labels": labels,
                "conversation_id": conversation_id,
                "pair_ids": pair_ids,
            }
            out.write(orjson.dumps(record).decode() + "\n")
            tokens += len(ids)
            trained += len(labels) - labels.count(prepared.IGNORE_INDEX)
            self.longest = max(self.longest, len(ids))
        self.sequences += len(examples)
        stats.examples += len(examples)
        stats.tokens += tokens
        stats.trained_tokens += trained
        if split == "validation":
            if prompt is not None and self.prompt_count < MAX_HELD_OUT_PROMPTS:
                self.prompts.write(json.dumps(prompt, ensure_ascii=False) + "\n")
                self.prompt_count += 1
        elif examples:
            self._train_written[conversation_id] = _Written(len(examples), tokens, trained, prompt)

    def finish(self) -> prepared.ConversationSplits:
        """Close the files, hold one conversation out if the rule left validation empty, and
        write `splits.json`."""
        self.close()
        moved = self.decider.fallback(list(self._train_written), self.splits["validation"].examples)
        if moved is not None:
            self._move_to_validation(moved)
        record = self.decider.record()
        (self.directory / prepared.SPLITS).write_text(record.model_dump_json(), encoding="utf-8")
        return record

    def _move_to_validation(self, conversation_id: str) -> None:
        written = self._train_written.pop(conversation_id)
        train_path = self.directory / prepared.TRAIN
        kept_path = self.directory / (prepared.TRAIN + ".tmp")
        marker = f'"conversation_id":{orjson.dumps(conversation_id).decode()}'  # as written above
        with (
            open(train_path, encoding="utf-8") as src,
            open(kept_path, "w", encoding="utf-8") as keep,
            open(self.directory / prepared.VALIDATION, "a", encoding="utf-8") as val,
        ):
            for line in src:
                (val if marker in line else keep).write(line)
        os.replace(kept_path, train_path)
        for name, sign in (("train", -1), ("validation", 1)):
            s = self.splits[name]
            s.conversations += sign
            s.examples += sign * written.examples
            s.tokens += sign * written.tokens
            s.trained_tokens += sign * written.trained
        if written.prompt is not None:
            with open(self.directory / prepared.PROMPTS, "a", encoding="utf-8") as f:
                f.write(json.dumps(written.prompt, ensure_ascii=False) + "\n")
            self.prompt_count += 1
