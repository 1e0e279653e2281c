"""GPU check: real 4-bit NF4 QLoRA at Llama 3 8B's shapes, through the real trainer.

    .venv/bin/python benchmarks/gpu_check.py            # on a CUDA machine: 8B shapes, < 10 min
    .venv/bin/python benchmarks/gpu_check.py --tiny     # the same code path on the tiny model (CPU: auto)

1. Builds a random-weight model with Llama 3 8B's config locally (no download; bf16,
   saved as safetensors) with the tiny model's tokenizer, and a synthetic prepared
   dataset of full-length examples (the worst case the memory estimate sizes).
2. Runs `python -m trainer` (the production entry point) with the job spec's defaults:
   4-bit NF4 with double quantisation, bf16 compute, paged 8-bit AdamW on CUDA, gradient
   checkpointing, packing (attention kernel: flash-attention varlen where installed, else
   SDPA with the block-diagonal mask from the position ids), batch 4 x 4 x 2048 tokens;
   only the step count is small.
3. Prints tokens/s, model FLOPs utilisation (CUDA), peak memory, checkpoint save + commit
   time; runs the job again SIGKILLed after a committed checkpoint, resumes it, and
   prints the largest adapter difference against the uninterrupted run (bar: 1e-6).
4. Checks in-process that a packed row's logits equal the unpacked ones (no attention
   across packed examples) with the trainer's attention kernel.
5. Prints the memory estimate for 70B at the default sequence length and whether it fits
   80 GB (tasks/cost_model.py), and the measured seconds per step to calibrate the cost
   model (`provisioning.seconds_per_step`, or its utilisation range).

Exit code 0 when every run succeeded, resume is within 1e-6 and packing respects the
boundaries; 1 otherwise. Nothing here is a timed assertion.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from brightrun import layout, prepared  # noqa: E402
from brightrun.storage import LocalStorage, sha256_file  # noqa: E402

SAMPLE = REPO / "examples" / "brightrun-sample.json"
EXACT = 1e-6
LLAMA3_8B_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
}


def build_random_8b(
    out: Path, tokenizer_dir: Path, config_values: dict[str, Any] | None = None, device: str = "cuda"
) -> Path:
    """Llama 3 8B's shapes with random weights, written as a local bf16 checkpoint (built on
    the GPU: seconds, where the CPU takes minutes), with the tiny model's tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    values = config_values or LLAMA3_8B_CONFIG
    config = LlamaConfig(**{k: v for k, v in values.items() if k not in ("architectures", "model_type")})
    config.bos_token_id, config.eos_token_id = 1, 2
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    model.save_pretrained(out, safe_serialization=True)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    for item in tokenizer_dir.iterdir():
        if "token" in item.name or item.name == "chat_template.jinja":
            shutil.copy(item, out / item.name)
    return out


def synthetic_dataset(out: Path, vocab: int, examples: int, seq_len: int, seed: int = 0) -> Path:
    """A prepared dataset (brightrun.prepared format) of full-length examples, the second
    half of each trained."""
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    tokens = trained = 0
    counts = {}
    for name, count in ((prepared.TRAIN, examples), (prepared.VALIDATION, 2)):
        with open(out / name, "w") as f:
            for i in range(count):
                ids = [rng.randrange(10, vocab) for _ in range(seq_len)]
                labels = [-100] * (seq_len // 2) + ids[seq_len // 2 :]
                record = {
                    "input_ids": ids,
                    "labels": labels,
                    "conversation_id": f"{name}-{i}",
                    "pair_ids": [],
                }
                f.write(json.dumps(record) + "\n")
                if name == prepared.TRAIN:
                    tokens += seq_len
                    trained += seq_len - seq_len // 2
        counts[name] = count
    meta = prepared.PreparedMeta(
        tokenizer="synthetic",
        max_seq_length=seq_len,
        source_sha256="0" * 64,
        source_name="gpu_check synthetic",
        min_quality=0,
        val_fraction=0,
        seed=seed,
        train_examples=counts[prepared.TRAIN],
        validation_examples=counts[prepared.VALIDATION],
        train_tokens=tokens,
        trained_tokens=trained,
        files_sha256={n: sha256_file(out / n) for n in (prepared.TRAIN, prepared.VALIDATION)},
    )
    (out / prepared.META).write_text(meta.model_dump_json(indent=2))
    return out


def _job(root: Path, data: Path, job_id: str, spec: dict[str, Any]) -> LocalStorage:
    storage = LocalStorage(root / "jobs" / job_id)
    storage.put_dir("data", data)
    storage.put_json("spec.json", {**spec, "job_id": job_id})
    return storage


def _trainer(storage: LocalStorage, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}
    full.pop("BRIGHTRUN_TRAINER_FAULT", None)
    full.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "trainer", "--spec", storage.uri("spec.json")],
        env=full,
        capture_output=True,
        text=True,
    )


