"""Preference data (TRL's conversational formats) read, checked and tokenized for the trainer.

DPO, one pair a line:
    {"prompt": [messages], "chosen": [{"role": "assistant", ...}], "rejected": [...]}
KTO, one thumb a line:
    {"prompt": [messages], "completion": [{"role": "assistant", ...}], "label": true|false}
(`id` and `provenance` are optional and kept out of training.) Every problem is reported at
once as `file:line: field: what`, and nothing is written unless the whole file is good.

Tokenized with the base model's chat template: the prompt up to the assistant header is
context; the completion (reply and end-of-turn token) is the only part scored. The split is
by prompt (the provenance's conversation when given), deterministic in the seed, so a pair
and the thumbs on the same prompt never straddle train and validation. The output is a
prepared directory like the SFT one (`meta.json` with format `brightrun-preferences-v1`,
`train.jsonl`, `validation.jsonl`, `report.json`), uploaded to `data/` by the same storage
protocol (DESIGN.md §4).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from brightrun import prepared
from brightrun.errors import InputError
from brightrun.storage import sha256_file
from tasks.dataset.tokenizer import load_tokenizer, tokenizer_name

Objective = Literal["dpo", "kto"]
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class PreferenceOptions:
    objective: Objective
    max_seq_length: int = 2048
    validation_fraction: float = 0.1
    seed: int = 42


@dataclass(frozen=True)
class PreferenceRecord:
    """One checked line. DPO: `chosen` over `rejected`; KTO: `completion` with `label`."""

    where: str  # file:line
    prompt: list[dict[str, str]]
    chosen: str | None = None
    rejected: str | None = None
    completion: str | None = None
    label: bool | None = None
    group: str = ""  # what keeps related records in one split


@dataclass
class PreferenceReport:
    objective: str
    records: int = 0
    train: int = 0
    validation: int = 0
    skipped: list[str] = field(default_factory=list)  # where: why
    desirable: int = 0
    undesirable: int = 0
    duplicates: list[str] = field(default_factory=list)  # where: "same as" where


def _messages(value: Any, where: str, name: str, problems: list[str], *, reply: bool) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        problems.append(f"{where}: {name}: expected a non-empty list of messages")
        return []
    out = []
    for i, msg in enumerate(value):
        at = f"{where}: {name}[{i}]"
        if not isinstance(msg, dict):
            problems.append(f"{at}: expected an object with role and content")
            continue
        role, content = msg.get("role"), msg.get("content")
        if role not in ROLES:
            problems.append(f"{at}.role: {role!r} is not one of {', '.join(ROLES)}")
        elif reply and role != "assistant":
            problems.append(f"{at}.role: a {name} must be the assistant's reply, found {role!r}")
        if not isinstance(content, str) or not content.strip():
            problems.append(f"{at}.content: expected non-empty text")
        out.append({"role": str(role), "content": content if isinstance(content, str) else ""})
    if reply and len(value) != 1:
        problems.append(f"{where}: {name}: expected exactly one assistant message, found {len(value)}")
    if not reply and out and out[-1]["role"] != "user":
        problems.append(
            f"{where}: {name}: the last prompt message must be the user's, found {out[-1]['role']!r}"
        )
    return out


def _group(record: dict[str, Any], prompt: list[dict[str, str]]) -> str:
    provenance = record.get("provenance")
    if isinstance(provenance, dict):
        for side in (provenance, provenance.get("chosen"), provenance.get("rejected")):
            if isinstance(side, dict) and side.get("conversation_id"):
                return f"conversation:{side['conversation_id']}"
    return "prompt:" + hashlib.sha256(json.dumps(prompt, sort_keys=True).encode()).hexdigest()


def deduplicate(records: Sequence[PreferenceRecord]) -> tuple[list[PreferenceRecord], list[str]]:
    """The records without repeats (same prompt and replies, and for KTO the same label), the
    first kept; and `where: same as where` for each one dropped. An export that finds the same
    pair in two windows must not weigh it twice."""
    seen: dict[str, str] = {}
    kept, duplicates = [], []
    for r in records:
        key = json.dumps(
            [r.prompt, r.chosen, r.rejected, r.completion, r.label], sort_keys=True, ensure_ascii=False
        )
        if key in seen:
            duplicates.append(f"{r.where}: same record as {seen[key]}")
            continue
        seen[key] = r.where
        kept.append(r)
    return kept, duplicates


def read_preferences(
    path: Path, objective: Objective, source_name: str | None = None
) -> list[PreferenceRecord]:
    """Every line of `path` checked against `objective`'s format; raises `InputError` listing
    each problem by file, line and field (`source_name`: what people call the file, when the
    path is a cached copy's)."""
    problems: list[str] = []
    records: list[PreferenceRecord] = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the preference file {path}: {exc}") from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{source_name or Path(path).name}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"{where}: not JSON ({exc.msg} at column {exc.colno})")
            continue
        if not isinstance(record, dict):
            problems.append(f"{where}: expected a JSON object")
            continue
        if objective == "dpo" and "label" in record and "chosen" not in record:
            problems.append(
                f"{where}: a KTO record (completion + label); training.objective dpo needs chosen/rejected"
            )
            continue
        if objective == "kto" and "chosen" in record and "label" not in record:
            problems.append(
                f"{where}: a DPO record (chosen/rejected); training.objective kto needs completion + label"
            )
            continue
        before = len(problems)
        prompt = _messages(record.get("prompt"), where, "prompt", problems, reply=False)
        group = _group(record, prompt)
        if objective == "dpo":
            chosen = _messages(record.get("chosen"), where, "chosen", problems, reply=True)
            rejected = _messages(record.get("rejected"), where, "rejected", problems, reply=True)
            if len(problems) == before and chosen[0]["content"].strip() == rejected[0]["content"].strip():
                problems.append(f"{where}: chosen and rejected are the same reply; nothing to learn from")
            if len(problems) == before:
                records.append(
                    PreferenceRecord(where, prompt, chosen[0]["content"], rejected[0]["content"], group=group)
                )
        else:
            completion = _messages(record.get("completion"), where, "completion", problems, reply=True)
            label = record.get("label")
            if not isinstance(label, bool):
                problems.append(
                    f"{where}: label: expected true (thumbs up) or false (thumbs down), got {label!r}"
                )
            if len(problems) == before:
                records.append(
                    PreferenceRecord(
                        where, prompt, completion=completion[0]["content"], label=label, group=group
                    )
                )
    if problems:
        raise InputError(
            f"the preference file {path} has {len(problems)} problem(s); fix them and prepare it again",
            problems,
        )
    if not records:
        raise InputError(f"the preference file {path} holds no records")
    return records


class _Encoder:
    """Prompt ids up to the assistant header; completion ids = the rest of the rendered chat."""

    def __init__(self, tokenizer: Any) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise InputError("the tokenizer has no chat template; use the base model's tokenizer")
        self.tokenizer = tokenizer

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode(self, prompt: list[dict[str, str]], reply: str) -> tuple[list[int], list[int]]:
        head = self.tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        full = self.tokenizer.apply_chat_template(
            [*prompt, {"role": "assistant", "content": reply}], tokenize=False
        )
        if not full.startswith(head):
            raise InputError(
                "the chat template does not render the prompt as the start of the conversation; "
                "its completion tokens cannot be told apart"
            )
        return self._ids(head), self._ids(full[len(head) :])


def _fit(
    encoder: _Encoder, prompt: list[dict[str, str]], replies: Sequence[str], max_len: int
) -> tuple[list[int], list[list[int]]] | None:
    """Drop the oldest non-system turns until prompt + the longest reply fit; None if they cannot."""
    kept = list(prompt)
    while True:
        encoded = [encoder.encode(kept, r) for r in replies]
        prompt_ids = encoded[0][0]
        if len(prompt_ids) + max(len(c) for _, c in encoded) <= max_len:
            return prompt_ids, [c for _, c in encoded]
        droppable = [i for i, m in enumerate(kept[:-1]) if m["role"] != "system"]
        if not droppable:
            return None
        del kept[droppable[0]]


def split_groups(groups: Sequence[str], validation_fraction: float, seed: int) -> set[str]:
    """The groups held out for validation: a seeded shuffle of the sorted distinct groups."""
    distinct = sorted(set(groups))
    if validation_fraction <= 0 or len(distinct) < 2:
        return set()
    order = np.random.default_rng([seed, 25]).permutation(len(distinct)).tolist()
    count = min(len(distinct) - 1, max(1, math.ceil(validation_fraction * len(distinct))))
    return {distinct[i] for i in order[:count]}


def tokenize_records(
    records: Sequence[PreferenceRecord], tokenizer: Any, options: PreferenceOptions
) -> tuple[list[prepared.PreparedPreference], list[str]]:
    """(prepared records in file order, skipped `where: why` for those that cannot fit)."""
    encoder = _Encoder(tokenizer)
    out, skipped = [], []
    for r in records:
        replies = [r.chosen, r.rejected] if options.objective == "dpo" else [r.completion]
        fitted = _fit(encoder, r.prompt, [x or "" for x in replies], options.max_seq_length)
        if fitted is None:
            skipped.append(f"{r.where}: prompt + reply exceed max_seq_length={options.max_seq_length}")
            continue
        prompt_ids, completions = fitted
        if options.objective == "dpo":
            item = prepared.PreparedPreference(
                prompt_ids=prompt_ids, chosen_ids=completions[0], rejected_ids=completions[1], source=r.where
            )
        else:
            item = prepared.PreparedPreference(
                prompt_ids=prompt_ids, completion_ids=completions[0], label=r.label, source=r.where
            )
        out.append(item)
    return out, skipped


def prepare_preferences(
    source: Path,
    tokenizer: str | Path | Any,
    out_dir: Path,
    options: PreferenceOptions,
    *,
    source_name: str | None = None,
) -> PreferenceReport:
    """Read, check, deduplicate, tokenize and split `source` into the prepared directory
    `out_dir` (written beside it and swapped into place: a failure leaves no half-written set)."""
    records, duplicates = deduplicate(read_preferences(source, options.objective, source_name))
    tok = load_tokenizer(tokenizer)
    items, skipped = tokenize_records(records, tok, options)
    if not items:
        raise InputError(f"{source}: no record fits max_seq_length={options.max_seq_length}", skipped)
    kept_groups = [r.group for r in records if not any(s.startswith(f"{r.where}:") for s in skipped)]
    held_out = split_groups(kept_groups, options.validation_fraction, options.seed)
    train = [i for i, g in zip(items, kept_groups, strict=True) if g not in held_out]
    validation = [i for i, g in zip(items, kept_groups, strict=True) if g in held_out]
    report = PreferenceReport(
        objective=options.objective,
        records=len(records),
        train=len(train),
        validation=len(validation),
        skipped=skipped,
        desirable=sum(1 for i in items if i.label is True),
        undesirable=sum(1 for i in items if i.label is False),
        duplicates=duplicates,
    )
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        for name, split in ((prepared.TRAIN, train), (prepared.VALIDATION, validation)):
            with open(tmp / name, "w", encoding="utf-8") as f:
                for item in split:
                    f.write(item.model_dump_json(exclude_none=True) + "\n")
        (tmp / prepared.REPORT).write_text(json.dumps(report.__dict__, indent=2))
        completions = [
            c for i in train for c in (i.chosen_ids, i.rejected_ids, i.completion_ids) if c is not None
        ]
        meta = prepared.PreparedMeta(
            format=prepared.PREFERENCE_FORMAT,
            objective=options.objective,
            tokenizer=tokenizer_name(tokenizer),
            max_seq_length=options.max_seq_length,
            source_sha256=sha256_file(Path(source)),
            source_name=source_name or Path(source).name,
            min_quality=0.0,
            validation_fraction=options.validation_fraction,
            seed=options.seed,
            train_examples=len(train),
            validation_examples=len(validation),
            train_tokens=sum(len(i.prompt_ids) for i in train) + sum(len(c) for c in completions),
            trained_tokens=sum(len(c) for c in completions),
            files_sha256={n: sha256_file(tmp / n) for n in (prepared.TRAIN, prepared.VALIDATION)},
        )
        (tmp / prepared.META).write_text(meta.model_dump_json(indent=2))
        tmp.chmod(0o755)
        if out_dir.exists():
            old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report
