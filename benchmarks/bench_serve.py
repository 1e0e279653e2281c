"""Benchmark: `brightrun serve` throughput at 1, 8 and 32 concurrent clients, batched or not.

Builds the tiny model with a LoRA adapter on it (PEFT, random weights: the cost of the adapter
layers is what matters here), serves it with the real app on loopback, and runs `--requests`
chat completions (`--max-tokens` each, greedy) from N concurrent clients, each sending its
next request when the last one answered. Each concurrency runs twice: `max_batch=1` (one
request at a time, as before issue 20) and `max_batch=32`. Prints requests/s, generated
tokens/s, median and 95th-percentile latency, and the mean batch the worker ran.

    .venv/bin/python benchmarks/bench_serve.py [--requests 96] [--max-tokens 32] [--four-bit]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def build(workdir: Path, four_bit: bool) -> tuple[Any, Any]:
    """The tiny base with one random LoRA adapter, as `brightrun serve` would hold it."""
    from peft import LoraConfig, get_peft_model

    from brightrun.spec import QuantizationSettings
    from brightrun.tiny_model import build_tiny_model
    from trainer.inference import BaseModelSpec, attach_adapter, load_base, load_tokenizer

    base_dir = build_tiny_model(workdir / "tiny", REPO / "examples" / "brightrun-sample.json")
    plain = load_base(BaseModelSpec(str(base_dir)))
    lora = get_peft_model(
        plain,
        LoraConfig(
            r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False
        ),
    )
    lora.save_pretrained(workdir / "adapter")
    load_tokenizer(base_dir).save_pretrained(workdir / "adapter")
    base = load_base(BaseModelSpec(str(base_dir), None, QuantizationSettings(load_in_4bit=four_bit)))
    model = attach_adapter(base, workdir / "adapter", adapter_name="adapter0")
    return model, load_tokenizer(workdir / "adapter")


def measure(model: Any, tokenizer: Any, clients: int, max_batch: int, requests: int, max_tokens: int) -> dict:
    import httpx
    import uvicorn

    from cli.serve_openai import ServeSettings, build_app
    from trainer.serving import BatchingEngine, ServedModel

    engine = BatchingEngine(
        model, [ServedModel("bench", tokenizer, "adapter0")], queue_size=256, max_batch=max_batch
    ).start()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(build_app(engine, ServeSettings()), host="127.0.0.1", port=port, log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)

    latencies: list[float] = []
    tokens = 0

    async def client(http: httpx.AsyncClient, share: list[int]) -> None:
        nonlocal tokens
        for i in share:
            body = {
                "model": "bench",
                "messages": [{"role": "user", "content": f"question {i}: how do I save more each month?"}],
                "max_tokens": max_tokens,
            }
            start = time.perf_counter()
            reply = await http.post("/v1/chat/completions", json=body)
            latencies.append(time.perf_counter() - start)
            reply.raise_for_status()
            tokens += reply.json()["usage"]["completion_tokens"]

    async def run() -> float:
        limits = httpx.Limits(max_connections=clients + 4)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=600, limits=limits) as http:
            shares = [list(range(c, requests, clients)) for c in range(clients)]
            start = time.perf_counter()
            await asyncio.gather(*(client(http, share) for share in shares))
            return time.perf_counter() - start

    try:
        wall = asyncio.run(run())
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        engine.stop()
    latencies.sort()
    return {
        "clients": clients,
        "max_batch": max_batch,
        "wall_s": wall,
        "requests_per_s": requests / wall,
        "tokens_per_s": tokens / wall,
        "p50_s": statistics.median(latencies),
        "p95_s": latencies[int(0.95 * (len(latencies) - 1))],
        "mean_batch": statistics.mean(engine.batch_sizes),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=96)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--four-bit", action="store_true", help="load the base in 4-bit NF4, as jobs train")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    with tempfile.TemporaryDirectory() as tmp:
        model, tokenizer = build(Path(tmp), args.four_bit)
        print(
            f"{args.requests} requests x {args.max_tokens} tokens, tiny model + LoRA, {os.cpu_count()} CPUs"
        )
        print("| clients | max_batch | requests/s | tokens/s | p50 latency | p95 latency | mean batch |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for clients in args.clients:
            for max_batch in (1, 32):
                r = measure(model, tokenizer, clients, max_batch, args.requests, args.max_tokens)
                print(
                    f"| {clients} | {max_batch} | {r['requests_per_s']:.1f} | {r['tokens_per_s']:.0f} | "
                    f"{r['p50_s']:.2f} s | {r['p95_s']:.2f} s | {r['mean_batch']:.1f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