def _records(storage: LocalStorage) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for key in storage.list("metrics/"):
        out.extend(json.loads(line) for line in storage.get_bytes(key).decode().splitlines() if line)
    return out


def _events(storage: LocalStorage, kind: str) -> list[dict[str, Any]]:
    return [e for e in (storage.get_json(k) for k in storage.list("events/")) if e["type"] == kind]


def _adapter_diff(a: LocalStorage, b: LocalStorage) -> float:
    from safetensors.torch import load_file

    x = load_file(str(a.root / layout.ADAPTER_DIR / "adapter_model.safetensors"))
    y = load_file(str(b.root / layout.ADAPTER_DIR / "adapter_model.safetensors"))
    if set(x) != set(y):
        return float("inf")
    return max(float((x[k].double() - y[k].double()).abs().max()) for k in x)


def packed_boundary_check(model_dir: Path, device: Any) -> tuple[float, float, str]:
    """(max |logit difference| packed vs alone, the same with the boundary ignored, kernel):
    the first must be at rounding level, far below the second."""
    import torch
    from transformers import AutoModelForCausalLM

    from trainer.model import attention_implementation

    kernel = attention_implementation(device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation=kernel).to(
        device
    )
    model.eval()
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    a = torch.randint(10, vocab, (1, 48), generator=gen).to(device)
    b = torch.randint(10, vocab, (1, 40), generator=gen).to(device)
    with torch.no_grad():
        # use_cache=False as the trainer calls it: with a KV cache transformers skips packed masking.
        alone = model(input_ids=b, use_cache=False).logits[0].float()
        packed_ids = torch.cat([a, b], dim=1)
        restart = torch.cat([torch.arange(48), torch.arange(40)])[None].to(device)
        packed = model(input_ids=packed_ids, position_ids=restart, use_cache=False).logits[0, 48:].float()
        # The same row under an all-ones mask (positions kept): what crossing the boundary looks like.
        every = torch.ones_like(packed_ids)
        crossed = model(input_ids=packed_ids, position_ids=restart, attention_mask=every, use_cache=False)
        crossed = crossed.logits[0, 48:].float()
    del model
    return float((packed - alone).abs().max()), float((crossed - alone).abs().max()), kernel


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny model (automatic without CUDA)")
    parser.add_argument(
        "--steps", type=int, help="optimizer steps per run (default 4; tiny: 6; killed after steps-1)"
    )
    parser.add_argument("--seq-len", type=int, help="tokens per example (default 2048; tiny: 128)")
    parser.add_argument("--batch-size", type=int, help="examples per micro-batch (default 4; tiny: 2)")
    parser.add_argument("--grad-accum", type=int, help="micro-batches per step (default 4; tiny: 2)")
    parser.add_argument("--work", type=Path, help="work directory (default: a temp dir, removed)")
    args = parser.parse_args()
    import torch

    cuda = torch.cuda.is_available()
    tiny = args.tiny or not cuda
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        return _check(args, work, cuda=cuda, tiny=tiny)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


