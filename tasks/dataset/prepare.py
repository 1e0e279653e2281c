"""Dataset stage: fetch, validate, convert, tokenize and report (DESIGN.md section 5).

The plain functions here are what the trainer, the flows, the export flow and
the CLI call; the Prefect tasks at the bottom wrap them (cache, retries,
markdown artifact). Importing this module needs neither torch nor a tokenizer:
transformers is imported inside `load_tokenizer` only.

Output: the prepared-dataset directory of `brightrun.prepared`, written into a
temporary sibling directory and renamed into place, so a failure at any point
leaves nothing behind and a reader never sees half a dataset.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import orjson
from pydantic import BaseModel, Field

from brightrun import prepared
from brightrun.errors import BrightrunError, InputError
from brightrun.storage import sha256_file
from tasks.dataset_convert import (
    ChatEncoder,
    ConversionStats,
    Msg,
    Run,
    TemplateError,
    build_runs,
    plan_windows,
    split_hash,
)
from tasks.dataset_schema import (
    FORMAT_SPEC,
    Conversation,
    DatasetScanner,
    Problem,
    ValidationResult,
    validate_dataset,
)

__all__ = [
    "FORMAT_SPEC",
    "DatasetReport",
    "PrepareOptions",
    "Problem",
    "ValidationResult",
    "fetch_dataset",
    "load_and_validate",
    "load_tokenizer",
    "prepare_dataset",
    "render_report_markdown",
    "validate_dataset",
]

MAX_HELD_OUT_PROMPTS = 16
_BATCH_CONVERSATIONS = 64


class PrepareOptions(BaseModel):
    """How a training file becomes a prepared dataset.

    `min_quality` defaults to 3: the scale runs 1-5 and the sample files rate
    most targets 3, with 2 marking replies the authors considered weak; those
    stay in the sequence as context but are never trained.
    """

    max_seq_length: int = Field(default=2048, ge=16)
    min_quality: float = 3.0
    val_fraction: float = Field(default=0.1, ge=0.0, lt=1.0)
    seed: int = 42
    # A target that cannot fit even with no history is an input error by default (the user
    # asked for a max_seq_length their data does not fit); set True to skip and report it.
    skip_overlong_targets: bool = False


class SplitStats(BaseModel):
    conversations: int = 0
    examples: int = 0
    tokens: int = 0
    trained_tokens: int = 0


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


def load_tokenizer(tokenizer: str | Path | Any) -> Any:
    """A Hugging Face tokenizer from a local directory or hub id (or one passed through)."""
    if not isinstance(tokenizer, str | Path):
        return tokenizer
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(tokenizer))
    except (OSError, ValueError) as exc:
        raise InputError(
            f"cannot load the tokenizer {str(tokenizer)!r}: {exc}. Pass a local model directory "
            "(with tokenizer.json) or a hub id reachable from here."
        ) from exc


def tokenizer_name(tokenizer: str | Path | Any) -> str:
    if isinstance(tokenizer, str | Path):
        return str(tokenizer)
    return str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)


def load_and_validate(path: Path) -> ValidationResult:
    """Validate and raise `InputError` listing every problem; the result when the file is fine."""
    result = validate_dataset(path)
    if not result.ok:
        raise InputError(f"{path}: {result.problem_count} problem(s) in the training file", result.messages())
    return result


# ---------------------------------------------------------------------------------------------
# prepare


class _Writer:
    """Streams examples to the split files and keeps the report's running totals."""

    def __init__(self, directory: Path, options: PrepareOptions) -> None:
        self.directory = directory
        self.options = options
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
        # Per train conversation: (split hash, examples, tokens, trained, held-out prompt) so one can
        # move to validation at the end if the hash split left validation empty (tiny files).
        self.train_conversations: dict[str, tuple[float, int, int, int, dict[str, Any] | None]] = {}

    def close(self) -> None:
        for f in (*self.files.values(), self.prompts):
            f.close()

    def conversation(
        self, conversation_id: str, examples: Sequence[tuple[list[int], list[int], list[str]]], prompt: Any
    ) -> None:
        h = split_hash(conversation_id, self.options.seed)
        split = "validation" if h < self.options.val_fraction else "train"
        stats = self.splits[split]
        stats.conversations += 1
        tokens = trained = 0
        out = self.files[split]
        for ids, labels, pair_ids in examples:
            n_trained = len(labels) - labels.count(prepared.IGNORE_INDEX)
            record = {
                "input_ids": ids,
                "labels": labels,
                "conversation_id": conversation_id,
                "pair_ids": pair_ids,
            }
            out.write(orjson.dumps(record).decode() + "\n")
            tokens += len(ids)
            trained += n_trained
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
            self.train_conversations[conversation_id] = (h, len(examples), tokens, trained, prompt)

    def ensure_validation(self) -> None:
        """With a non-zero val_fraction, hold out at least one conversation (small files)."""
        if self.options.val_fraction <= 0 or self.splits["validation"].examples:
            return
        if len(self.train_conversations) < 2:
            return
        cid = min(self.train_conversations, key=lambda c: self.train_conversations[c][0])
        _, examples, tokens, trained, prompt = self.train_conversations.pop(cid)
        self.close()
        train_path = self.directory / prepared.TRAIN
        kept_path = self.directory / (prepared.TRAIN + ".tmp")
        marker = orjson.dumps(cid).decode()  # as the records were written
        with (
            open(train_path, encoding="utf-8") as src,
            open(kept_path, "w", encoding="utf-8") as keep,
            open(self.directory / prepared.VALIDATION, "a", encoding="utf-8") as val,
        ):
            for line in src:
                (val if f'"conversation_id":{marker}' in line else keep).write(line)
        os.replace(kept_path, train_path)
        for name, sign in (("train", -1), ("validation", 1)):
            s = self.splits[name]
            s.conversations += sign
            s.examples += sign * examples
            s.tokens += sign * tokens
            s.trained_tokens += sign * trained
        if prompt is not None:
            with open(self.directory / prepared.PROMPTS, "a", encoding="utf-8") as f:
                f.write(json.dumps(prompt, ensure_ascii=False) + "\n")
            self.prompt_count += 1


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


