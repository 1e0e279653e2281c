"""After training: fetch, verify, evaluate, promote, download, merge an adapter (issue 14).

Each stage is a plain function over `Resources` (the CLI calls them directly) with a thin
Prefect task beside it (the `evaluate_adapter` and `promote_adapter` flows use those). The
torch side (loading, generation, losses, merge) is `trainer.inference`, imported lazily so
this module imports on a small worker without torch.

An adapter is never used unverified: every file is checked against the adapter's
`MANIFEST.json` (sha256 and size) when it is fetched, and a verified copy is cached under
`$BRIGHTRUN_HOME/cache/adapters/<artifact id>/<manifest sha256>/`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from sqlalchemy import Engine

from brightrun import layout, prepared
from brightrun.errors import BrightrunError, InputError
from brightrun.protocol import Manifest, ManifestEntry
from brightrun.registry import promotion
from brightrun.registry import repository as repo
from brightrun.registry.promotion import AdapterRow, EvaluationRecord, LifecycleResult
from brightrun.resources import Resources
from brightrun.spec import JobSpec, QuantizationSettings, parse_spec
from brightrun.storage import ObjectNotFound, Storage, StorageError, sha256_bytes, sha256_file

if TYPE_CHECKING:
    from trainer.inference import BaseModelSpec, ChatModel

log = logging.getLogger("brightrun.adapters")

BASE = "base"
SAMPLE_REPLIES = 3


class AdapterCorrupt(BrightrunError):
    """The adapter's files in storage are missing or differ from its manifest."""

    def __init__(self, message: str, *problems: str) -> None:
        self.problems = list(problems)
        super().__init__("\n".join([message, *(f"  - {p}" for p in problems)]))


# ---------------------------------------------------------------- fetch and verify


@dataclass(frozen=True)
class LocalAdapter:
    """A verified local copy of a registered adapter, and how its base model is loaded."""

    artifact: AdapterRow
    directory: Path
    base_model: str
    base_model_revision: str | None
    quantization: QuantizationSettings
    max_seq_length: int | None
    manifest: Manifest

    def base_spec(self, *, full_precision: bool = False) -> BaseModelSpec:
        from trainer.inference import BaseModelSpec

        spec = BaseModelSpec(self.base_model, self.base_model_revision, self.quantization)
        return spec.full_precision() if full_precision else spec


def adapter_location(resources: Resources, artifact: AdapterRow) -> tuple[Storage, str]:
    """(storage, key prefix) of an artifact's files: the job's own storage and layout for a
    `lora_adapter`, the recorded `storage_path` for anything else."""
    if artifact.artifact_type == "lora_adapter":
        job = repo.get_job(resources.registry, artifact.training_job_id)
        return resources.job_storage(job), layout.JobLayout(artifact.training_job_id).adapter_dir
    parent, _, name = artifact.storage_path.rstrip("/").rpartition("/")
    return resources.open_storage(parent or "/"), name


def read_manifest(storage: Storage, prefix: str) -> tuple[Manifest, bytes]:
    key = f"{prefix}/{layout.MANIFEST}"
    try:
        data = storage.get_bytes(key)
    except ObjectNotFound:
        raise AdapterCorrupt(
            f"{storage.uri(key)} is missing: the adapter was never fully uploaded or was deleted"
        ) from None
    try:
        return Manifest.model_validate_json(data), data
    except ValueError as exc:
        raise AdapterCorrupt(f"{storage.uri(key)} is not a valid manifest: {exc}") from exc


def verify_local_copy(directory: Path, manifest: Manifest) -> list[str]:
    """Problems of a local copy against the manifest (empty: it verifies)."""
    problems = []
    for rel, entry in manifest.files.items():
        path = directory / rel
        if not path.is_file():
            problems.append(f"{rel}: missing")
        elif path.stat().st_size != entry.size:
            problems.append(f"{rel}: {path.stat().st_size} bytes, manifest says {entry.size}")
        elif sha256_file(path) != entry.sha256:
            problems.append(f"{rel}: sha256 differs from the manifest")
    return problems


