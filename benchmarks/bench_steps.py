"""Steps that mean what the recipe means (issue 25): our packed trainer against the per-pair
recipe, one epoch at equal settings, on the tiny model.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_steps.py [--epochs 1] [--lr 5e-3]
        [--max-seq-length 512] [--seeds 7 8 9] [--dataset examples/brightrun-sample.json] [--trl]

`--trl` adds TRL's own SFTTrainer on the same per-pair rows (the seed's recipe itself), scored
with our validation loss; on a shared CPU give it OMP_NUM_THREADS=1 or it crawls.

The per-pair recipe is the seed's: one row per (context, reply) pair, padded, no packing,
batch 4 x accumulation 4 (TRL's SFTTrainer's meaning of a step). It is run by our own
trainer on a prepared set rewritten to one row per target (`trainer.data.one_row_per_target`),
so the two differ only in how the targets are laid out, not in the loop, the optimizer or the
LoRA. Ours is the prepared set as the dataset stage writes it (multi-turn merged sequences),
packed, same batch 4 x 4, which now means 16 targets a step too. Both are scored on the same
held-out split. Printed: optimizer steps, held-out loss before/after, tokens processed
(padding included), train seconds; and the steps the old rule (a row per sequence) ran.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from brightrun import layout, prepared  # noqa: E402
from brightrun.storage import LocalStorage  # noqa: E402
from tests.fixtures.training import (  # noqa: E402
    create_job,
    job_storage,
    metric_records,
    per_pair_set,
    run_trainer,
)

SAMPLE = REPO / "examples" / "brightrun-sample.json"


def run(
    work: Path, data: Path, job_id: str, model: str, args: argparse.Namespace, packing: bool, seed: int
) -> dict[str, Any]:
    spec = {
        "job_id": job_id,
        "base_model": model,
        "quantization": {"load_in_4bit": False},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "v_proj", "o_proj"]},
        "training": {
            "epochs": args.epochs,
            "learning_rate": args.lr,
            "warmup_steps": 1,
            "batch_size": 4,
            "gradient_accumulation_steps": 4,
            "max_seq_length": args.max_seq_length,
            "packing": packing,
            "seed": seed,
        },
        "checkpoint": {"every_steps": 10_000, "every_seconds": 1e9},
        "evaluation": {"sample_generations": 0},
    }
    spec_uri = create_job(work / "store", data, spec)
    started = time.perf_counter()
    proc = run_trainer(spec_uri, timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"{job_id} failed:\n{proc.stderr[-4000:]}")
    storage: LocalStorage = job_storage(spec_uri)
    result = storage.get_json(layout.RESULT)
    records = metric_records(storage)
    last = max((r for r in records if r.get("loss") is not None), key=lambda r: r["step"])
    evals = sorted((r for r in records if r.get("eval_loss") is not None), key=lambda r: r["step"])
    return {
        "steps": result["steps"],
        "eval_before": evals[0]["eval_loss"],
        "eval_after": result["eval_loss"],
        "tokens": last["tokens_processed"] + last["padding_tokens"],
        "padding": last["padding_tokens"],
        "seconds": result["train_seconds"],
        "wall": time.perf_counter() - started,
    }


def run_trl(data: Path, model: str, args: argparse.Namespace, seed: int, out: Path) -> dict[str, Any]:
    """The seed's own recipe: TRL's SFTTrainer on the per-pair rows (pre-tokenized, the
    reply's tokens as `assistant_masks`), no packing, 4 x 4; scored with our validation loss."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from trainer.data import load_examples
    from trainer.evaluate import validation_loss

    rows = [
        {
            "input_ids": e.input_ids,
            "assistant_masks": [int(label != prepared.IGNORE_INDEX) for label in e.labels],
        }
        for e in load_examples(data / prepared.TRAIN, args.max_seq_length)
    ]
    tokenizer = AutoTokenizer.from_pretrained(model)
    base = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    config = SFTConfig(
        output_dir=str(out),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=4,
        num_train_epochs=args.epochs,
        learning_rate=args.lr,
        warmup_steps=1,
        lr_scheduler_type="cosine",
        weight_decay=0.0,
        max_grad_norm=1.0,
        max_length=args.max_seq_length,
        packing=False,
        seed=seed,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        optim="adamw_torch",
        dataloader_num_workers=0,
        gradient_checkpointing=False,  # only slower on the tiny model; the loss is the same
    )
    lora = LoraConfig(
        r=8,
        lora_alpha=16,
        lora_dropout=0.0,
        target_modules=["q_proj", "v_proj", "o_proj"],
        task_type="CAUSAL_LM",
    )
    validation = load_examples(data / prepared.VALIDATION, args.max_seq_length)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    trainer = SFTTrainer(
        model=base,
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=lora,
    )
    before, _ = validation_loss(trainer.model, validation, 4, pad, torch.device("cpu"))
    started = time.perf_counter()
    state = trainer.train()
    seconds = time.perf_counter() - started
    after, _ = validation_loss(trainer.model, validation, 4, pad, torch.device("cpu"))
    tokens = sum(len(r["input_ids"]) for r in rows)
    return {
        "steps": state.global_step,
        "eval_before": before,
        "eval_after": after,
        "tokens": tokens,
        "padding": -1,  # TRL pads each batch to its longest row; not counted (tokens are real ones)
        "seconds": seconds,
        "wall": seconds,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--max-seq-length", type=int, default=512)
    parser.add_argument("--seeds", type=int, nargs="+", default=[7])
    parser.add_argument("--dataset", type=Path, default=SAMPLE, help="a conversations file")
    parser.add_argument("--base-model", help="a model path (default: the tiny model)")
    parser.add_argument("--trl", action="store_true", help="also run TRL's SFTTrainer on the per-pair rows")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-steps-"))
    try:
        from brightrun.tiny_model import ensure_tiny_model
        from tasks.dataset import PrepareOptions, prepare_dataset

        model = args.base_model or str(ensure_tiny_model(work / "tiny-llama", SAMPLE))
        ours_data = work / "prepared"
        prepare_dataset(
            args.dataset,
            model,
            ours_data,
            PrepareOptions(
                max_seq_length=args.max_seq_length, validation_fraction=0.2, skip_overlong_targets=True
            ),
        )
        meta = prepared.read_meta(ours_data)
        rows = per_pair_set(ours_data, work / "per-pair")
        old_rule = math.ceil(math.ceil(meta.train_examples / 4) * args.epochs / 4)
        print(
            f"data: {args.dataset.name}: {meta.train_examples} train sequences holding {meta.train_targets} "
            f"targets ({rows} per-pair rows), {meta.validation_examples} held-out sequences; "
            f"{args.epochs:g} epoch(s) at batch 4 x 4, lr {args.lr:g}, max_seq_length {args.max_seq_length}"
        )
        header = ("seed", "recipe", "steps", "held-out before", "after", "tokens", "padding", "train s")
        print("{:>5} {:9} {:>6} {:>16} {:>8} {:>9} {:>8} {:>8}".format(*header))
        for seed in args.seeds:
            per_pair = run(work, work / "per-pair", f"per-pair-{seed}", model, args, False, seed)
            ours = run(work, ours_data, f"packed-{seed}", model, args, True, seed)
            named = [("per-pair", per_pair), ("ours", ours)]
            if args.trl:
                named.append(("trl", run_trl(work / "per-pair", model, args, seed, work / f"trl-{seed}")))
            for name, r in named:
                print(
                    f"{seed:>5} {name:9} {r['steps']:>6} {r['eval_before']:>16.4f} {r['eval_after']:>8.4f} "
                    f"{r['tokens']:>9} {r['padding'] if r['padding'] >= 0 else 'n/a':>8} {r['seconds']:>8.1f}"
                )
            print(
                f"      ours - per-pair held-out loss: {ours['eval_after'] - per_pair['eval_after']:+.4f} "
                f"(target within 0.01); tokens {ours['tokens'] / per_pair['tokens']:.2f} x the per-pair "
                f"recipe's"
            )
            if args.trl:
                trl_loss = named[-1][1]["eval_after"]
                print(f"      ours - TRL SFTTrainer held-out loss: {ours['eval_after'] - trl_loss:+.4f}")
        print(f"the old rule (batch_size counted packed sequences) would have run {old_rule} steps")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
