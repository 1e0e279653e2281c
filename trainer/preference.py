"""DPO and KTO: TRL's loss definitions on per-sequence log-probabilities, and those log-probs.

TRL 1.16 computes its losses inside `DPOTrainer._compute_loss` / `KTOTrainer._compute_loss`,
interleaved with the model calls; there is no loss function to import without building a
Trainer. So the formulas are reproduced here term for term (TRL's `loss_type="sigmoid"`,
`f_divergence_type="reverse_kl"`, `ld_alpha=None` for DPO; `loss_type="kto"` for KTO), and
tests/unit/test_preference_losses.py runs TRL's own `_compute_loss` on the same log-probs.

Log-probs are summed over completion tokens only (labels != -100): the prompt, rendered with
the chat template up to the assistant header, is context and never scored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from brightrun.prepared import IGNORE_INDEX

# (input_ids, labels): a prompt and one completion, labels -100 on the prompt.
TokenSequence = tuple[list[int], list[int]]


@dataclass(frozen=True)
class PreferenceTerms:
    """Per-example losses (already weighted, to be summed) and the implicit rewards
    beta * (log pi - log pi_ref), detached, for the UI's metrics."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    kl: torch.Tensor | None = None


def dpo_terms(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
) -> PreferenceTerms:
    """TRL's sigmoid DPO: -log sigmoid(beta * ((c - c_ref) - (r - r_ref))) per pair; TRL's
    loss is the mean of these over the batch."""
    chosen_logratios = chosen_logps - ref_chosen_logps
    rejected_logratios = rejected_logps - ref_rejected_logps
    losses = -F.logsigmoid(beta * (chosen_logratios - rejected_logratios))
    return PreferenceTerms(losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach())


def kto_kl(kl_logps: torch.Tensor, ref_kl_logps: torch.Tensor) -> torch.Tensor:
    """KTO's reference point: the batch's mean log-ratio on mismatched (prompt, completion)
    pairs, detached and clamped at 0, as TRL estimates it (one data-parallel rank)."""
    return (kl_logps - ref_kl_logps).mean().detach().clamp(min=0)


def kto_terms(
    logps: torch.Tensor,
    ref_logps: torch.Tensor,
    labels: torch.Tensor,
    kl: torch.Tensor,
    beta: float,
    desirable_weight: float,
    undesirable_weight: float,
) -> PreferenceTerms:
    """TRL's KTO (Eqn 7 of the paper): desirable 1 - sigmoid(beta * (ratio - KL)), undesirable
    1 - sigmoid(beta * (KL - ratio)), weighted; TRL's loss is the mean over the batch."""
    labels = labels.to(dtype=torch.bool, device=logps.device)
    logratios = logps - ref_logps
    chosen, rejected = logratios[labels], logratios[~labels]
    chosen_losses = 1 - torch.sigmoid(beta * (chosen - kl))
    rejected_losses = 1 - torch.sigmoid(beta * (kl - rejected))
    losses = torch.cat((desirable_weight * chosen_losses, undesirable_weight * rejected_losses), 0)
    return PreferenceTerms(losses, beta * chosen.detach(), beta * rejected.detach(), kl)


def completion_sequence(prompt: Sequence[int], completion: Sequence[int], max_len: int) -> TokenSequence:
    """Prompt + completion, labels on the completion only, cut at `max_len` from the end."""
    ids = list(prompt) + list(completion)
    labels = [IGNORE_INDEX] * len(prompt) + list(completion)
    return ids[:max_len], labels[:max_len]


def _selected_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[target] in fp32, without materialising the whole log-softmax."""
    logits = logits.float()
    picked = logits.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def sequence_logps(
    model: torch.nn.Module,
    sequences: Sequence[TokenSequence],
    pad_token_id: int,
    device: torch.device,
    *,
    packing: bool,
) -> torch.Tensor:
    """Sum of log p(completion token) per sequence, in one forward pass.

    Packed: every sequence in one row, position ids restarting at 0 (transformers then masks
    attention block-diagonally, as for SFT packing), sums taken per sequence. Padded: one
    row each, right-padded and masked.
    """
    n = len(sequences)
    if packing:
        ids = [t for s, _ in sequences for t in s]
        labels = [t for _, lab in sequences for t in lab]
        positions = [p for s, _ in sequences for p in range(len(s))]
        owner = [i for i, (s, _) in enumerate(sequences) for _ in s]
        starts = set()
        offset = 0
        for s, _ in sequences:
            starts.add(offset)
            offset += len(s)
        # A sequence's first token would be "predicted" from the previous sequence.
        labels = [IGNORE_INDEX if j in starts else lab for j, lab in enumerate(labels)]
        input_ids = torch.tensor([ids], dtype=torch.long, device=device)
        logits = model(
            input_ids=input_ids,
            position_ids=torch.tensor([positions], dtype=torch.long, device=device),
            use_cache=False,
        ).logits
        targets = torch.tensor(labels[1:], dtype=torch.long, device=device)
        token_logps = _selected_logps(logits[0, :-1], targets)
        mask = targets != IGNORE_INDEX
        index = torch.tensor(owner[1:], dtype=torch.long, device=device)[mask]
        return torch.zeros(n, dtype=token_logps.dtype, device=device).index_add(0, index, token_logps[mask])
    width = max(len(s) for s, _ in sequences)
    rows = [s + [pad_token_id] * (width - len(s)) for s, _ in sequences]
    label_rows = [lab + [IGNORE_INDEX] * (width - len(lab)) for _, lab in sequences]
    attention = [[1] * len(s) + [0] * (width - len(s)) for s, _ in sequences]
    logits = model(
        input_ids=torch.tensor(rows, dtype=torch.long, device=device),
        attention_mask=torch.tensor(attention, dtype=torch.long, device=device),
        use_cache=False,
    ).logits
    targets = torch.tensor(label_rows, dtype=torch.long, device=device)[:, 1:]
    token_logps = _selected_logps(logits[:, :-1], targets)
    return torch.where(targets != IGNORE_INDEX, token_logps, 0.0).sum(-1)
