"""Cumulative data: several prepared training files merged into one job's sets, with weights.

Each source is prepared on its own (so each keeps the split its own rule gave it, by
conversation), then merged here:

- validation: every source's validation examples, once each;
- training: every source's training examples, except a conversation that any source holds
  out (a conversation never moves from validation into training) and an example already
  taken from an earlier source (the same conversation in the curated set and in a feedback
  export is trained once);
- weight: how many times a source's kept training examples count per epoch. 2 repeats each
  twice; 0.5 keeps a deterministic half (by a hash of the example and the seed); 1.5 is
  every example once and half of them again. The replay share of a mixture is the share of
  its training examples that come from each source (the report states it).

Pure functions over prepared directories (`brightrun.prepared`): the stage (stage.py) does
the fetching, caching and recording around them.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

from pydantic import BaseModel, Field

from brightrun import prepared
from brightrun.steps import count_targets
from brightrun.storage import sha256_file

MIXTURE_FORMAT = "brightrun-mixture-v1"


class WeightedSource(BaseModel):
    """One training file of a job and its weight (`datasets: [{source, weight}]`)."""

    source: str = Field(min_length=1, description="A path, s3:// or https URI, or a training_file_id")
    weight: float = Field(1.0, gt=0, le=100, description="Times its examples count per epoch")


class PreparedPart(BaseModel):
    """A source after its own preparation: where its prepared files are."""

    name: str
    sha256: str
    directory: Path
    weight: float


class PartReport(BaseModel):
    name: str
    sha256: str
    weight: float
    train_examples: int = Field(description="its training examples, as prepared")
    validation_examples: int
    held_out_elsewhere: int = Field(description="training examples dropped: another source holds them out")
    duplicates: int = Field(description="examples dropped: an earlier source has them")
    trained_examples: int = Field(description="training examples in the mixture, weight applied")
    share: float = Field(description="share of the mixture's training examples")


class MixtureReport(BaseModel):
    format: str = MIXTURE_FORMAT
    sha256: str = Field(description="identifies the mixture: its sources' hashes and weights")
    parts: list[PartReport]
    train_examples: int
    validation_examples: int


def mixture_sha256(parts: list[PreparedPart], seed: int) -> str:
    recipe = [{"sha256": p.sha256, "weight": p.weight} for p in parts]
    return hashlib.sha256(json.dumps({"parts": recipe, "seed": seed}).encode()).hexdigest()


def _content_key(example: prepared.PreparedExample) -> str:
    return hashlib.sha256(json.dumps([example.input_ids, example.labels]).encode()).hexdigest()


def copies(weight: float, key: str, seed: int) -> int:
    """How many times one example counts: the whole part of the weight, plus one more for a
    deterministic `frac` share of the examples (chosen by a hash, not by position)."""
    whole = math.floor(weight)
    frac = weight - whole
    draw = int(hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return whole + (1 if draw < frac else 0)


def merge_prepared(parts: list[PreparedPart], out_dir: Path, seed: int) -> MixtureReport:
    """Write the mixture's `train.jsonl`, `validation.jsonl`, `prompts.jsonl`, `splits.json`
    and `meta.json` (last) into `out_dir`; returns its report."""
    out_dir.mkdir(parents=True, exist_ok=True)
    held_out: set[str] = set()
    for part in parts:
        held_out.update(prepared.read_splits(part.directory).validation)

    seen: set[str] = set()
    reports: list[dict[str, object]] = []
    train_lines: list[str] = []
    validation_lines: list[str] = []
    prompt_lines: list[str] = []
    prompt_ids: set[tuple[str, str]] = set()
    splits = prepared.ConversationSplits()
    tokens = trained_tokens = targets = 0
    for part in parts:
        d = part.directory
        n_train = n_val = elsewhere = dupes = trained = 0
        for example in prepared.iter_examples(d / prepared.VALIDATION):
            n_val += 1
            key = _content_key(example)
            if key in seen:
                dupes += 1
                continue
            seen.add(key)
            validation_lines.append(example.model_dump_json())
        for example in prepared.iter_examples(d / prepared.TRAIN):
            n_train += 1
            if example.conversation_id in held_out:
                elsewhere += 1
                continue
            key = _content_key(example)
            if key in seen:
                dupes += 1
                continue
            seen.add(key)
            n = copies(part.weight, key, seed)
            train_lines.extend([example.model_dump_json()] * n)
            trained += n
            tokens += n * len(example.input_ids)
            trained_tokens += n * sum(1 for label in example.labels if label != -100)
            targets += n * count_targets(example.labels)
        for prompt in prepared.iter_prompts(d / prepared.PROMPTS):
            if (prompt.conversation_id, prompt.pair_id) not in prompt_ids:
                prompt_ids.add((prompt.conversation_id, prompt.pair_id))
                prompt_lines.append(prompt.model_dump_json())
        own = prepared.read_splits(d)
        splits.train.extend(c for c in own.train if c not in held_out)
        splits.validation.extend(own.validation)
        reports.append(
            {
                "name": part.name,
                "sha256": part.sha256,
                "weight": part.weight,
                "train_examples": n_train,
                "validation_examples": n_val,
                "held_out_elsewhere": elsewhere,
                "duplicates": dupes,
                "trained_examples": trained,
            }
        )
    total = len(train_lines)
    report = MixtureReport(
        sha256=mixture_sha256(parts, seed),
        parts=[PartReport(**r, share=(r["trained_examples"] / total) if total else 0.0) for r in reports],  # type: ignore[arg-type]
        train_examples=total,
        validation_examples=len(validation_lines),
    )
    _write_lines(out_dir / prepared.TRAIN, train_lines)
    _write_lines(out_dir / prepared.VALIDATION, validation_lines)
    _write_lines(out_dir / prepared.PROMPTS, prompt_lines)
    splits = prepared.ConversationSplits(
        train=sorted(set(splits.train)), validation=sorted(set(splits.validation))
    )
    (out_dir / prepared.SPLITS).write_text(splits.model_dump_json(), encoding="utf-8")
    (out_dir / "mixture.json").write_text(report.model_dump_json(indent=2), encoding="utf-8")
    first = prepared.read_meta(parts[0].directory)
    meta = first.model_copy(
        update={
            "source_sha256": report.sha256,
            "source_name": f"mixture of {len(parts)}: " + ", ".join(p.name for p in parts),
            "train_examples": total,
            "validation_examples": len(validation_lines),
            "train_tokens": tokens,
            "trained_tokens": trained_tokens,
            "train_targets": targets,
            "files_sha256": {
                name: sha256_file(out_dir / name)
                for name in (prepared.TRAIN, prepared.VALIDATION, prepared.PROMPTS)
            },
        }
    )
    (out_dir / prepared.META).write_text(meta.model_dump_json(indent=2), encoding="utf-8")
    return report


def _write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


def mixture_markdown(report: MixtureReport) -> str:
    """The dataset report's mixture table (what each source gives the job)."""
    rows = [
        "## Mixture",
        "",
        f"{report.train_examples} training / {report.validation_examples} validation examples from "
        f"{len(report.parts)} training files (each keeps its own split).",
        "",
        "| source | weight | train | validation | held out elsewhere | duplicates | trained | share |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in report.parts:
        rows.append(
            f"| {p.name} | {p.weight:g} | {p.train_examples} | {p.validation_examples} | "
            f"{p.held_out_elsewhere} | {p.duplicates} | {p.trained_examples} | {p.share:.1%} |"
        )
    return "\n".join(rows)
