"""One optimizer step's work, as the objective defines it: its micro-batches, the loss of
each (already divided by the step's normaliser) and the step's token counts and metrics.

`TrainingRun._train_step` owns everything around it (gradient accumulation across ranks,
clipping, the optimizer, reporting); SFT's step is here, DPO's and KTO's in
trainer/preference_run.py.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from trainer.data import Batch, make_batch


@dataclass
class SftStep:
    batches: dict[int, Batch]
    tokens: int
    trained_tokens: int
    padding_tokens: int

    @classmethod
    def build(cls, stream: Any, micro_batches: Iterable[int], pad_id: int, packing: bool) -> SftStep:
        batches = {m: make_batch(stream.micro_batch(m), pad_id, packing=packing) for m in micro_batches}
        return cls(
            batches,
            tokens=sum(b.tokens for b in batches.values()),
            trained_tokens=sum(b.trained_tokens for b in batches.values()),
            padding_tokens=sum(b.padding_tokens for b in batches.values()),
        )

    def loss(self, model: torch.nn.Module, m: int, device: torch.device) -> torch.Tensor:
        from trainer.evaluate import summed_loss, to_tensors

        # Normalised by the whole step's trained tokens: every token weighs the same,
        # whatever micro-batch (or rank) it falls in.
        return summed_loss(model, to_tensors(self.batches[m], device)) / max(self.trained_tokens, 1)

    def metrics(self) -> dict[str, float]:
        return {}
