"""Building the model: tokenizer, base model (4-bit NF4 or plain), LoRA wrapping, adapters.

The one home of model building, shared by training (trainer/run.py), inference
(trainer/inference.py) and the GPU check (benchmarks/gpu_check.py): an adapter only
reproduces its training numbers on a base loaded exactly as it was trained on (the same
revision, 4-bit settings and CPU weight layout), so both sides build it here.

torch is imported inside the functions: `python -m trainer` must start, and report a
missing train extra through its failure marker, before anything needs it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brightrun.base_model import BaseModelSpec
from brightrun.errors import InputError
from brightrun.spec import JobSpec, QuantizationSettings

if TYPE_CHECKING:
    import torch

log = logging.getLogger("trainer")


class BaseModelMismatch(InputError):
    """The adapter's weights do not fit the base model it is being loaded onto."""


def device() -> torch.device:
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_tokenizer(path: str | Path, revision: str | None = None) -> Any:
    """The tokenizer, padding with end-of-text where the model defines no pad token."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path), revision=revision)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def four_bit_load_kwargs(q: QuantizationSettings, device: Any) -> dict[str, Any]:
    """`from_pretrained` arguments of a 4-bit NF4 base, the same for training and inference
    (an adapter only reproduces its training numbers on the base quantized the same way)."""
    import torch
    from transformers import BitsAndBytesConfig

    compute_dtype = getattr(torch, q.compute_dtype)
    return {
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=q.quant_type,
            bnb_4bit_use_double_quant=q.double_quant,
            bnb_4bit_compute_dtype=compute_dtype,
        ),
        "dtype": compute_dtype,
        "device_map": {"": device.index or 0} if device.type == "cuda" else {"": "cpu"},
    }


def attention_implementation(device: Any) -> str:
    """The attention kernel, one that respects packed boundaries (position ids restarting at
    0, no attention mask): flash-attention's varlen kernel where it is installed on a GPU,
    else PyTorch SDPA with the block-diagonal causal mask transformers builds from the
    position ids."""
    import importlib.util

    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def keep_cpu_weight_layout(model: Any) -> None:
    """Stop bitsandbytes from repacking 4-bit weights on the CPU during evaluation.

    On a CPU with AVX512-BF16, `Linear4bit.forward` in eval mode without grad converts its
    weight, once and for good, to a CPU-packed layout whose matmul kernels round
    differently. A run that evaluated before step N (the baseline, or an `every_steps`
    evaluation) then trains on other numerics than one resumed at step N, and the adapters
    drift apart (measured: 2e-2 on 1e-1 weights after 7 steps). One layout for the whole run.
    """
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def pin_adapter_dtype(model: Any, dtype: Any) -> None:
    for param in model.parameters():
        if param.requires_grad and param.dtype != dtype:
            param.data = param.data.to(dtype)


# training ------------------------------------------------------------------------------------


def build_training_model(spec: JobSpec, device: Any) -> Any:
    """Base model (4-bit NF4 or plain), LoRA on top, trainable weights pinned to adapter_dtype.

    Why the pin: TRL's SFTTrainer casts a quantized model's LoRA weights to bf16 when it
    starts, but `Trainer._load_from_checkpoint` reloads them with PEFT's `load_adapter`,
    whose default `autocast_adapter_dtype=True` makes them fp32. A resumed run then takes
    its optimizer steps in fp32 where the uninterrupted run rounded every update to bf16,
    and the two drift apart. Here the dtype is set once, explicitly, after wrapping and
    again after loading a checkpoint (checkpoints.load_local).
    """
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, set_seed

    q = spec.quantization
    compute_dtype = getattr(torch, q.compute_dtype)
    kwargs: dict[str, Any] = {
        "revision": spec.base_model_revision,
        "attn_implementation": attention_implementation(device),
    }
    if q.load_in_4bit:
        kwargs.update(four_bit_load_kwargs(q, device))
    else:
        # Plain LoRA: half precision on a GPU, fp32 on the CPU (bf16 matmuls are slow there).
        kwargs["dtype"] = compute_dtype if device.type == "cuda" else torch.float32
    set_seed(spec.training.seed)
    model = AutoModelForCausalLM.from_pretrained(spec.base_model, **kwargs)
    if not q.load_in_4bit:
        model.to(device)
    model.config.use_cache = False
    gc_kwargs = {"use_reentrant": False}
    if q.load_in_4bit:
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=spec.training.gradient_checkpointing,
            gradient_checkpointing_kwargs=gc_kwargs,
        )
    elif spec.training.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gc_kwargs)
        model.enable_input_require_grads()
    lora = spec.lora
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        bias=lora.bias,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, config)
    if q.load_in_4bit:
        keep_cpu_weight_layout(model)
    pin_adapter_dtype(model, getattr(torch, q.adapter_dtype))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("model %s loaded on %s: %d trainable parameters", spec.base_model, device, trainable)
    return model


# inference ---------------------------------------------------------------------------------


def load_base(base: BaseModelSpec, dev: torch.device | None = None, dtype: str | None = None) -> Any:
    """The base model, loaded as the trainer loads it (4-bit NF4 or plain), in eval mode.

    `dtype` (plain loading only): `auto` keeps the checkpoint's own dtype; default fp32 on the
    CPU (bf16 matmuls are slow there) and the compute dtype on a GPU, as the trainer does.
    """
    import torch
    from transformers import AutoModelForCausalLM

    dev = dev or device()
    q = base.quantization
    compute_dtype = getattr(torch, q.compute_dtype)
    kwargs: dict[str, Any] = {"revision": base.revision}
    if q.load_in_4bit:
        kwargs.update(four_bit_load_kwargs(q, dev))
    elif dtype == "auto":
        kwargs["dtype"] = "auto"
    elif dtype is not None:
        kwargs["dtype"] = getattr(torch, dtype)
    else:
        kwargs["dtype"] = compute_dtype if dev.type == "cuda" else torch.float32
    try:
        model = AutoModelForCausalLM.from_pretrained(base.name, **kwargs)
    except OSError as exc:
        raise InputError(f"cannot load the base model {base.name!r}: {exc}") from exc
    if not q.load_in_4bit:
        model.to(dev)
    else:
        keep_cpu_weight_layout(model)  # the trainer's numerics (see its docstring)
    model.eval()
    return model


def attach_adapter(model: Any, adapter_dir: Path, adapter_name: str = "default") -> Any:
    """`PeftModel.from_pretrained` (or one more adapter on a PeftModel); a shape mismatch
    with the base model becomes a clear `BaseModelMismatch`."""
    from peft import PeftModel

    try:
        if isinstance(model, PeftModel):
            model.load_adapter(str(adapter_dir), adapter_name=adapter_name, is_trainable=False)
            return model
        peft_model = PeftModel.from_pretrained(
            model, str(adapter_dir), adapter_name=adapter_name, is_trainable=False
        )
    except (RuntimeError, ValueError, KeyError) as exc:
        text = str(exc)
        if "size mismatch" in text or "shape" in text or "Target modules" in text or "not found" in text:
            raise BaseModelMismatch(
                f"the adapter in {adapter_dir} does not fit the base model "
                f"{getattr(model.config, '_name_or_path', '?')}: {text.splitlines()[0][:300]}"
            ) from exc
        raise
    peft_model.eval()
    return peft_model
