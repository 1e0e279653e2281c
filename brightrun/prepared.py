"""The prepared dataset: the contract between the dataset stage and the trainer.

A directory (locally, or `data/` under the job prefix in storage) holding:

    meta.json          PreparedMeta below
    train.jsonl        one tokenized example per line: PreparedExample
    validation.jsonl   same, conversations disjoint from train
    prompts.jsonl      held-out prompts for sample generations: HeldOutPrompt
    report.json        the dataset report (counts, tokens, skipped by reason...)
    splits.json        ConversationSplits: the split of every conversation, as the writer
                       decided it (the one record of the split; the registry copies it)

Labels are -100 everywhere but assistant target tokens and their end-of-turn
token. The trainer loads these without tokenizing again.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, BaseModel, Field

FORMAT = "brightrun-prepared-v1"
# Preference sets (training.objective dpo/kto): same files, one PreparedPreference a line.
PREFERENCE_FORMAT = "brightrun-preferences-v1"
META = "meta.json"
TRAIN = "train.jsonl"
VALIDATION = "validation.jsonl"
PROMPTS = "prompts.jsonl"
REPORT = "report.json"
SPLITS = "splits.json"
IGNORE_INDEX = -100


class PreparedMeta(BaseModel):
    format: str = FORMAT
    tokenizer: str
    max_seq_length: int
    source_sha256: str
    source_name: str
    min_quality: float
    # Sets prepared before the option had one name everywhere say `val_fraction`.
    validation_fraction: float = Field(validation_alias=AliasChoices("validation_fraction", "val_fraction"))
    seed: int
    train_examples: int
    validation_examples: int
    train_tokens: int
    trained_tokens: int
    # Assistant targets of the train split: what a step counts (brightrun.steps). Sets
    # prepared before it say nothing; their estimates count sequences instead.
    train_targets: int | None = None
    files_sha256: dict[str, str] = Field(default_factory=dict)
    objective: Literal["sft", "dpo", "kto"] = "sft"


def step_examples(meta: PreparedMeta) -> int:
    """The trained examples a step counts for this set: its targets, else its sequences."""
    return meta.train_targets if meta.train_targets is not None else meta.train_examples


class PreparedExample(BaseModel):
    input_ids: list[int]
    labels: list[int]
    conversation_id: str
    pair_ids: list[str] = Field(default_factory=list)


class PreparedPreference(BaseModel):
    """One tokenized preference record. `prompt_ids` is the prompt rendered with the chat
    template up to the assistant header; completions hold the reply and its end-of-turn token,
    the only tokens scored. DPO: `chosen_ids` over `rejected_ids`; KTO: `completion_ids` with
    `label` (true: thumbs up)."""

    prompt_ids: list[int]
    chosen_ids: list[int] | None = None
    rejected_ids: list[int] | None = None
    completion_ids: list[int] | None = None
    label: bool | None = None
    source: str = ""  # file:line of the record it came from


class HeldOutPrompt(BaseModel):
    conversation_id: str
    pair_id: str
    messages: list[dict[str, str]]
    reference: str


class ConversationSplits(BaseModel):
    """Which conversations the writer put in each split (sorted ids). Conversations with no
    trainable target are listed too, in the split the rule gave them."""

    train: list[str] = Field(default_factory=list)
    validation: list[str] = Field(default_factory=list)

    def by_conversation(self) -> dict[str, str]:
        return {**dict.fromkeys(self.train, "train"), **dict.fromkeys(self.validation, "validation")}


def read_splits(directory: Path) -> ConversationSplits:
    return ConversationSplits.model_validate_json((directory / SPLITS).read_text())


def read_meta(directory: Path) -> PreparedMeta:
    return PreparedMeta.model_validate_json((directory / META).read_text())


def iter_examples(path: Path) -> Iterator[PreparedExample]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield PreparedExample.model_validate_json(line)


def iter_preferences(path: Path) -> Iterator[PreparedPreference]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield PreparedPreference.model_validate_json(line)


def iter_prompts(path: Path) -> Iterator[HeldOutPrompt]:
    if not path.exists():
        return
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield HeldOutPrompt.model_validate(json.loads(line))
