"""A fake worker-vllm worker: our OpenAI-compatible server configured from worker-vllm's env.

RunPod's worker-vllm turns its env into `vllm serve` flags; this reads the same variables
the way worker-vllm and vLLM interpret them and refuses at start-up what vLLM refuses, so
a deploy that would crash real workers crashes these too:

- `MODEL_NAME`: the base (a hub id or, here, a local path); `QUANTIZATION=bitsandbytes`
  loads it in 4-bit NF4 (vLLM's in-flight bitsandbytes), as our adapters trained on it.
- `ENABLE_LORA` must be true for `LORA_MODULES` (a JSON list of {name, path,
  base_model_name}, vLLM's `--lora-modules` JSON form) to be served.
- `MAX_LORA_RANK` (vLLM's default 16): an adapter of higher rank fails the start, with
  vLLM's message. `MAX_LORAS` (default 1): more modules than this fail the start too
  (stricter than vLLM, which swaps them through its CPU cache; README, differences).
- `base_model_name`, when given, must be `MODEL_NAME`.
- Paths under `/runpod-volume` are the endpoint's network volume: the worker copies what
  the modules name from the volume's bucket (`FAKE_VOLUME_*`, set by the fake) into its
  local mount first, as the real worker reads the mounted volume.

Served names: each module's `name`; with no modules, the base under `MODEL_NAME`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

VOLUME_MOUNT = "/runpod-volume"


class WorkerStartError(Exception):
    pass


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def lora_modules(env: dict[str, str]) -> list[dict[str, Any]]:
    raw = env.get("LORA_MODULES", "").strip()
    if not raw:
        return []
    try:
        modules = json.loads(raw)
    except ValueError as exc:
        raise WorkerStartError(f"LORA_MODULES is not JSON: {exc}") from None
    if isinstance(modules, dict):
        modules = [modules]
    if not isinstance(modules, list) or not all(
        isinstance(m, dict) and m.get("name") and m.get("path") for m in modules
    ):
        raise WorkerStartError("LORA_MODULES: each module needs a name and a path")
    return modules


def check_env(env: dict[str, str], ranks: dict[str, int]) -> None:
    """What vLLM refuses at start-up, given each module's LoRA rank (by name)."""
    modules = lora_modules(env)
    if modules and not _truthy(env.get("ENABLE_LORA")):
        raise WorkerStartError("LORA_MODULES is set but ENABLE_LORA is not true: vLLM serves no LoRA")
    max_loras = int(env.get("MAX_LORAS") or 1)
    max_rank = int(env.get("MAX_LORA_RANK") or 16)
    if len(modules) > max_loras:
        raise WorkerStartError(f"{len(modules)} LoRA modules but MAX_LORAS={max_loras}")
    for m in modules:
        base = m.get("base_model_name")
        if base and base != env.get("MODEL_NAME"):
            raise WorkerStartError(
                f"LoRA {m['name']}: base_model_name {base} is not MODEL_NAME {env.get('MODEL_NAME')}"
            )
        rank = ranks.get(m["name"], 0)
        if rank > max_rank:
            raise WorkerStartError(f"LoRA rank {rank} is greater than max_lora_rank {max_rank}.")


def mount_volume(env: dict[str, str], modules: list[dict[str, Any]]) -> dict[str, Path]:
    """Copy what the modules name from the volume's bucket into the local mount; local dirs."""
    mount = Path(env["FAKE_VOLUME_DIR"])
    local: dict[str, Path] = {}
    client = None
    for m in modules:
        path = str(m["path"])
        if not path.startswith(VOLUME_MOUNT + "/"):
            local[m["name"]] = Path(path)
            continue
        rel = path[len(VOLUME_MOUNT) + 1 :].strip("/")
        if client is None:
            import boto3
            from botocore.config import Config

            client = boto3.client(
                "s3",
                endpoint_url=env["FAKE_VOLUME_S3_ENDPOINT_URL"],
                aws_access_key_id=env["FAKE_VOLUME_S3_ACCESS_KEY_ID"],
                aws_secret_access_key=env["FAKE_VOLUME_S3_SECRET_ACCESS_KEY"],
                region_name="us-east-1",
                config=Config(s3={"addressing_style": "path"}),
            )
        bucket = env["FAKE_VOLUME_ID"]
        target = mount / rel
        paginator = client.get_paginator("list_objects_v2")
        found = False
        for page in paginator.paginate(Bucket=bucket, Prefix=rel + "/"):
            for obj in page.get("Contents", []):
                found = True
                dest = mount / obj["Key"]
                dest.parent.mkdir(parents=True, exist_ok=True)
                client.download_file(bucket, obj["Key"], str(dest))
        if not found:
            raise WorkerStartError(f"LoRA {m['name']}: {path} does not exist on the volume")
        local[m["name"]] = target
    return local


def main() -> int:
    env = dict(os.environ)
    try:
        modules = lora_modules(env)
        local = mount_volume(env, modules)
        ranks = {}
        for name, directory in local.items():
            config = directory / "adapter_config.json"
            if not config.is_file():
                raise WorkerStartError(f"LoRA {name}: no adapter_config.json in {directory}")
            ranks[name] = int(json.loads(config.read_text()).get("r") or 0)
        check_env(env, ranks)
    except WorkerStartError as exc:
        print(f"worker-vllm start failed: {exc}", file=sys.stderr, flush=True)
        return 1

    import uvicorn

    from brightrun.base_model import BaseModelSpec
    from brightrun.spec import QuantizationSettings
    from cli.serve_openai import build_app
    from trainer.inference import attach_adapter, device, load_base, load_tokenizer
    from trainer.serving import BatchingEngine, ServedModel

    four_bit = env.get("QUANTIZATION", "").lower() == "bitsandbytes"
    base = BaseModelSpec(env["MODEL_NAME"], None, QuantizationSettings(load_in_4bit=four_bit))
    dev = device()
    model = load_base(base, dev)
    served = []
    if not modules:
        served.append(ServedModel(env["MODEL_NAME"], load_tokenizer(env["MODEL_NAME"]), None))
    for i, m in enumerate(modules):
        model = attach_adapter(model, local[m["name"]], adapter_name=f"lora{i}")
        served.append(ServedModel(m["name"], load_tokenizer(local[m["name"]]), f"lora{i}"))
    model.eval()
    engine = BatchingEngine(model, served, dev=dev).start()
    port = int(env["FAKE_WORKER_PORT"])
    print(f"worker-vllm ready on {port}: {[s.name for s in served]}", flush=True)
    uvicorn.run(build_app(engine), host="127.0.0.1", port=port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