def directory_manifest(directory: Path) -> Manifest:
    """sha256 and size of every file under `directory` (the manifest itself excluded)."""
    return Manifest(
        files={
            p.relative_to(directory).as_posix(): ManifestEntry(sha256=sha256_file(p), size=p.stat().st_size)
            for p in sorted(directory.rglob("*"))
            if p.is_file() and p.name != layout.MANIFEST
        }
    )


def stored_problems(storage: Storage, prefix: str, manifest: Manifest) -> list[str]:
    """Problems of the stored objects against the manifest, without downloading them: size and
    the digest the store recorded (a local store's files are hashed, which is cheap)."""
    from brightrun.storage import LocalStorage

    problems = []
    for rel, entry in manifest.files.items():
        key = f"{prefix}/{rel}"
        info = storage.stat(key)
        if info is None:
            problems.append(f"{rel}: missing")
            continue
        digest = sha256_file(storage.root / key) if isinstance(storage, LocalStorage) else info.sha256
        if info.size != entry.size or (digest is not None and digest != entry.sha256):
            problems.append(f"{rel}: differs from the manifest (size or sha256)")
    return problems


def download_verified(storage: Storage, prefix: str, out_dir: Path) -> Manifest:
    """Every file of the manifest into `out_dir` (plus the manifest), each checked; written to a
    temp dir beside `out_dir` and renamed, so a failure leaves nothing at `out_dir`."""
    manifest, data = read_manifest(storage, prefix)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.partial-"))
    try:
        problems = []
        for rel, entry in manifest.files.items():
            key = f"{prefix}/{rel}"
            try:
                storage.get_file(key, tmp / rel, expected_sha256=entry.sha256)
            except ObjectNotFound:
                problems.append(f"{storage.uri(key)}: missing")
            except StorageError as exc:
                problems.append(f"{storage.uri(key)}: {exc}")
        if not problems:
            problems = verify_local_copy(tmp, manifest)
        if problems:
            raise AdapterCorrupt(
                f"the adapter at {storage.uri(prefix)} does not match its manifest; nothing was downloaded",
                *problems,
            )
        (tmp / layout.MANIFEST).write_bytes(data)
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked by the caller)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _job_spec(resources: Resources, artifact: AdapterRow) -> JobSpec | None:
    try:
        job = repo.get_job(resources.registry, artifact.training_job_id)
        storage = resources.job_storage(job)
        return parse_spec(storage.get_bytes(layout.JobLayout(artifact.training_job_id).spec))
    except (ObjectNotFound, BrightrunError, ValueError) as exc:
        log.warning(
            "no readable spec.json for job %s (%s): loading the base plainly", artifact.training_job_id, exc
        )
        return None


def fetch_adapter(resources: Resources, artifact: AdapterRow) -> LocalAdapter:
    """A verified local copy of the artifact (cached), with its base model's loading recipe."""
    if artifact.artifact_type != "lora_adapter":
        raise InputError(f"artifact {artifact.id} is a {artifact.artifact_type}, not a lora_adapter")
    storage, prefix = adapter_location(resources, artifact)
    manifest, data = read_manifest(storage, prefix)
    cache = resources.settings.cache_dir / "adapters" / artifact.id / sha256_bytes(data)[:16]
    if cache.is_dir() and not verify_local_copy(cache, manifest):
        # The cached copy is good, but the stored adapter must still be whole: a damaged
        # upload is reported, not papered over by an old copy.
        problems = stored_problems(storage, prefix, manifest)
        if problems:
            raise AdapterCorrupt(
                f"the adapter at {storage.uri(prefix)} does not match its manifest", *problems
            )
    else:
        if cache.exists():
            shutil.rmtree(cache)
        download_verified(storage, prefix, cache)
    spec = _job_spec(resources, artifact)
    config = (
        json.loads((cache / "adapter_config.json").read_text())
        if (cache / "adapter_config.json").exists()
        else {}
    )
    base_model = (
        (spec.base_model if spec else None) or artifact.base_model or config.get("base_model_name_or_path")
    )
    if not base_model:
        raise AdapterCorrupt(f"artifact {artifact.id} records no base model")
    return LocalAdapter(
        artifact=artifact,
        directory=cache,
        base_model=base_model,
        base_model_revision=spec.base_model_revision if spec else None,
        quantization=spec.quantization if spec else QuantizationSettings(load_in_4bit=False),
        max_seq_length=spec.training.max_seq_length if spec else None,
        manifest=manifest,
    )


