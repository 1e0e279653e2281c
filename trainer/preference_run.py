"""A DPO or KTO training run: `TrainingRun` with the objective's data, step and evaluation.

Reference model: the policy as it stands before step 0 (the starting adapter, or the bare
base for a fresh LoRA), frozen by computing its log-probs once for every train and
validation sequence before the first step. No second model is held in memory and no
adapter is duplicated; a resume reads the same numbers back (`reference/logps.pt` under the
job prefix, sha256-verified through its manifest, loaded with weights_only=True), so a
resumed run ends where an uninterrupted one does.
"""

from __future__ import annotations

import functools
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from brightrun import layout, prepared
from brightrun.errors import BrightrunError
from brightrun.protocol import EvalReport, Manifest, MetricRecord
from trainer.data import BatchStream
from trainer.preference import (
    PreferenceTerms,
    TokenSequence,
    completion_sequence,
    dpo_terms,
    kto_kl,
    kto_terms,
    sequence_logps,
)
from trainer.prepared_data import PreparedData, setup_data
from trainer.run import TrainingRun

log = logging.getLogger("trainer")

REFERENCE_DIR = "reference"
REFERENCE_FILE = "logps.pt"


@dataclass(frozen=True)
class PreferenceExample:
    """DPO: `first` chosen over `second` rejected. KTO: `first` the thumbed completion with
    `label`, `second` another record's completion (the mismatched pair of KTO's KL term)."""

    first: TokenSequence
    second: TokenSequence
    label: bool | None

    @property
    def length(self) -> int:
        return len(self.first[0]) + len(self.second[0])

    def scored_tokens(self) -> int:
        first = sum(1 for t in self.first[1] if t != prepared.IGNORE_INDEX)
        if self.label is not None:  # KTO: the KL sequence is not trained
            return first
        return first + sum(1 for t in self.second[1] if t != prepared.IGNORE_INDEX)


def load_preferences(path: Path, max_len: int, objective: str) -> list[PreferenceExample]:
    records = list(prepared.iter_preferences(path))
    out = []
    for i, r in enumerate(records):
        if objective == "dpo":
            if r.chosen_ids is None or r.rejected_ids is None:
                raise BrightrunError(f"{path.name}: record {r.source or i + 1} has no chosen/rejected ids")
            out.append(
                PreferenceExample(
                    completion_sequence(r.prompt_ids, r.chosen_ids, max_len),
                    completion_sequence(r.prompt_ids, r.rejected_ids, max_len),
                    None,
                )
            )
        else:
            if r.completion_ids is None or r.label is None:
                raise BrightrunError(f"{path.name}: record {r.source or i + 1} has no completion/label")
            # TRL pairs each prompt with a neighbour's completion; here the next record's.
            other = records[(i + 1) % len(records)].completion_ids or r.completion_ids
            out.append(
                PreferenceExample(
                    completion_sequence(r.prompt_ids, r.completion_ids, max_len),
                    completion_sequence(r.prompt_ids, other, max_len),
                    r.label,
                )
            )
    return out


def _terms(
    spec: Any, first: torch.Tensor, second: torch.Tensor, ref: torch.Tensor, labels: Sequence[bool | None]
) -> PreferenceTerms:
    t = spec.training
    if t.objective == "dpo":
        return dpo_terms(first, second, ref[:, 0], ref[:, 1], t.beta)
    kl = kto_kl(second.detach(), ref[:, 1])
    return kto_terms(
        first, ref[:, 0], torch.tensor(labels), kl, t.beta, t.desirable_weight, t.undesirable_weight
    )


@dataclass
class _Tally:
    """Rewards of one step or one evaluation, averaged the way TRL logs them."""

    chosen: list[float] = field(default_factory=list)
    rejected: list[float] = field(default_factory=list)
    right: int = 0
    pairs: int = 0
    kls: list[float] = field(default_factory=list)

    def add(self, terms: PreferenceTerms, paired: bool) -> None:
        self.chosen.extend(terms.chosen_rewards.tolist())
        self.rejected.extend(terms.rejected_rewards.tolist())
        if paired:
            self.right += int((terms.chosen_rewards > terms.rejected_rewards).sum())
            self.pairs += len(terms.chosen_rewards)
        if terms.kl is not None:
            self.kls.append(float(terms.kl))

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.chosen:
            out["rewards_chosen"] = sum(self.chosen) / len(self.chosen)
        if self.rejected:
            out["rewards_rejected"] = sum(self.rejected) / len(self.rejected)
        if self.chosen and self.rejected:
            out["reward_margin"] = out["rewards_chosen"] - out["rewards_rejected"]
        if self.pairs:
            out["reward_accuracy"] = self.right / self.pairs
        if self.kls:
            out["kl"] = sum(self.kls) / len(self.kls)
        return out


