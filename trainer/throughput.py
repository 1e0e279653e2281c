"""Model FLOPs utilisation: the model's FLOPs per token and the GPU's dense bf16 peak."""

from __future__ import annotations

from typing import Any

# Dense bf16 tensor-core peak, for MFU (FLOPs per second). Unknown GPUs report no MFU.
# Matched in order against the CUDA device name: the specific names first.
PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L40": 181e12,
    "A40": 150e12,
    "A6000": 155e12,
    "4090": 165e12,
    "3090": 71e12,
}


def model_flops_per_token(model: Any) -> float:
    """6 x parameters (forward + backward), counting 4-bit packed weights at their real size."""
    total = 0
    for param in model.parameters():
        total += param.numel() * (2 if hasattr(param, "quant_state") else 1)
    return 6.0 * total


def peak_flops() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in name), None)
