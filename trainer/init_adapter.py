"""Continue from an adapter: its weights loaded into the fresh LoRA before step 0.

The orchestrator staged the adapter under the job's prefix (`spec.init_adapter.prefix`, with
its `MANIFEST.json`) and wrote that manifest's sha256 into the spec; here it is downloaded,
every file checked against the manifest, and the manifest against the spec, so the trainer
never starts from weights nobody verified. The trainer knows nothing of the registry.

A resumed attempt loads the init adapter too, then its checkpoint replaces every trainable
weight: the init adapter is only the starting point, and exact resume is untouched.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from brightrun import layout
from brightrun import manifest as manifest_io
from brightrun.errors import BrightrunError, InputError
from brightrun.spec import InitAdapter, JobSpec
from brightrun.storage import Storage, sha256_bytes

log = logging.getLogger("trainer")

ADAPTER_WEIGHTS = "adapter_model.safetensors"


class InitAdapterUnusable(BrightrunError):
    """The staged init adapter is missing, altered, or does not fit the job's LoRA."""


def download_init_adapter(storage: Storage, init: InitAdapter, dest: Path) -> Path:
    """The staged adapter's files into `dest`, each verified; the manifest must be the one the
    orchestrator named in the spec."""
    try:
        manifest, data = manifest_io.read_manifest(storage, init.prefix)
    except (manifest_io.ManifestMissing, manifest_io.ManifestUnreadable) as exc:
        raise InitAdapterUnusable(f"init adapter: {exc}") from exc
    if sha256_bytes(data) != init.manifest_sha256:
        raise InitAdapterUnusable(
            f"init adapter: {storage.uri(init.prefix)}/{layout.MANIFEST} is not the manifest the job "
            f"spec names (sha256 {sha256_bytes(data)[:12]}…, spec says {init.manifest_sha256[:12]}…)"
        )
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    problems = manifest_io.download_files(storage, init.prefix, manifest, dest)
    if problems:
        raise InitAdapterUnusable(
            "init adapter does not match its manifest: " + "; ".join(f"{k}: {r}" for k, r in problems)
        )
    if ADAPTER_WEIGHTS not in manifest.files:
        raise InitAdapterUnusable(f"init adapter at {storage.uri(init.prefix)} has no {ADAPTER_WEIGHTS}")
    return dest


def lora_key(parameter_name: str, adapter_name: str = "default") -> str:
    """A trainable parameter's name as PEFT saves it (`...lora_A.default.weight` ->
    `...lora_A.weight`)."""
    return parameter_name.replace(f".{adapter_name}.", ".")


def load_init_weights(model: Any, directory: Path, adapter_dtype: Any) -> int:
    """Copy the adapter's tensors into the model's trainable LoRA weights, each one checked by
    name and shape: every trainable weight must come from the adapter, and nothing extra.
    Returns the number of tensors loaded."""
    import torch
    from safetensors.torch import load_file

    saved = load_file(str(directory / ADAPTER_WEIGHTS))
    params = {lora_key(n): p for n, p in model.named_parameters() if p.requires_grad}
    missing = sorted(set(params) - set(saved))
    extra = sorted(set(saved) - set(params))
    shapes = [k for k in set(params) & set(saved) if tuple(params[k].shape) != tuple(saved[k].shape)]
    if missing or extra or shapes:
        details = []
        if missing:
            details.append(f"{len(missing)} weight(s) missing, e.g. {missing[0]}")
        if extra:
            details.append(f"{len(extra)} unexpected, e.g. {extra[0]}")
        if shapes:
            k = sorted(shapes)[0]
            details.append(f"shape {tuple(saved[k].shape)} != {tuple(params[k].shape)} at {k}")
        raise InputError(
            "the init adapter does not fit this job's LoRA (same base model, rank and target "
            "modules are needed): " + "; ".join(details)
        )
    with torch.no_grad():
        for key, param in params.items():
            param.data = saved[key].to(device=param.device, dtype=adapter_dtype)
    log.info("continuing from the init adapter: %d tensors loaded", len(params))
    return len(params)


def start_from_init_adapter(storage: Storage, spec: JobSpec, work: Path, model: Any) -> None:
    """Download, verify and load the spec's init adapter into `model`; the copy is removed."""
    import torch

    assert spec.init_adapter is not None
    directory = download_init_adapter(storage, spec.init_adapter, work)
    try:
        load_init_weights(model, directory, getattr(torch, spec.quantization.adapter_dtype))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
