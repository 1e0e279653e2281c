"""Our DPO and KTO losses against TRL's own `_compute_loss` on the same log-probabilities.

TRL computes its losses inside the trainers' `_compute_loss`; it is run here unbound, on a
stand-in for the trainer's attributes and a stand-in model that returns chosen per-token
log-probs, so the comparison is with TRL's code, not with a transcription of it.
"""

from __future__ import annotations

import types
from collections import defaultdict
from typing import Any

import pytest

torch = pytest.importorskip("torch")
trl = pytest.importorskip("trl")

from trl.trainer.dpo_trainer import DPOTrainer  # noqa: E402
from trl.trainer.kto_trainer import KTOTrainer  # noqa: E402

from trainer.preference import completion_sequence, dpo_terms, kto_kl, kto_terms  # noqa: E402

EXACT = 1e-6


class _Accelerator:
    device = torch.device("cpu")

    def gather_for_metrics(self, x: Any) -> Any:
        return x

    gather = gather_for_metrics


class _ScriptedModel:
    """Returns the per-token log-probs scripted for each input_ids tensor (by identity)."""

    training = True

    def __init__(self) -> None:
        self.outputs: dict[int, torch.Tensor] = {}

    def script(self, input_ids: torch.Tensor, log_probs: torch.Tensor) -> None:
        self.outputs[id(input_ids)] = log_probs

    def __call__(self, input_ids: torch.Tensor, **kwargs: Any) -> Any:
        lp = self.outputs[id(input_ids)]
        zeros = torch.zeros_like(lp)
        return types.SimpleNamespace(
            log_probs=lp, entropy=zeros, mean_logits=zeros, is_top1=torch.zeros_like(lp, dtype=torch.bool)
        )