def _target_label(msg: Msg, run: Run) -> str:
    return f"conversation {run.conversation_id}, pair {msg.pair_id}, field target_response"


class _Converter:
    def __init__(self, encoder: ChatEncoder, options: PrepareOptions, writer: _Writer) -> None:
        self.encoder = encoder
        self.options = options
        self.writer = writer
        self.stats = ConversionStats()
        self.windowed = 0
        self.too_long: list[str] = []
        self.batch: list[tuple[Conversation, list[Run]]] = []

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
            examples: list[tuple[list[int], list[int], list[str]]] = []
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
) -> DatasetReport:
    """Validate, convert and tokenize `source` into `out_dir` (the `brightrun.prepared` layout).

    Raises `InputError` (nothing written) when the file has problems, a target cannot fit
    `max_seq_length` (unless `skip_overlong_targets`), or nothing at all is trainable.
    """
    options = options or PrepareOptions()
    source = Path(source)
    out_dir = Path(out_dir)
    tok = load_tokenizer(tokenizer)
    try:
        encoder = ChatEncoder(tok)
    except TemplateError as exc:
        raise InputError(f"tokenizer {tokenizer_name(tokenizer)}: {exc}") from exc
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.partial-"))
    try:
        scanner = DatasetScanner(source)
        writer = _Writer(tmp, options)
        converter = _Converter(encoder, options, writer)
        try:
            for conversation in scanner.conversations():
                if scanner.result.problem_count:
                    continue  # keep scanning to list every problem, but stop producing output
                converter.add(conversation)
            if scanner.result.ok:
                converter.flush()
        finally:
            writer.close()
        result = scanner.result
        if not result.ok:
            raise InputError(
                f"{source}: {result.problem_count} problem(s) in the training file", result.messages()
            )
        if converter.too_long and not options.skip_overlong_targets:
            raise InputError(
                f"{source}: {len(converter.too_long)} target(s) cannot fit max_seq_length="
                f"{options.max_seq_length} tokens even with no history (system prompt + user turn + "
                "target); raise --max-seq-length or pass --skip-overlong to skip them",
                converter.too_long,
            )
        stats = converter.stats
        trained_total = writer.splits["train"].trained_tokens + writer.splits["validation"].trained_tokens
        if stats.kept_targets <= 0 or trained_total == 0:
            raise InputError(
                f"{source}: no trainable target in the whole file ({result.pairs} pairs: "
                f"{stats.skipped['null_target']} null, {stats.skipped['below_min_quality']} below "
                f"min_quality={options.min_quality:g}, {stats.skipped['too_long']} too long); "
                "lower --min-quality or fix the targets"
            )
        writer.ensure_validation()
        assert result.sha256 is not None
        report = DatasetReport(
            source_name=source.name,
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
        )
        (tmp / prepared.REPORT).write_text(report.model_dump_json(indent=2), encoding="utf-8")
        files = [prepared.TRAIN, prepared.VALIDATION, prepared.PROMPTS, prepared.REPORT]
        meta = prepared.PreparedMeta(
            tokenizer=report.tokenizer,
            max_seq_length=options.max_seq_length,
            source_sha256=result.sha256,
            source_name=source.name,
            min_quality=options.min_quality,
            val_fraction=options.val_fraction,
            seed=options.seed,
            train_examples=report.train.examples,
            validation_examples=report.validation.examples,
            train_tokens=report.train.tokens,
            trained_tokens=report.train.trained_tokens,
            files_sha256={name: sha256_file(tmp / name) for name in files},
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


# ---------------------------------------------------------------------------------------------
# fetch


def fetch_dataset(uri: str, cache_dir: Path, *, endpoint_url: str | None = None) -> Path:
    """A local path for `uri` (a path, `file://`, `s3://bucket/key` or an http(s) URL).

    Remote files land in `cache_dir/<sha256>.json` (downloaded to a temporary file,
    hashed, then renamed: a failed download leaves nothing in the cache). An s3
    object whose recorded sha256 is already cached is not downloaded again.
    """
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    if "://" not in uri:
        path = Path(uri).expanduser()
        if not path.is_file():
            raise InputError(f"dataset {uri}: no such file")
        return path
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    if uri.startswith("s3://"):
        return _fetch_s3(uri, cache_dir, endpoint_url)
    if uri.startswith(("https://", "http://")):
        return _fetch_http(uri, cache_dir)
    raise InputError(f"dataset {uri!r}: use a local path, s3://bucket/key or an https:// URL")


def _cache_path(cache_dir: Path, digest: str) -> Path:
    return cache_dir / f"{digest}.json"


def _adopt(tmp: Path, cache_dir: Path, expected: str | None = None) -> Path:
    digest = sha256_file(tmp)
    if expected is not None and expected != digest:
        tmp.unlink(missing_ok=True)
        raise BrightrunError(f"downloaded bytes have sha256 {digest[:12]}…, expected {expected[:12]}…")
    final = _cache_path(cache_dir, digest)
    os.replace(tmp, final)
    return final


def _fetch_s3(uri: str, cache_dir: Path, endpoint_url: str | None) -> Path:
    from brightrun.storage import ObjectNotFound, StorageError, open_storage, split_uri

    parent, name = split_uri(uri)
    if parent == "s3:/" or parent.count("/") < 2:
        raise InputError(f"dataset {uri!r}: an s3 URI needs a bucket and a key (s3://bucket/key)")
    storage = open_storage(parent, endpoint_url=endpoint_url)
    try:
        info = storage.stat(name)
        if info is None:
            raise InputError(f"dataset {uri}: no such object")
        if info.sha256 and _cache_path(cache_dir, info.sha256).exists():
            return _cache_path(cache_dir, info.sha256)
        fd, tmp_name = tempfile.mkstemp(dir=cache_dir, prefix=".download-", suffix=".partial")
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            storage.get_file(name, tmp)
            return _adopt(tmp, cache_dir)
        finally:
            tmp.unlink(missing_ok=True)
    except ObjectNotFound as exc:
        raise InputError(f"dataset {uri}: no such object") from exc
    except StorageError as exc:
        raise BrightrunError(f"dataset {uri}: download failed: {exc}") from exc


def _fetch_http(uri: str, cache_dir: Path) -> Path:
    import httpx

    shown = uri.split("?", 1)[0]  # a signed URL's query is a credential: never print it
    fd, tmp_name = tempfile.mkstemp(dir=cache_dir, prefix=".download-", suffix=".partial")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, httpx.stream("GET", uri, follow_redirects=True, timeout=60) as r:
            if r.status_code >= 400:
                raise BrightrunError(f"dataset {shown}: HTTP {r.status_code}")
            for chunk in r.iter_bytes(1024 * 1024):
                out.write(chunk)
        return _adopt(tmp, cache_dir)
    except httpx.HTTPError as exc:
        raise BrightrunError(f"dataset {shown}: download failed: {type(exc).__name__}") from exc
    finally:
        tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# report


def render_report_markdown(report: DatasetReport) -> str:
    o = report.options
    lines = [
        f"# Dataset report: {report.source_name}",
        "",
        f"sha256 `{report.source_sha256[:16]}…`, tokenizer `{report.tokenizer}`, "
        f"max_seq_length {o.max_seq_length}, min_quality {o.min_quality:g}, "
        f"val_fraction {o.val_fraction:g}, seed {o.seed}",
        "",
        "| | |",
        "|---|---:|",
        f"| conversations | {report.conversations} |",
        f"| training pairs | {report.pairs} |",
        f"| kept targets | {report.kept_targets} |",
    ]
    for reason, count in report.skipped_targets.items():
        lines.append(f"| skipped: {reason.replace('_', ' ')} | {count} |")
    lines += [
        f"| sequences | {report.sequences} |",
        f"| conversations merged into one sequence | {report.merged_conversations} |",
        f"| conversations split (histories disagree) | {report.split_conversations} |",
        f"| over-long sequences windowed | {report.windowed_sequences} |",
        f"| total tokens | {report.total_tokens:,} |",
        f"| trained tokens | {report.trained_tokens:,} |",
        f"| longest sequence | {report.longest_sequence} |",
        "",
        "| split | conversations | examples | tokens | trained tokens |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, s in (("train", report.train), ("validation", report.validation)):
        lines.append(f"| {name} | {s.conversations} | {s.examples} | {s.tokens:,} | {s.trained_tokens:,} |")
    lines += ["", "| quality score | pairs |", "|---:|---:|"]
    lines += [f"| {score} | {count} |" for score, count in report.quality_histogram.items()]
    if report.history_mismatch_examples:
        lines += ["", "History disagreements (first few):", ""]
        lines += [f"- {m}" for m in report.history_mismatch_examples[:10]]
    if report.too_long_targets:
        lines += ["", "Targets skipped as too long:", ""]
        lines += [f"- {m}" for m in report.too_long_targets[:10]]
    return "\n".join(lines) + "\n"


def render_summary(report: DatasetReport, out_dir: Path) -> str:
    """One screen for the CLI."""
    s = report.skipped_targets
    skipped = (
        f"{s.get('null_target', 0)} null, {s.get('below_min_quality', 0)} below min quality, "
        f"{s.get('too_long', 0)} too long"
    )
    return "\n".join(
        [
            f"prepared {report.source_name} -> {out_dir}",
            f"  conversations {report.conversations}, pairs {report.pairs}, "
            f"kept targets {report.kept_targets} (skipped: {skipped})",
            f"  sequences {report.sequences} (merged conversations {report.merged_conversations}, split "
            f"{report.split_conversations}, windowed {report.windowed_sequences})",
            f"  tokens {report.total_tokens:,}, trained {report.trained_tokens:,}, longest "
            f"{report.longest_sequence}",
            f"  train {report.train.conversations} conversations / {report.train.examples} examples, "
            f"validation {report.validation.conversations} / {report.validation.examples}, "
            f"held-out prompts {report.held_out_prompts}",
            "  quality " + ", ".join(f"{k}: {v}" for k, v in report.quality_histogram.items()),
            f"  report: {out_dir / prepared.REPORT}",
        ]
    )


# ---------------------------------------------------------------------------------------------
# Prefect tasks (imported lazily so the plain functions stay cheap to import)


def _tokenizer_fingerprint(tokenizer: str | Path | Any) -> str:
    """Identity of a tokenizer for caching: its files' hashes for a local dir, else its name."""
    if isinstance(tokenizer, str | Path) and Path(tokenizer).is_dir():
        digest = hashlib.sha256()
        for name in sorted(os.listdir(tokenizer)):
            if name.startswith(("tokenizer", "special_tokens", "chat_template")):
                digest.update(name.encode())
                digest.update(sha256_file(Path(tokenizer) / name).encode())
        return digest.hexdigest()
    return tokenizer_name(tokenizer)


def validation_conversation_ids(conversation_ids: Sequence[str], options: PrepareOptions) -> set[str]:
    """The conversations `prepare_dataset` puts in the validation split (its rule, for callers
    that only know a file's conversation ids): hash below `val_fraction`, and with a non-zero
    fraction at least one held out once there are two or more conversations."""
    hashes = {cid: split_hash(cid, options.seed) for cid in conversation_ids}
    validation = {cid for cid, h in hashes.items() if h < options.val_fraction}
    if not validation and options.val_fraction > 0 and len(hashes) >= 2:
        validation = {min(hashes, key=lambda c: hashes[c])}
    return validation


def prepare_cache_key(
    source: Path, tokenizer: str | Path | Any, out_dir: Path, options: PrepareOptions
) -> str:
    """Same file bytes + tokenizer + options + output dir -> same key.

    A cache hit returns the stored report without touching `out_dir`: `prepare_dataset_cached`
    refreshes the cache entry when the output is gone (a cleaned cache, a new machine).
    """
    parts = [
        sha256_file(Path(source)),
        _tokenizer_fingerprint(tokenizer),
        options.model_dump_json(),
        str(Path(out_dir).resolve()),
    ]
    return "prepare-dataset-" + hashlib.sha256("\n".join(parts).encode()).hexdigest()


def prepare_dataset_cached(
    source: Path, tokenizer: str | Path | Any, out_dir: Path, options: PrepareOptions
) -> DatasetReport:
    """`prepare_dataset_task`, cached by input hash, re-run when its output is no longer on disk."""
    prepare_task = __getattr__("prepare_dataset_task")  # built on first use (see below)
    missing = not (Path(out_dir) / prepared.META).is_file()
    task = prepare_task.with_options(refresh_cache=True) if missing else prepare_task
    return task(source, tokenizer, out_dir, options)


def _prepare_key_fn(context: Any, parameters: dict[str, Any]) -> str:
    return prepare_cache_key(
        parameters["source"],
        parameters["tokenizer"],
        parameters["out_dir"],
        parameters.get("options") or PrepareOptions(),
    )


def _make_tasks() -> tuple[Any, Any]:
    from prefect import task

    @task(name="fetch-dataset", retries=3, retry_delay_seconds=[2, 10, 30])
    def fetch_dataset_task(uri: str, cache_dir: Path, endpoint_url: str | None = None) -> Path:
        return fetch_dataset(uri, cache_dir, endpoint_url=endpoint_url)

    @task(name="prepare-dataset", cache_key_fn=_prepare_key_fn, persist_result=True)
    def prepare_dataset_task(
        source: Path, tokenizer: str, out_dir: Path, options: PrepareOptions | None = None
    ) -> DatasetReport:
        report = prepare_dataset(source, tokenizer, out_dir, options or PrepareOptions())
        publish_report_artifact(report)
        return report

    return fetch_dataset_task, prepare_dataset_task


def publish_report_artifact(report: DatasetReport, key: str = "dataset-report") -> None:
    """The report as a Prefect markdown artifact, when running inside a flow or task run."""
    from prefect.artifacts import create_markdown_artifact
    from prefect.context import FlowRunContext, TaskRunContext

    if FlowRunContext.get() is None and TaskRunContext.get() is None:
        return
    with contextlib.suppress(Exception):  # an artifact is a nicety; never fail the stage over it
        create_markdown_artifact(
            key=key, markdown=render_report_markdown(report), description="Dataset preparation report"
        )


def __getattr__(name: str) -> Any:
    # `from tasks.dataset import prepare_dataset_task` builds the Prefect tasks on first use,
    # so `import tasks.dataset` (the validator, the trainer) does not pay for importing Prefect.
    if name in ("fetch_dataset_task", "prepare_dataset_task"):
        fetch_task, prepare_task = _make_tasks()
        globals()["fetch_dataset_task"] = fetch_task
        globals()["prepare_dataset_task"] = prepare_task
        return globals()[name]
    raise AttributeError(name)
