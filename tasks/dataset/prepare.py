"""Prepare one training file into a directory: validate, convert, tokenize, write, report.

`prepare_dataset` is the room's workhorse, beneath the stage's door (`stage.py`) and what
`brightrun prepare` runs on its own. Output: the prepared-dataset directory of
`brightrun.prepared`, written into a temporary sibling directory and renamed into place,
so a failure at any point leaves nothing behind and a reader never sees half a dataset.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from brightrun import prepared
from brightrun.errors import InputError
from brightrun.settings import DatasetLimits
from brightrun.spec import JobSpec, PreprocessingSettings
from brightrun.steps import count_targets
from brightrun.storage import sha256_file
from tasks.dataset.balance import BalancePlan, BalanceReport, ConversationTags, plan_balance
from tasks.dataset.convert import (
    CandidateSequence,
    ChatEncoder,
    ConversionStats,
    Msg,
    TemplateError,
    build_runs,
    plan_windows,
)
from tasks.dataset.schema import Conversation, DatasetScanner, ValidationResult, validate_dataset
from tasks.dataset.tokenizer import load_tokenizer, tokenizer_name
from tasks.dataset.write import Example, SplitStats, SplitWriter

_BATCH_CONVERSATIONS = 64


class PrepareOptions(PreprocessingSettings):
    """How a training file becomes a prepared dataset: the job spec's `preprocessing` section
    (`min_quality`, `validation_fraction`, `skip_overlong_targets`, one definition of each)
    plus the two training settings preparation depends on."""

    max_seq_length: int = Field(default=2048, ge=16)
    seed: int = 42

    @classmethod
    def from_spec(cls, spec: JobSpec) -> PrepareOptions:
        return cls(
            **spec.preprocessing.model_dump(),
            max_seq_length=spec.training.max_seq_length,
            seed=spec.training.seed,
        )


class DatasetReport(BaseModel):
    source_name: str
    source_sha256: str
    tokenizer: str
    options: PrepareOptions
    conversations: int
    pairs: int
    kept_targets: int
    skipped_targets: dict[str, int]
    sequences: int
    merged_conversations: int = Field(description="conversations that became a single sequence")
    split_conversations: int = Field(description="conversations split where histories disagree")
    history_mismatches: int
    history_mismatch_examples: list[str] = Field(default_factory=list)
    windowed_sequences: int = Field(description="over-long runs cut into windows")
    too_long_targets: list[str] = Field(default_factory=list)
    total_tokens: int
    trained_tokens: int
    longest_sequence: int
    train: SplitStats
    validation: SplitStats
    held_out_prompts: int
    quality_histogram: dict[str, int]
    balance: BalanceReport = Field(default_factory=BalanceReport)


def load_and_validate(path: Path, limits: DatasetLimits | None = None) -> ValidationResult:
    """Validate and raise `InputError` listing every problem; the result when the file is fine."""
    result = validate_dataset(path, limits)
    if not result.ok:
        raise InputError(f"{path}: {result.problem_count} problem(s) in the training file", result.messages())
    return result


def _held_out_prompt(conversation: Conversation, min_quality: float) -> dict[str, Any] | None:
    """The conversation's first trained pair, as the trainer's sample-generation prompt."""
    for pair in conversation.training_pairs:
        if pair.target_response is None or pair.training_metadata.quality_score < min_quality:
            continue
        messages = [{"role": "system", "content": pair.system_prompt}] if pair.system_prompt else []
        messages += [{"role": t.role, "content": t.content} for t in pair.conversation_history]
        messages.append({"role": "user", "content": pair.current_user_input})
        return prepared.HeldOutPrompt(
            conversation_id=conversation.conversation_id,
            pair_id=pair.id,
            messages=messages,
            reference=pair.target_response,
        ).model_dump()
    return None


def _tags(conversation: Conversation) -> ConversationTags:
    sc = conversation.conversation_metadata.scaffolding
    return ConversationTags(
        conversation_id=conversation.conversation_id,
        persona=sc.persona_key if sc else None,
        arc=sc.emotional_arc_key if sc else None,
        topic=sc.training_topic_key if sc else None,
    )


def _plan_balance(
    source: Path, options: PrepareOptions, source_sha256: str | None, limits: DatasetLimits | None
) -> tuple[BalancePlan | None, str | None]:
    """A first, validating scan for every conversation's scaffolding (the stratified split and
    the cap need them all before the writer decides the first). None when the file has
    problems: the main scan lists them. Returns the plan and the file's sha256."""
    scanner = DatasetScanner(source, sha256=source_sha256, limits=limits)
    tags = [_tags(c) for c in scanner.conversations()]
    if not scanner.result.ok:
        return None, source_sha256
    plan = plan_balance(tags, options.validation_fraction, options.seed, options.max_arc_share)
    kept_train = sum(plan.report.train_by_arc.values())
    if options.max_arc_share is not None and kept_train == 0:
        raise InputError(
            f"{source.name}: max_arc_share={options.max_arc_share:g} leaves no training conversation"
        )
    return plan, scanner.result.sha256