class PreferenceStep:
    """One optimizer step of DPO or KTO: per-example losses summed, divided by the step's
    examples (TRL's mean over the batch when the micro-batches are equal)."""

    def __init__(self, run: PreferenceTrainingRun, micro_batches: range) -> None:
        self.run = run
        self.indices = {m: run.stream.micro_batch(m) for m in micro_batches}
        chosen = [run.data.train[i] for idx in self.indices.values() for i in idx]
        self.count = len(chosen)
        self.tokens = sum(e.length for e in chosen)
        self.trained_tokens = sum(e.scored_tokens() for e in chosen)
        self.padding_tokens = 0
        if not run.spec.training.packing:
            for idx in self.indices.values():
                widths = [len(s[0]) for i in idx for s in (run.data.train[i].first, run.data.train[i].second)]
                self.padding_tokens += max(widths) * len(widths) - sum(widths)
        self.tally = _Tally()

    def loss(self, model: torch.nn.Module, m: int, device: torch.device) -> torch.Tensor:
        run = self.run
        idx = self.indices[m]
        examples = [run.data.train[i] for i in idx]
        sequences = [e.first for e in examples] + [e.second for e in examples]
        logps = sequence_logps(model, sequences, run.pad_id, device, packing=run.spec.training.packing)
        ref = run.reference["train"][idx].to(device)
        terms = _terms(run.spec, logps[: len(idx)], logps[len(idx) :], ref, [e.label for e in examples])
        self.tally.add(terms, paired=run.spec.training.objective == "dpo")
        return terms.losses.sum() / self.count

    def metrics(self) -> dict[str, float]:
        return self.tally.metrics()