def _per_token(sums: torch.Tensor, width: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs (batch, width - 1) summing to `sums`, and a completion mask."""
    n = sums.shape[0]
    mask = torch.zeros(n, width, dtype=torch.long)
    mask[:, width // 2 :] = 1
    noise = -torch.rand(n, width - 1, generator=gen, dtype=torch.float64)
    noise = noise * mask[:, 1:]
    noise = noise + (sums - noise.sum(-1)).unsqueeze(-1) * mask[:, 1:] / mask[:, 1:].sum(-1, keepdim=True)
    return noise, mask


def _trl_self(**attrs: Any) -> types.SimpleNamespace:
    base = {
        "model": _ScriptedModel(),
        "accelerator": _Accelerator(),
        "aux_loss_enabled": False,
        "precompute_ref_logps": True,
        "_metrics": defaultdict(lambda: defaultdict(list)),
        "_total_train_tokens": 0,
        "_tp_size": 1,
    }
    return types.SimpleNamespace(**{**base, **attrs})


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_loss_equals_trls(beta: float) -> None:
    gen = torch.Generator().manual_seed(1)
    pairs, width = 6, 12
    chosen, rejected = (
        -20 * torch.rand(pairs, generator=gen, dtype=torch.float64),
        -20 * torch.rand(pairs, generator=gen, dtype=torch.float64),
    )
    ref_chosen = chosen + torch.randn(pairs, generator=gen, dtype=torch.float64)
    ref_rejected = rejected + torch.randn(pairs, generator=gen, dtype=torch.float64)
    per_token, mask = _per_token(torch.cat([chosen, rejected]), width, gen)
    inputs = {
        "input_ids": torch.ones(2 * pairs, width, dtype=torch.long),
        "attention_mask": torch.ones(2 * pairs, width, dtype=torch.long),
        "completion_mask": mask,
        "ref_chosen_logps": ref_chosen,
        "ref_rejected_logps": ref_rejected,
    }
    fake = _trl_self(
        beta=beta,
        ld_alpha=None,
        f_divergence_type="reverse_kl",
        loss_types=["sigmoid"],
        loss_weights=[1.0],
        use_weighting=False,
    )
    fake.model.script(inputs["input_ids"], per_token)
    theirs = DPOTrainer._compute_loss(fake, fake.model, inputs, return_outputs=False)

    ours = dpo_terms(chosen, rejected, ref_chosen, ref_rejected, beta)
    assert abs(float(ours.losses.mean()) - float(theirs)) <= EXACT
    metrics = fake._metrics["train"]
    assert abs(float(ours.chosen_rewards.mean()) - metrics["rewards/chosen"][0]) <= EXACT
    assert abs(float(ours.rejected_rewards.mean()) - metrics["rewards/rejected"][0]) <= EXACT
    margins = ours.chosen_rewards - ours.rejected_rewards
    assert abs(float(margins.mean()) - metrics["rewards/margins"][0]) <= EXACT
    assert float(theirs) > 0  # not trivially zero


@pytest.mark.parametrize(("beta", "desirable", "undesirable"), [(0.1, 1.0, 1.0), (0.3, 1.33, 0.7)])
def test_kto_loss_equals_trls(beta: float, desirable: float, undesirable: float) -> None:
    gen = torch.Generator().manual_seed(2)
    n, width = 7, 10
    logps = -15 * torch.rand(n, generator=gen, dtype=torch.float64)
    ref = logps + torch.randn(n, generator=gen, dtype=torch.float64)
    # KL logps above the reference on average, so the clamp at 0 does not hide the term.
    kl_logps = -15 * torch.rand(n, generator=gen, dtype=torch.float64)
    ref_kl = kl_logps - 0.5 + 0.2 * torch.randn(n, generator=gen, dtype=torch.float64)
    labels = torch.tensor([True, False, True, True, False, False, True])
    per_token, mask = _per_token(logps, width, gen)
    kl_per_token, kl_mask = _per_token(kl_logps, width, gen)
    inputs = {
        "input_ids": torch.ones(n, width, dtype=torch.long),
        "attention_mask": torch.ones(n, width, dtype=torch.long),
        "completion_mask": mask,
        "KL_input_ids": torch.ones(n, width, dtype=torch.long),
        "KL_attention_mask": torch.ones(n, width, dtype=torch.long),
        "KL_completion_mask": kl_mask,
        "label": labels,
        "ref_logps": ref,
        "ref_KL_logps": ref_kl,
    }
    fake = _trl_self(
        beta=beta,
        loss_type="kto",
        calculate_KL=True,
        desirable_weight=desirable,
        undesirable_weight=undesirable,
    )
    fake._compute_kl_logps = types.MethodType(KTOTrainer._compute_kl_logps, fake)
    fake.model.script(inputs["input_ids"], per_token)
    fake.model.script(inputs["KL_input_ids"], kl_per_token)
    theirs = KTOTrainer._compute_loss(fake, fake.model, inputs, return_outputs=False)

    kl = kto_kl(kl_logps, ref_kl)
    ours = kto_terms(logps, ref, labels, kl, beta, desirable, undesirable)
    assert float(kl) > 0
    assert abs(float(ours.losses.mean()) - float(theirs)) <= EXACT
    metrics = fake._metrics["train"]
    assert abs(float(kl) - metrics["kl"][0]) <= EXACT
    assert abs(float(ours.chosen_rewards.mean()) - metrics["rewards/chosen"][0]) <= EXACT
    assert abs(float(ours.rejected_rewards.mean()) - metrics["rewards/rejected"][0]) <= EXACT


def test_kto_kl_is_clamped_at_zero() -> None:
    assert float(kto_kl(torch.tensor([-3.0, -4.0]), torch.tensor([-1.0, -1.0]))) == 0.0


def test_completion_sequence_scores_only_the_completion_and_cuts_from_the_end() -> None:
    ids, labels = completion_sequence([1, 2, 3], [4, 5, 6], max_len=5)
    assert ids == [1, 2, 3, 4, 5]
    assert labels == [-100, -100, -100, 4, 5]


def test_packed_log_probs_equal_padded_ones() -> None:
    """Packing (one row, positions restarting) scores each sequence as padding does."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from trainer.preference import sequence_logps

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    config._attn_implementation = "sdpa"
    model = LlamaForCausalLM(config).eval()
    seqs = [
        completion_sequence([1, 5, 7, 9], [11, 12, 13], 64),
        completion_sequence([1, 5], [20, 21, 22, 23, 24], 64),
        completion_sequence([1, 8, 8, 8, 8, 8], [30], 64),
    ]
    with torch.no_grad():
        packed = sequence_logps(model, seqs, 0, torch.device("cpu"), packing=True)
        padded = sequence_logps(model, seqs, 0, torch.device("cpu"), packing=False)
        alone = torch.cat([sequence_logps(model, [s], 0, torch.device("cpu"), packing=False) for s in seqs])
    assert torch.allclose(packed, alone, atol=1e-5) and torch.allclose(padded, alone, atol=1e-5)
    assert (packed < 0).all()