def _target_label(msg: Msg, run: CandidateSequence) -> str:
    return f"conversation {run.conversation_id}, pair {msg.pair_id}, field target_response"


class _Converter:
    """Batches conversations through the encoder (one tokenizer call per batch)."""

    def __init__(self, encoder: ChatEncoder, options: PrepareOptions, writer: SplitWriter) -> None:
        self.encoder = encoder
        self.options = options
        self.writer = writer
        self.stats = ConversionStats()
        self.windowed = 0
        self.too_long: list[str] = []
        self.batch: list[tuple[Conversation, list[CandidateSequence]]] = []

    def add(self, conversation: Conversation) -> None:
        self.batch.append((conversation, build_runs(conversation, self.options.min_quality, self.stats)))
        if len(self.batch) >= _BATCH_CONVERSATIONS:
            self.flush()

    def flush(self) -> None:
        if not self.batch:
            return
        flat = [(run.system, run.messages) for _, runs in self.batch for run in runs]
        encoded = iter(self.encoder.encode_many(flat))
        max_len = self.options.max_seq_length
        for conversation, runs in self.batch:
            examples: list[Example] = []
            for run in runs:
                enc = next(encoded)
                if len(enc.input_ids) <= max_len:
                    examples.append((enc.input_ids, enc.labels, enc.pair_ids))
                    continue
                self.windowed += 1
                windows, unfit = plan_windows(self.encoder, run, max_len)
                for msg in unfit:
                    self.stats.skipped["too_long"] += 1
                    self.stats.kept_targets -= 1
                    self.too_long.append(_target_label(msg, run))
                for w in self.encoder.encode_many(windows):
                    examples.append((w.input_ids, w.labels, w.pair_ids))
            self.writer.conversation(
                conversation.conversation_id,
                examples,
                _held_out_prompt(conversation, self.options.min_quality),
            )
        self.batch = []


