"""Validation loss, perplexity and sample replies with the adapter applied."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from brightrun.prepared import IGNORE_INDEX, HeldOutPrompt
from brightrun.protocol import EvalReport
from trainer.data import Batch, Example, collate


def to_tensors(batch: Batch, device: torch.device) -> dict[str, torch.Tensor]:
    tensors = {
        "input_ids": torch.tensor(batch.input_ids, dtype=torch.long, device=device),
        "labels": torch.tensor(batch.labels, dtype=torch.long, device=device),
    }
    if batch.attention_mask is not None:
        tensors["attention_mask"] = torch.tensor(batch.attention_mask, dtype=torch.long, device=device)
    if batch.position_ids is not None:
        tensors["position_ids"] = torch.tensor(batch.position_ids, dtype=torch.long, device=device)
    return tensors


def summed_loss(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of next-token cross-entropy over trained positions (labels != -100), in fp32."""
    logits = model(
        input_ids=tensors["input_ids"],
        attention_mask=tensors.get("attention_mask"),
        position_ids=tensors.get("position_ids"),
        use_cache=False,  # a KV cache would turn off packed-sequence masking
    ).logits
    shift_logits = logits[:, :-1, :].float()
    shift_labels = tensors["labels"][:, 1:]
    return F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)),
        shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )


@torch.no_grad()
def validation_loss(
    model: torch.nn.Module,
    examples: Sequence[Example],
    batch_size: int,
    pad_token_id: int,
    device: torch.device,
) -> tuple[float, int]:
    """(mean loss per trained token, trained tokens) over the validation split."""
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    ordered = sorted(examples, key=lambda e: len(e.input_ids))
    try:
        for start in range(0, len(ordered), batch_size):
            batch = collate(ordered[start : start + batch_size], pad_token_id)
            total += float(summed_loss(model, to_tensors(batch, device)))
            tokens += batch.trained_tokens
    finally:
        model.train(was_training)
    return (total / tokens if tokens else float("nan")), tokens


def perplexity(loss: float) -> float:
    """exp(loss), the one definition training and inference report.

    A finite loss is capped at 50 first (exp(50) ~ 5e21: a diverged model reads as huge,
    not as a float overflow). An infinite loss gives inf (the model put no probability on a
    trained token); NaN (no tokens to measure, or a NaN in the model) stays NaN, so an
    absent measurement is never mistaken for a number.
    """
    if math.isnan(loss):
        return float("nan")
    if math.isinf(loss):
        return math.inf if loss > 0 else 0.0
    return math.exp(min(loss, 50.0))


@torch.no_grad()
def sample_replies(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[HeldOutPrompt],
    max_new_tokens: int,
    max_seq_length: int,
    device: torch.device,
) -> list[dict[str, str]]:
    """Greedy replies to held-out prompts (deterministic, so reruns compare)."""
    was_training = model.training
    model.eval()
    samples = []
    try:
        for prompt in prompts:
            text = tokenizer.apply_chat_template(prompt.messages, tokenize=False, add_generation_prompt=True)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            ids = ids[-max(1, max_seq_length - max_new_tokens) :]  # keep the newest context
            input_ids = torch.tensor([ids], dtype=torch.long, device=device)
            output = model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            reply = tokenizer.decode(output[0, input_ids.shape[1] :], skip_special_tokens=True)
            last_user = next((m["content"] for m in reversed(prompt.messages) if m.get("role") == "user"), "")
            samples.append({"prompt": last_user, "reference": prompt.reference, "generated": reply.strip()})
    finally:
        model.train(was_training)
    return samples


def build_report(loss: float, tokens: int, samples: list[dict[str, str]]) -> EvalReport:
    return EvalReport(eval_loss=loss, perplexity=perplexity(loss), eval_tokens=tokens, samples=samples)