def _check(args: argparse.Namespace, work: Path, *, cuda: bool, tiny: bool) -> int:
    import torch

    from brightrun.spec import JobSpec
    from brightrun.tiny_model import ensure_tiny_model
    from tasks import cost_model

    seq_len = args.seq_len or (128 if tiny else 2048)
    batch = args.batch_size or (2 if tiny else 4)
    accum = args.grad_accum or (2 if tiny else 4)
    steps = max(args.steps or (6 if tiny else 4), 4)  # 8B: 3 runs of <= 4 steps keep it under 10 min
    device = torch.device("cuda" if cuda else "cpu")
    name = torch.cuda.get_device_name() if cuda else "CPU"
    print(f"device: {name}; torch {torch.__version__}; mode: {'tiny model' if tiny else 'Llama 3 8B shapes'}")

    started = time.perf_counter()
    tiny_dir = ensure_tiny_model(work / "tiny-llama", SAMPLE)
    model_dir = tiny_dir if tiny else build_random_8b(work / "llama3-8b-random", tiny_dir)
    config = json.loads((model_dir / "config.json").read_text())
    shape = cost_model.shape_from_config(config)
    print(f"model: {shape.parameters / 1e6:,.1f}M parameters, built in {time.perf_counter() - started:.0f} s")
    data = synthetic_dataset(work / "data", min(config["vocab_size"], 2000), batch * accum * steps, seq_len)
    spec: dict[str, Any] = {
        "base_model": str(model_dir),
        "heartbeat_seconds": 2.0,
        "training": {
            "max_steps": steps,
            "batch_size": batch,
            "gradient_accumulation_steps": accum,
            "max_seq_length": seq_len,
            "warmup_steps": 1,
        },
        "checkpoint": {"every_steps": steps // 2, "keep_last": 2},
        "evaluation": {"sample_generations": 0},
    }
    defaults = JobSpec(job_id="x", **spec)
    t, q = defaults.training, defaults.quantization
    optimizer = "paged_adamw_8bit" if cuda else "adamw_torch"
    print(
        f"settings: 4-bit {q.quant_type} double-quant {q.double_quant}, compute {q.compute_dtype}, "
        f"optimizer {t.optimizer} ({optimizer}), gradient checkpointing {t.gradient_checkpointing}, "
        f"packing {t.packing}; {steps} steps of {batch} x {accum} x {seq_len} tokens"
    )

    ok = True
    full = _job(work, data, "full", spec)
    begin = time.perf_counter()
    proc = _trainer(full)
    wall = time.perf_counter() - begin
    if proc.returncode != 0:
        print(f"uninterrupted run FAILED (exit {proc.returncode}):\n{proc.stderr[-6000:]}")
        return 1
    result = full.get_json(layout.RESULT)
    records = [r for r in _records(full) if r.get("loss") is not None]
    later = [r for r in records if r["step"] > 1] or records  # step 1 includes warm-up kernels
    tps = statistics.median(r["tokens_per_s"] for r in later if r.get("tokens_per_s"))
    print(f"run: {wall:.0f} s wall (process), {result['train_seconds']:.1f} s in training steps")
    print(
        f"tokens/s: {tps:,.0f} (median over steps 2..{steps}); "
        f"step time {batch * accum * seq_len / tps:.2f} s"
    )
    mfus = [r["mfu"] for r in later if r.get("mfu")]
    print(
        f"model FLOPs utilisation: {statistics.median(mfus):.1%}"
        if mfus
        else "model FLOPs utilisation: n/a (CPU)"
    )
    peaks = [r["peak_memory_mb"] for r in records if r.get("peak_memory_mb")]
    predicted = cost_model.memory_estimate(shape, defaults)
    if peaks:
        print(
            f"peak GPU memory: {max(peaks) / 1024:.1f} GiB (cost model predicts {predicted.total_gb:.1f} GB)"
        )
    else:
        rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(f"peak memory: {rss:,.0f} MiB RSS of the trainer process (CPU)")
    commits = [e["payload"] for e in _events(full, "checkpoint_committed")]
    if commits:
        seconds = [c["seconds"] for c in commits]
        print(
            f"checkpoint save + commit: {len(seconds)} x {statistics.mean(seconds):.2f} s "
            f"({commits[-1]['bytes'] / 2**20:.1f} MiB each)"
        )

    killed = _job(work, data, "killed", spec)
    kill_at = steps - 1
    proc = _trainer(killed, {"BRIGHTRUN_TRAINER_FAULT": f"kill_after_step:{kill_at}"})
    latest = killed.get_bytes(layout.LATEST).decode().strip() if killed.exists(layout.LATEST) else "none"
    proc = _trainer(killed)
    if proc.returncode != 0:
        print(f"resumed run FAILED (exit {proc.returncode}):\n{proc.stderr[-6000:]}")
        return 1
    resumed = _events(killed, "resumed")
    diff = _adapter_diff(full, killed)
    from_step = resumed[0]["payload"]["from_step"] if resumed else "?"
    exact = diff <= EXACT
    ok &= exact and bool(resumed)
    print(
        f"exact resume: {'yes' if exact else 'NO'} (killed after step {kill_at}, committed {latest}, "
        f"resumed from {from_step}; max |adapter difference| {diff:.2e}, bar {EXACT:g})"
    )

    packed, crossed, kernel = packed_boundary_check(tiny_dir, device)
    respected = packed < max(1e-3, crossed / 100)
    ok &= respected
    print(
        f"packed boundaries respected ({kernel}): {'yes' if respected else 'NO'} (max |logit difference| "
        f"packed vs alone {packed:.2e}; with the boundary ignored {crossed:.2e})"
    )

    seventy = JobSpec(job_id="x", base_model="meta-llama/Meta-Llama-3-70B-Instruct")
    memory = cost_model.memory_estimate(cost_model.LLAMA3_70B, seventy)
    h100 = cost_model.GPUS["NVIDIA H100 80GB HBM3"]
    problem = cost_model.fit_problem(cost_model.LLAMA3_70B, seventy, h100)
    print(f"70B at the default sequence length ({seventy.training.max_seq_length}): {memory.describe()}")
    print(f"70B fits 80 GB: {'yes' if problem is None else 'no: ' + problem}")
    if cuda and not tiny:
        gpu = cost_model.gpu_type(name)
        gpu_id = json.dumps(gpu.id if gpu else name)
        step_s = batch * accum * seq_len / tps
        print(
            f"calibration: provisioning.seconds_per_step {{{gpu_id}: {step_s:.2f}}} "
            "for 8B at these settings; MFU above replaces tasks/cost_model.DEFAULT_UTILISATION's assumption"
        )
    print(f"result: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
