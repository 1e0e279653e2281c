"""Evaluate: a candidate adapter against production (or another adapter, or the base model)
on the same held-out conversations, recorded in the registry.

The torch side (loading, losses, generation) is `trainer.inference`, imported lazily.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brightrun import layout, prepared
from brightrun.errors import BrightrunError, InputError
from brightrun.registry import promotion
from brightrun.registry import repository as repo
from brightrun.registry.promotion import AdapterRow, EvaluationRecord
from brightrun.resources import Resources
from brightrun.settings import JudgeSettings
from brightrun.storage import ObjectNotFound
from tasks.adapters.fetch import LocalAdapter, fetch_adapter

BASE = "base"
SAMPLE_REPLIES = 3


@dataclass(frozen=True)
class EvalSet:
    examples: list[prepared.PreparedExample]
    prompts: list[prepared.HeldOutPrompt]
    description: str
    sha256: str
    evaluation_set: str | None = None  # NAME@VERSION of a registered set


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


def _prepare_whole_file(path: Path, candidate: LocalAdapter) -> tuple[list[Any], list[Any]]:
    """Every conversation of a brightrun-lora-v4 file, prepared with the candidate's tokenizer."""
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
        return _read_jsonl_examples(out / prepared.TRAIN), list(prepared.iter_prompts(out / prepared.PROMPTS))


def _exam_prompts(path: Path) -> list[prepared.HeldOutPrompt]:
    """One prompt per conversation of the exam (its first trained pair, as the dataset stage
    picks a validation conversation's): a preparation without a validation split has none."""
    from tasks.dataset import PrepareOptions
    from tasks.dataset.prepare import _held_out_prompt
    from tasks.dataset.schema import DatasetScanner

    min_quality = PrepareOptions().min_quality
    found = (_held_out_prompt(c, min_quality) for c in DatasetScanner(path).conversations())
    return [prepared.HeldOutPrompt.model_validate(p) for p in found if p is not None]


def load_registered_set(resources: Resources, candidate: LocalAdapter, ref: str) -> EvalSet:
    """A registered evaluation set (issue 25), read back verified; its identity is its
    content sha256, the same whichever adapters sit it."""
    from brightrun.registry import evalsets
    from tasks.evalsets import fetch_evaluation_set

    row = evalsets.get(resources.registry, ref)
    with tempfile.TemporaryDirectory(prefix="brightrun-exam-") as tmp:
        path = fetch_evaluation_set(resources, row, Path(tmp) / "evaluation_set.json")
        examples, _ = _prepare_whole_file(path, candidate)
        prompts = _exam_prompts(path)
    if not examples:
        raise InputError(f"evaluation set {row.label} holds no trainable target to score")
    return EvalSet(examples, prompts, f"evaluation set {row.label}", row.sha256, row.ref)


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
            examples, prompts = _prepare_whole_file(path, candidate)
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
    evaluation_set: str | None = None,
    base_model: str | None = None,
    samples: int = SAMPLE_REPLIES,
    max_new_tokens: int = 48,
    record: bool = True,
    judge: JudgeSettings | None = None,
) -> EvaluationRecord:
    """Both models on the same held-out conversations; the result is stored in the registry
    (an `adapter_evaluated` event on the candidate's job) unless `record` is False.

    `evaluation_set`: a registered set's NAME[@VERSION] (default `BRIGHTRUN_PROMOTION_EVALSET`
    when no `eval_set` file is given either). `judge`: also ask the pairwise judge which reply
    of each sample prompt is better (`tasks/adapters/judge.py`)."""
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
    if eval_set is not None and evaluation_set is not None:
        raise InputError("give --eval-set FILE or --evalset NAME[@VERSION], not both")
    evaluation_set = evaluation_set or (None if eval_set else resources.settings.promotion_evalset)
    if evaluation_set:
        data = load_registered_set(resources, local, evaluation_set)
    else:
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
    # The judge reads every prompt of the set; the report shows `samples` of them.
    for prompt in data.prompts if judge is not None else data.prompts[:samples]:
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
        evaluation_set=data.evaluation_set,
        conversations=len(per_conv),
        wins=_wins(per_conv),
        per_conversation=per_conv,
        samples=sample_rows,
    )
    if judge is not None:
        from tasks.adapters.judge import judge_samples

        result.judge = judge_samples(judge, sample_rows).model_dump(mode="json")
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
    if record.judge:
        j = record.judge
        lines += [
            "",
            f"Judge `{j['model']}` ({j['base_url']}): candidate win rate **{j['win_rate']:.2f}** "
            f"(95% interval {j['ci95_low']:.2f}–{j['ci95_high']:.2f}) over {len(j['judgements'])} "
            f"position-swapped judgements of {j['prompts']} prompts.",
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
