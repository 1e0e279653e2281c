"""Which base model an adapter runs on, and how it is loaded.

Shared ground: the adapter room (`tasks/adapters/`) builds one from the job's spec without
torch, and the trainer's inference side (`trainer/inference.py`) loads the model from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from brightrun.spec import QuantizationSettings


@dataclass(frozen=True)
class BaseModelSpec:
    """Which base model an adapter runs on, and how it is loaded (as the job trained it)."""

    name: str  # hub id or local path
    revision: str | None = None
    quantization: QuantizationSettings = field(
        default_factory=lambda: QuantizationSettings(load_in_4bit=False)
    )

    def full_precision(self) -> BaseModelSpec:
        # Merging needs the plain weights: a 4-bit base would round the LoRA update away.
        return BaseModelSpec(self.name, self.revision, QuantizationSettings(load_in_4bit=False))