class PreferenceTrainingRun(TrainingRun):
    """DPO or KTO on a prepared preference set (`brightrun-preferences-v1`)."""

    def _load_data(self) -> PreparedData:
        objective = self.spec.training.objective
        data = setup_data(
            self.storage,
            self.spec,
            self.work,
            expected=prepared.PREFERENCE_FORMAT,
            load=functools.partial(load_preferences, objective=objective),
        )
        if data.meta.objective != objective:
            raise BrightrunError(
                f"the prepared set holds {data.meta.objective} records but training.objective is "
                f"{objective}; prepare the preference file for {objective}"
            )
        return data

    def _batch_stream(self) -> Any:
        t = self.spec.training
        lengths = [e.length for e in self.data.train]
        # The stream yields example indices, so each step finds its reference log-probs.
        return BatchStream(
            list(range(len(lengths))),
            t.batch_size,
            t.seed,
            group_by_length=t.group_by_length,
            lengths=lengths,
        )

    def _plan_step(self, first: int, last: int) -> Any:
        return PreferenceStep(self, range(first, last))

    def setup(self, previous_step: int | None) -> None:
        super().setup(previous_step)
        if self.needs_baseline:
            self.reference = self._compute_reference()
        else:
            self.reference = self._read_reference()

    # reference log-probs -----------------------------------------------------------------
    def _all_logps(self, examples: Sequence[PreferenceExample]) -> torch.Tensor:
        """(n, 2) log-probs of each example's two sequences, eval mode, no gradient."""
        was_training = self.model.training
        self.model.eval()
        rows = []
        try:
            with torch.no_grad():
                for start in range(0, len(examples), self.eval_batch):
                    chunk = examples[start : start + self.eval_batch]
                    seqs = [e.first for e in chunk] + [e.second for e in chunk]
                    logps = sequence_logps(
                        self.model, seqs, self.pad_id, self.device, packing=self.spec.training.packing
                    )
                    rows.append(torch.stack([logps[: len(chunk)], logps[len(chunk) :]], dim=1).cpu())
        finally:
            self.model.train(was_training)
        return torch.cat(rows) if rows else torch.zeros(0, 2)

    def _compute_reference(self) -> dict[str, torch.Tensor]:
        from trainer import checkpoints

        reference = {
            "train": self._all_logps(self.data.train),
            "validation": self._all_logps(self.data.validation),
        }
        if self.world.is_main:
            local = self.work / REFERENCE_DIR
            shutil.rmtree(local, ignore_errors=True)
            local.mkdir(parents=True)
            torch.save(reference, local / REFERENCE_FILE)
            checkpoints.upload_with_manifest(self.storage, REFERENCE_DIR, local, before_manifest=lambda: None)
            shutil.rmtree(local, ignore_errors=True)
        log.info(
            "reference log-probs computed for %d train, %d validation examples",
            *(len(v) for v in reference.values()),
        )
        return reference

    def _read_reference(self) -> dict[str, torch.Tensor]:
        from trainer import checkpoints

        key = f"{REFERENCE_DIR}/{REFERENCE_FILE}"
        local = self.work / REFERENCE_DIR / REFERENCE_FILE
        try:
            manifest = Manifest.model_validate(self.storage.get_json(f"{REFERENCE_DIR}/{layout.MANIFEST}"))
            self.storage.get_file(key, local, expected_sha256=manifest.files[REFERENCE_FILE].sha256)
            reference = checkpoints.load_tensor_file(local, key)
        except Exception as exc:
            raise BrightrunError(
                f"cannot read the reference log-probs {key} that this preference job computed before "
                f"step 0 ({exc}); without them the resumed run would not match. Start the job again "
                "from scratch (delete its checkpoints/)"
            ) from exc
        for split in ("train", "validation"):
            want = len(getattr(self.data, split))
            if not isinstance(reference.get(split), torch.Tensor) or reference[split].shape != (want, 2):
                raise BrightrunError(f"{key}: {split} log-probs do not match the {want} prepared examples")
        return reference

    # evaluation --------------------------------------------------------------------------
    def preference_metrics(self) -> dict[str, float]:
        """Held-out loss, rewards, margin, accuracy (pairs ranked right; for KTO, pairs of a
        thumb up and a thumb down on the same prompt) and the chosen replies' token NLL."""
        val = self.data.validation
        if not val:
            return {}
        logps = self._all_logps(val)
        ref = self.reference["validation"]
        terms = _terms(self.spec, logps[:, 0], logps[:, 1], ref, [e.label for e in val])
        tally = _Tally()
        tally.add(terms, paired=self.spec.training.objective == "dpo")
        out = {"loss": float(terms.losses.mean()), **tally.metrics()}
        if self.spec.training.objective == "kto":
            rewards = self.spec.training.beta * (logps[:, 0] - ref[:, 0])
            by_prompt: dict[tuple[int, ...], list[int]] = {}
            for i, e in enumerate(val):
                prompt = tuple(t for t, lab in zip(*e.first, strict=True) if lab == prepared.IGNORE_INDEX)
                by_prompt.setdefault(prompt, []).append(i)
            right = pairs = 0
            for members in by_prompt.values():
                for a in (i for i in members if val[i].label):
                    for b in (i for i in members if not val[i].label):
                        pairs += 1
                        right += int(rewards[a] > rewards[b])
            if pairs:
                out["reward_accuracy"] = right / pairs
        liked = [i for i, e in enumerate(val) if e.label is not False]
        tokens = sum(sum(1 for t in val[i].first[1] if t != prepared.IGNORE_INDEX) for i in liked)
        out["chosen_nll"] = float(-logps[liked, 0].sum() / max(tokens, 1))
        out["chosen_tokens"] = float(tokens)
        return out

    def _evaluate_loss(self, state: Any) -> float:
        if not self.data.validation or not self.world.is_main:
            return float("nan")
        metrics = self.preference_metrics()
        # Rewards on a record with eval_loss (and no loss) are the held-out ones.
        fields = {k: v for k, v in metrics.items() if k in MetricRecord.model_fields and k != "loss"}
        self.reporter.metric(
            MetricRecord(
                step=state.step,
                epoch=state.epoch,
                eval_loss=metrics["loss"],
                attempt=self.reporter.attempt,
                **fields,
            )
        )
        log.info("held-out preference loss at step %d: %.4f (%s)", state.step, metrics["loss"], metrics)
        return metrics["loss"]

    def _final_report(self) -> EvalReport:
        from trainer.evaluate import perplexity, sample_replies

        spec = self.spec
        metrics = self.preference_metrics()
        samples = sample_replies(
            self.model,
            self.tokenizer,
            self.data.prompts[: spec.evaluation.sample_generations],
            spec.evaluation.max_new_tokens,
            spec.training.max_seq_length,
            self.device,
        )
        loss = metrics.get("loss", float("nan"))
        return EvalReport(
            eval_loss=loss,
            perplexity=perplexity(metrics.get("chosen_nll", float("nan"))),
            eval_tokens=int(metrics.get("chosen_tokens", 0)),
            samples=samples,
            preference=metrics or None,
        )