def download_adapter(resources: Resources, artifact: AdapterRow, out_dir: Path) -> Manifest:
    """The artifact's files into `out_dir` (new or empty), verified against its manifest."""
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise InputError(f"{out_dir} exists and is not an empty directory; choose a new --out")
    storage, prefix = adapter_location(resources, artifact)
    return download_verified(storage, prefix, out_dir)


def presigned_urls(resources: Resources, artifact: AdapterRow, expires_s: int) -> dict[str, str]:
    """Time-limited GET URLs, one per file of the adapter (S3 storage only); the files are
    verified against the manifest first so a URL never hands out an altered file."""
    from brightrun.storage import S3Storage

    storage, prefix = adapter_location(resources, artifact)
    if not isinstance(storage, S3Storage):
        raise InputError(
            f"the adapter is on local storage ({storage.uri(prefix)}): --url needs S3; use --out DIR"
        )
    if not 1 <= expires_s <= 7 * 24 * 3600:
        raise InputError(f"--expires must be between 1 s and 7 days, not {expires_s}")
    manifest, _ = read_manifest(storage, prefix)
    problems = stored_problems(storage, prefix, manifest)
    if problems:
        raise AdapterCorrupt(f"the adapter at {storage.uri(prefix)} does not match its manifest", *problems)
    urls = {}
    for rel in [*manifest.files, layout.MANIFEST]:
        # S3Storage keeps its boto3 client private; presigning is a local computation on it.
        urls[rel] = storage._client.generate_presigned_url(
            "get_object",
            Params={"Bucket": storage.bucket, "Key": storage._key(f"{prefix}/{rel}")},
            ExpiresIn=expires_s,
        )
    return urls


# ---------------------------------------------------------------- chat models


def load_for_chat(resources: Resources, ref: str, *, base_model: str | None = None) -> ChatModel:
    """`generate`, `chat` and `serve`: the artifact (id, job id or `production`) ready to talk.

    `base_model` picks the production adapter of that base model, or, for an adapter, loads
    it onto another copy of its base (a local path to the same weights); a base that does
    not fit the adapter is refused.
    """
    from trainer.inference import BaseModelSpec, load_chat_model, load_merged_model

    artifact = promotion.resolve_artifact(resources.registry, ref, base_model=base_model)
    if artifact.artifact_type == "merged_model":
        storage, prefix = adapter_location(resources, artifact)
        cache = resources.settings.cache_dir / "merged" / artifact.id
        if not cache.is_dir():
            download_verified(storage, prefix, cache)
        return load_merged_model(cache, artifact.id)
    local = fetch_adapter(resources, artifact)
    base = local.base_spec()
    if base_model and ref.strip() != promotion.PRODUCTION and base_model != local.base_model:
        base = BaseModelSpec(base_model, None, local.quantization)
    return load_chat_model(base, local.directory, artifact.id)


# ---------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class EvalSet:
    examples: list[prepared.PreparedExample]
    prompts: list[prepared.HeldOutPrompt]
    description: str
    sha256: str


def _digest(examples: Sequence[prepared.PreparedExample]) -> str:
    h = hashlib.sha256()
    for e in examples:
        h.update(json.dumps([e.conversation_id, e.input_ids, e.labels], separators=(",", ":")).encode())
    return h.hexdigest()


