"""The adapter's model card (README.md beside the weights): base, data, hyperparameters, scores."""

from __future__ import annotations

from typing import Any

from brightrun import prepared
from brightrun.spec import JobSpec


def model_card(spec: JobSpec, meta: prepared.PreparedMeta, report: Any, state: Any) -> str:
    t, lora, q = spec.training, spec.lora, spec.quantization
    samples = "\n".join(f"- **prompt:** {s['prompt']}\n  **reply:** {s['generated']}" for s in report.samples)
    revision = f" (revision {spec.base_model_revision})" if spec.base_model_revision else ""
    if q.load_in_4bit:
        quant = f"4-bit {q.quant_type}{' double-quant' if q.double_quant else ''}, compute {q.compute_dtype}"
    else:
        quant = "none (plain LoRA)"
    warmup = (
        f"warmup ratio {t.warmup_ratio}" if t.warmup_ratio is not None else f"{t.warmup_steps} warmup steps"
    )
    init = spec.init_adapter
    continued = (init.artifact_id or init.manifest_sha256) if init else None
    lines = [
        "---",
        f"base_model: {spec.base_model}",
        "library_name: peft",
        "tags: [lora, brightrun]",
        "---",
        "",
        f"# {spec.job_name or spec.job_id}",
        "",
        f"LoRA adapter for `{spec.base_model}`{revision}, trained by BrightRun job `{spec.job_id}`.",
        "",
        "## Data",
        f"- source: `{meta.source_name}`, sha256 `{spec.dataset_sha256 or meta.source_sha256}`",
        f"- {meta.train_examples} training / {meta.validation_examples} validation examples, "
        f"tokenizer `{meta.tokenizer}`",
        "",
        *([f"- continued from adapter `{continued}`", ""] if continued else []),
        "## Hyperparameters",
        f"- LoRA r={lora.r}, alpha={lora.alpha}, dropout={lora.dropout}, bias={lora.bias}, "
        f"targets {', '.join(lora.target_modules)}",
        f"- quantization: {quant}; adapter dtype {q.adapter_dtype}",
        f"- learning rate {t.learning_rate} ({t.lr_scheduler}, {warmup}), optimizer {t.optimizer}",
        f"- {state.step} steps ({state.epoch:.2f} epochs), batch {t.batch_size} x "
        f"{t.gradient_accumulation_steps} accumulation, max length {t.max_seq_length}, seed {t.seed}",
        f"- preset: {spec.preset.value if spec.preset else 'none'}",
        "",
        "## Evaluation",
        f"- validation loss {report.eval_loss:.4f}, perplexity {report.perplexity:.2f} "
        f"over {report.eval_tokens} tokens",
        "",
        samples,
        "",
    ]
    return "\n".join(lines)