def prepare_dataset(
    source: Path,
    tokenizer: str | Path | Any,
    out_dir: Path,
    options: PrepareOptions | None = None,
    *,
    source_sha256: str | None = None,
    source_name: str | None = None,
    limits: DatasetLimits | None = None,
) -> DatasetReport:
    """Validate, convert and tokenize `source` into `out_dir` (the `brightrun.prepared` layout).

    `source_sha256` / `source_name`: what the caller already knows of the file (the stage
    hashed it while fetching; a download's local name is its hash, not what people call it).

    Raises `InputError` (nothing written) when the file has problems, a target cannot fit
    `max_seq_length` (unless `skip_overlong_targets`), or nothing at all is trainable.
    """
    options = options or PrepareOptions()
    source = Path(source)
    out_dir = Path(out_dir)
    name = source_name or source.name
    tok = load_tokenizer(tokenizer)
    try:
        encoder = ChatEncoder(tok)
    except TemplateError as exc:
        raise InputError(f"tokenizer {tokenizer_name(tokenizer)}: {exc}") from exc
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.partial-"))
    try:
        plan, source_sha256 = _plan_balance(source, options, source_sha256, limits)
        scanner = DatasetScanner(source, sha256=source_sha256, limits=limits)
        writer = SplitWriter(
            tmp,
            options.validation_fraction,
            options.seed,
            planned=plan.splits if plan else None,
            dropped=plan.dropped if plan else frozenset(),
        )
        converter = _Converter(encoder, options, writer)
        try:
            for conversation in scanner.conversations():
                if scanner.result.problem_count:
                    continue  # keep scanning to list every problem, but stop producing output
                if plan is not None and conversation.conversation_id in plan.dropped:
                    continue  # left out by the arc cap: not tokenized, not counted as trained
                converter.add(conversation)
            if scanner.result.ok:
                converter.flush()
        finally:
            writer.close()
        result = scanner.result
        if not result.ok:
            raise InputError(
                f"{name}: {result.problem_count} problem(s) in the training file", result.messages()
            )
        if converter.too_long and not options.skip_overlong_targets:
            raise InputError(
                f"{name}: {len(converter.too_long)} target(s) cannot fit max_seq_length="
                f"{options.max_seq_length} tokens even with no history (system prompt + user turn + "
                "target); raise --max-seq-length, or skip them with --skip-overlong-targets "
                "(dataset.skip_overlong_targets in a job spec)",
                converter.too_long,
            )
        stats = converter.stats
        trained_total = writer.splits["train"].trained_tokens + writer.splits["validation"].trained_tokens
        if stats.kept_targets <= 0 or trained_total == 0:
            raise InputError(
                f"{name}: no trainable target in the whole file ({result.pairs} pairs: "
                f"{stats.skipped['null_target']} null, {stats.skipped['below_min_quality']} below "
                f"min_quality={options.min_quality:g}, {stats.skipped['too_long']} too long); "
                "lower --min-quality or fix the targets"
            )
        record = writer.finish()
        if plan is not None:
            plan.recount(record.train, record.validation)
        assert result.sha256 is not None
        report = DatasetReport(
            source_name=name,
            source_sha256=result.sha256,
            tokenizer=tokenizer_name(tokenizer),
            options=options,
            conversations=result.conversations,
            pairs=result.pairs,
            kept_targets=stats.kept_targets,
            skipped_targets=dict(stats.skipped),
            sequences=writer.sequences,
            merged_conversations=stats.merged_conversations,
            split_conversations=stats.split_conversations,
            history_mismatches=stats.mismatches,
            history_mismatch_examples=stats.mismatch_examples,
            windowed_sequences=converter.windowed,
            too_long_targets=converter.too_long[:100],
            total_tokens=writer.splits["train"].tokens + writer.splits["validation"].tokens,
            trained_tokens=trained_total,
            longest_sequence=writer.longest,
            train=writer.splits["train"],
            validation=writer.splits["validation"],
            held_out_prompts=writer.prompt_count,
            quality_histogram=dict(sorted(stats.quality_histogram.items())),
            balance=plan.report if plan else BalanceReport(),
        )
        (tmp / prepared.REPORT).write_text(report.model_dump_json(indent=2), encoding="utf-8")
        files = [prepared.TRAIN, prepared.VALIDATION, prepared.PROMPTS, prepared.REPORT, prepared.SPLITS]
        meta = prepared.PreparedMeta(
            tokenizer=report.tokenizer,
            max_seq_length=options.max_seq_length,
            source_sha256=result.sha256,
            source_name=name,
            min_quality=options.min_quality,
            validation_fraction=options.validation_fraction,
            seed=options.seed,
            train_examples=report.train.examples,
            validation_examples=report.validation.examples,
            train_tokens=report.train.tokens,
            trained_tokens=report.train.trained_tokens,
            train_targets=sum(count_targets(e.labels) for e in prepared.iter_examples(tmp / prepared.TRAIN)),
            files_sha256={f: sha256_file(tmp / f) for f in files},
        )
        # meta.json last: its presence marks a complete prepared dataset.
        (tmp / prepared.META).write_text(meta.model_dump_json(indent=2), encoding="utf-8")
        _swap_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report


def _swap_into_place(tmp: Path, out_dir: Path) -> None:
    tmp.chmod(0o755)
    if out_dir.exists() or out_dir.is_symlink():
        if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / prepared.META).exists():
            raise InputError(
                f"{out_dir} exists and is not a prepared dataset; choose an empty or new --out directory"
            )
        old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
        os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out_dir)