def _read_jsonl_examples(path: Path) -> list[prepared.PreparedExample]:
    try:
        return list(prepared.iter_examples(path))
    except ValueError as exc:
        raise InputError(
            f"{path}: not a prepared examples file (brightrun prepare writes them): {exc}"
        ) from exc


def load_eval_set(resources: Resources, candidate: LocalAdapter, eval_set: Path | None) -> EvalSet:
    """The held-out conversations both models are scored on.

    Default: the candidate's validation split from its job's prepared data in storage
    (verified against `meta.json`); no earlier adapter trained on it, since the feedback
    export never reuses validation conversations. `eval_set` may be a `brightrun prepare`
    output directory (its validation split), a prepared `.jsonl`, or a brightrun-lora-v4
    `.json` dataset (prepared here with the candidate's tokenizer, every conversation used).
    """
    if eval_set is None:
        job_id = candidate.artifact.training_job_id
        job = repo.get_job(resources.registry, job_id)
        storage = resources.job_storage(job)
        data = layout.JobLayout(job_id).data_dir
        try:
            meta = prepared.PreparedMeta.model_validate_json(storage.get_bytes(f"{data}/{prepared.META}"))
        except ObjectNotFound:
            raise InputError(
                f"job {job_id} has no prepared data in {storage.uri(data)}; pass --eval-set FILE"
            ) from None
        with tempfile.TemporaryDirectory(prefix="brightrun-eval-") as tmp:
            for name in (prepared.VALIDATION, prepared.PROMPTS):
                key = f"{data}/{name}"
                if name == prepared.PROMPTS and not storage.exists(key):
                    continue
                storage.get_file(key, Path(tmp) / name, expected_sha256=meta.files_sha256.get(name))
            examples = _read_jsonl_examples(Path(tmp) / prepared.VALIDATION)
            prompts = list(prepared.iter_prompts(Path(tmp) / prepared.PROMPTS))
        description = f"validation split of job {job_id}"
    else:
        path = Path(eval_set)
        if not path.exists():
            raise InputError(f"--eval-set {path} does not exist")
        if path.is_dir():
            examples = _read_jsonl_examples(path / prepared.VALIDATION)
            prompts = list(prepared.iter_prompts(path / prepared.PROMPTS))
        elif path.suffix == ".jsonl":
            examples, prompts = _read_jsonl_examples(path), []
        else:
            from tasks.dataset import PrepareOptions, prepare_dataset

            with tempfile.TemporaryDirectory(prefix="brightrun-evalset-") as tmp:
                out = Path(tmp) / "prepared"
                prepare_dataset(
                    path,
                    candidate.directory,
                    out,
                    PrepareOptions(
                        max_seq_length=candidate.max_seq_length or 2048,
                        validation_fraction=0.0,
                        skip_overlong_targets=True,
                    ),
                )
                examples = _read_jsonl_examples(out / prepared.TRAIN)
                prompts = list(prepared.iter_prompts(out / prepared.PROMPTS))
        description = str(path)
    if not examples:
        raise InputError(f"the eval set ({description}) holds no examples")
    return EvalSet(examples, prompts, description, _digest(examples))


def _wins(results: Sequence[promotion.ConversationResult]) -> dict[str, int]:
    wins = {"candidate": 0, "against": 0, "ties": 0}
    for r in results:
        wins["ties" if r.winner == "tie" else r.winner] += 1
    return wins


