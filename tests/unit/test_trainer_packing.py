"""Packed micro-batches give the same loss as padded ones: no example attends to another."""

from __future__ import annotations

from pathlib import Path

import pytest

from brightrun.prepared import IGNORE_INDEX
from trainer.data import Example, collate, pack


def test_packed_loss_equals_padded_loss(tiny_model: Path) -> None:
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    from trainer.evaluate import summed_loss, to_tensors

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    generator = torch.Generator().manual_seed(0)
    examples = []
    for length in (37, 12, 25):
        ids = torch.randint(10, 500, (length,), generator=generator).tolist()
        labels = [IGNORE_INDEX] * (length // 2) + ids[length // 2 :]
        examples.append(Example(ids, labels))
    packed, padded = pack(examples), collate(examples, pad_token_id=0)
    assert packed.padding_tokens == 0 and padded.padding_tokens > 0
    assert packed.trained_tokens == padded.trained_tokens
    assert packed.position_ids == [list(range(37)) + list(range(12)) + list(range(25))]
    with torch.no_grad():
        a = summed_loss(model, to_tensors(packed, torch.device("cpu")))
        b = summed_loss(model, to_tensors(padded, torch.device("cpu")))
        # Attention across examples would change the second and third examples' losses.
        shuffled = pack([examples[1], examples[0], examples[2]])
        c = summed_loss(model, to_tensors(shuffled, torch.device("cpu")))
    assert float(a) == pytest.approx(float(b), rel=1e-5)
    assert float(c) == pytest.approx(float(b), rel=1e-5)