def compare_losses(
    conversation_ids: Sequence[str],
    candidate: Sequence[tuple[float, int]],
    against: Sequence[tuple[float, int]],
) -> list[promotion.ConversationResult]:
    """Per conversation: mean loss per trained token of each model (examples of one
    conversation pooled). Pure: tests call it directly."""
    sums: dict[str, list[float]] = {}
    for cid, (c_loss, c_tok), (a_loss, _a_tok) in zip(conversation_ids, candidate, against, strict=True):
        acc = sums.setdefault(cid, [0.0, 0.0, 0.0])
        acc[0] += c_loss
        acc[1] += a_loss
        acc[2] += c_tok
    return [
        promotion.ConversationResult(
            conversation_id=cid, candidate_loss=c / tok, against_loss=a / tok, tokens=int(tok)
        )
        for cid, (c, a, tok) in sums.items()
        if tok > 0
    ]


def evaluate(
    resources: Resources,
    candidate_ref: str,
    against_ref: str = promotion.PRODUCTION,
    *,
    eval_set: Path | None = None,
    base_model: str | None = None,
    samples: int = SAMPLE_REPLIES,
    max_new_tokens: int = 48,
    record: bool = True,
) -> EvaluationRecord:
    """Both models on the same held-out conversations; the result is stored in the registry
    (an `adapter_evaluated` event on the candidate's job) unless `record` is False."""
    from trainer import inference

    engine = resources.registry
    candidate = promotion.resolve_artifact(engine, candidate_ref, base_model=base_model)
    against: AdapterRow | None = None
    if against_ref.strip() != BASE:
        against = promotion.resolve_artifact(engine, against_ref, base_model=candidate.base_model)
        if against.id == candidate.id:
            raise InputError(f"{candidate.id} cannot be evaluated against itself")
        if (against.base_model or "") != (candidate.base_model or ""):
            raise inference.BaseModelMismatch(
                f"{candidate.id} is an adapter of {candidate.base_model}, {against.id} of "
                f"{against.base_model}: only adapters of one base model compare"
            )
    local = fetch_adapter(resources, candidate)
    other = fetch_adapter(resources, against) if against is not None else None
    data = load_eval_set(resources, local, eval_set)

    dev = inference.device()
    tokenizer = inference.load_tokenizer(local.directory)
    model = inference.load_base(local.base_spec(), dev)
    model = inference.attach_adapter(model, local.directory, "candidate")
    if other is not None:
        model = inference.attach_adapter(model, other.directory, "against")
    pad = tokenizer.pad_token_id
    max_len = local.max_seq_length

    def scores(name: str | None) -> list[inference.ExampleLoss]:
        if name is None:
            with model.disable_adapter():
                return inference.example_losses(model, data.examples, pad, max_length=max_len, dev=dev)
        model.set_adapter(name)
        return inference.example_losses(model, data.examples, pad, max_length=max_len, dev=dev)

    cand_losses = scores("candidate")
    other_losses = scores("against" if other is not None else None)
    per_conv = compare_losses(
        [x.conversation_id for x in cand_losses],
        [(x.loss_sum, x.tokens) for x in cand_losses],
        [(x.loss_sum, x.tokens) for x in other_losses],
    )
    chat = inference.ChatModel(model, tokenizer, candidate.id, dev)
    options = inference.GenerationOptions(max_new_tokens=max_new_tokens)
    sample_rows = []
    for prompt in data.prompts[:samples]:
        model.set_adapter("candidate")
        c_reply = chat.generate(prompt.messages, options).text
        if other is not None:
            model.set_adapter("against")
            a_reply = chat.generate(prompt.messages, options).text
        else:
            with model.disable_adapter():
                a_reply = chat.generate(prompt.messages, options).text
        last_user = next((m["content"] for m in reversed(prompt.messages) if m.get("role") == "user"), "")
        sample_rows.append(
            {"prompt": last_user, "reference": prompt.reference, "candidate": c_reply, "against": a_reply}
        )

    def score(artifact: AdapterRow | None, losses: list[inference.ExampleLoss]) -> promotion.ModelScore:
        loss = inference.mean_loss(losses)
        label = (
            f"{artifact.id} ({artifact.deployment_status})" if artifact else f"base model {local.base_model}"
        )
        return promotion.ModelScore(
            artifact_id=artifact.id if artifact else None,
            label=label,
            loss=loss,
            perplexity=inference.perplexity(loss),
            tokens=sum(x.tokens for x in losses),
        )

    result = EvaluationRecord(
        candidate=score(candidate, cand_losses),
        against=score(against, other_losses),
        base_model=candidate.base_model or local.base_model,
        eval_set=data.description,
        eval_set_sha256=data.sha256,
        conversations=len(per_conv),
        wins=_wins(per_conv),
        per_conversation=per_conv,
        samples=sample_rows,
    )
    if not (math.isfinite(result.candidate.loss) and math.isfinite(result.against.loss)):
        raise BrightrunError(f"the eval set ({data.description}) gave no finite loss; nothing was recorded")
    if record:
        promotion.record_evaluation(engine, result)
    return result


def evaluation_markdown(record: EvaluationRecord) -> str:
    c, a = record.candidate, record.against
    better = "candidate" if c.loss < a.loss else ("against" if a.loss < c.loss else "neither")
    lines = [
        f"# Evaluation of `{c.artifact_id}`",
        "",
        f"Base model `{record.base_model}`; {record.conversations} held-out conversations "
        f"({record.eval_set}, sha256 `{record.eval_set_sha256[:12]}`).",
        "",
        "| model | validation loss | perplexity | trained tokens | conversations won |",
        "|---|---|---|---|---|",
        *(
            f"| {side} {m.label} | {m.loss:.4f} | {m.perplexity:.2f} | {m.tokens} "
            f"| {record.wins.get(side, 0)} |"
            for side, m in (("candidate", c), ("against", a))
        ),
        "",
        f"Ties: {record.wins.get('ties', 0)}. Lower loss: **{better}**.",
    ]
    if record.samples:
        lines += [
            "",
            "## Sample replies",
            "",
            "| prompt | candidate | against | reference |",
            "|---|---|---|---|",
        ]
        for s in record.samples:
            cells = [
                s.get(k, "").replace("|", "\\|").replace("\n", " ")[:200]
                for k in ("prompt", "candidate", "against", "reference")
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def evaluation_json(record: EvaluationRecord) -> dict[str, Any]:
    return record.model_dump(mode="json")


# ---------------------------------------------------------------- promotion


def notify_changes(result: LifecycleResult, webhook_url: str | None, secret: str | None) -> int:
    """POST each status change in the dashboard's webhook shape (DESIGN.md §7), signed; the
    adapter fields ride along. Failures are logged, never raised. Returns deliveries made."""
    if not webhook_url or not result.changes:
        return 0
    if not secret:
        log.warning(
            "webhook %s not sent: BRIGHTRUN_WEBHOOK_SECRET is not set (webhooks are signed)", webhook_url
        )
        return 0
    import httpx

    from tasks.notify import build_payload, deliver, encode

    sent = 0
    with httpx.Client(timeout=10) as client:
        for change in result.changes:
            a = change.artifact
            payload = build_payload(a.training_job_id, "completed", lora_artifact_path=a.storage_path)
            payload.update(
                event=change.event,
                artifact_id=a.id,
                base_model=a.base_model,
                deployment_status=a.deployment_status,
                previous_deployment_status=change.previous_status,
            )
            sent += deliver(client, webhook_url, encode(payload), secret)
    return sent


def promote(
    resources: Resources,
    ref: str,
    to: str,
    *,
    force: bool = False,
    reason: str | None = None,
    base_model: str | None = None,
    evaluate_first: bool = True,
    eval_set: Path | None = None,
    webhook_url: str | None = None,
) -> tuple[LifecycleResult, EvaluationRecord | None]:
    """Promote; for production, first evaluate against the current production adapter when
    no evaluation against it is recorded yet (and `evaluate_first`)."""
    engine = resources.registry
    artifact = promotion.resolve_artifact(engine, ref, base_model=base_model)
    record = None
    current = None
    if to == "production" and artifact.base_model is not None:
        current = promotion.production_adapter(engine, artifact.base_model)
    expected = current.id if current else None
    if current is not None and current.id != artifact.id and not force:
        record = promotion.latest_evaluation(engine, artifact, current.id)
        if (record is None or eval_set is not None) and evaluate_first:
            # Refuse what cannot be promoted before spending minutes on an evaluation.
            job = repo.get_job(engine, artifact.training_job_id)
            promotion.check_promotable(artifact, job.status, promotion.DeploymentStatus(to))
            record = evaluate(resources, artifact.id, current.id, eval_set=eval_set)
    result = promotion.promote(
        engine, artifact.id, to, force=force, reason=reason, expected_production=expected
    )
    secret = resources.settings.webhook_secret
    notify_changes(result, webhook_url, secret.get_secret_value() if secret else None)
    return result, record


def rollback(
    resources: Resources,
    base_model: str | None = None,
    *,
    reason: str | None = None,
    webhook_url: str | None = None,
) -> LifecycleResult:
    result = promotion.rollback(resources.registry, base_model, reason=reason)
    secret = resources.settings.webhook_secret
    notify_changes(result, webhook_url, secret.get_secret_value() if secret else None)
    return result


# ---------------------------------------------------------------- merge


def export_merged(
    resources: Resources, ref: str, out_dir: Path, *, dtype: str = "auto", register: bool = True
) -> tuple[Path, repo.Artifact | None]:
    """The adapter merged into its full-precision base at `out_dir`; with `register`, also
    uploaded beside the adapter (`jobs/<id>/merged/`, with a manifest) and registered as the
    job's `merged_model` artifact."""
    from trainer.inference import merge_adapter

    artifact = promotion.resolve_artifact(resources.registry, ref)
    local = fetch_adapter(resources, artifact)
    merge_adapter(local.base_spec(full_precision=True), local.directory, Path(out_dir), dtype=dtype)
    if not register:
        return Path(out_dir), None
    job = repo.get_job(resources.registry, artifact.training_job_id)
    storage = resources.job_storage(job)
    prefix = layout.JobLayout(artifact.training_job_id).key("merged")
    manifest = directory_manifest(Path(out_dir))
    for rel in manifest.files:
        storage.put_file(f"{prefix}/{rel}", Path(out_dir) / rel)
    data = manifest.model_dump_json(indent=2).encode()
    storage.put_bytes(f"{prefix}/{layout.MANIFEST}", data)
    registered = repo.register_artifact(
        resources.registry,
        training_job_id=artifact.training_job_id,
        artifact_type="merged_model",
        storage_path=storage.uri(prefix),
        file_size_bytes=manifest.total_size,
        sha256=sha256_bytes(data),
        base_model=artifact.base_model,
        metadata={"merged_from": artifact.id, "dtype": dtype, "format": "safetensors"},
        set_job_artifact_path=False,
    )
    return Path(out_dir), registered


# ---------------------------------------------------------------- A/B by model version


def feedback_stats(
    engine: Engine, since: datetime | None, until: datetime | None
) -> list[promotion.VersionStats]:
    return promotion.feedback_by_version(engine, since=since, until=until)


# ---------------------------------------------------------------- Prefect tasks


@task(name="evaluate-adapter", cache_policy=NO_CACHE)
def evaluate_adapter_task(
    resources: Resources, candidate: str, against: str, eval_set: Path | None
) -> EvaluationRecord:
    return evaluate(resources, candidate, against, eval_set=eval_set)


@task(name="promote-adapter", cache_policy=NO_CACHE)
def promote_adapter_task(
    resources: Resources,
    artifact: str,
    to: str,
    force: bool,
    reason: str | None,
    eval_set: Path | None,
    webhook_url: str | None,
) -> tuple[LifecycleResult, EvaluationRecord | None]:
    return promote(
        resources, artifact, to, force=force, reason=reason, eval_set=eval_set, webhook_url=webhook_url
    )
