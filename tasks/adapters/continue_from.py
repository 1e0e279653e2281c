"""Continue from an adapter (`train_adapter(init_adapter=...)`, DESIGN.md §11).

Orchestrator side: resolve the artifact (`production`, an id, a job id, a served name), fetch
and verify it (`fetch.fetch_adapter`), refuse it when its base model, rank or target modules
differ from the job's, before any job row exists; then stage a copy under the job's prefix
(`jobs/<id>/init_adapter/` + `MANIFEST.json`) and name that manifest's sha256 in the job's
spec. The trainer downloads and verifies the staged copy (trainer/init_adapter.py): it never
reads the registry or another job's storage.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from brightrun import layout
from brightrun import manifest as manifest_io
from brightrun.errors import InputError
from brightrun.registry import promotion
from brightrun.resources import Resources
from brightrun.spec import InitAdapter, JobSpec
from brightrun.storage import Storage, sha256_bytes
from tasks.adapters.fetch import LocalAdapter, fetch_adapter

INIT_ADAPTER_PREFIX = "init_adapter"


def _same_model(a: str, b: str) -> bool:
    """Hub ids compare as text; local directories by where they resolve."""
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def fit_problems(adapter_base_model: str, adapter_config: dict[str, Any], spec: JobSpec) -> list[str]:
    """Why an adapter cannot be this job's starting point (empty: it can). The LoRA shapes
    must match exactly: the same base model, rank and target modules."""
    problems = []
    if not _same_model(adapter_base_model, spec.base_model):
        problems.append(
            f"init_adapter: trained on base model {adapter_base_model!r}, this job trains {spec.base_model!r}"
        )
    rank = adapter_config.get("r")
    if rank != spec.lora.r:
        problems.append(
            f"init_adapter: LoRA rank {rank}, this job's lora.r is {spec.lora.r} "
            f"(set lora.r={rank} or start fresh)"
        )
    targets = adapter_config.get("target_modules") or []
    targets = sorted([targets] if isinstance(targets, str) else targets)
    if targets != sorted(spec.lora.target_modules):
        problems.append(
            f"init_adapter: target modules {targets}, this job's lora.target_modules are "
            f"{sorted(spec.lora.target_modules)}"
        )
    return problems


def resolve_init_adapter(resources: Resources, ref: str, spec: JobSpec) -> LocalAdapter:
    """The adapter `ref` names, verified, and checked against the job's spec; raises one
    InputError naming every mismatch (nothing has been created yet)."""
    artifact = promotion.resolve_artifact(resources.registry, ref, base_model=spec.base_model)
    local = fetch_adapter(resources, artifact)
    config_file = local.directory / "adapter_config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    problems = fit_problems(local.base_model, config, spec)
    if problems:
        raise InputError(
            f"cannot continue from adapter {artifact.id} (job {artifact.training_job_id}); "
            "nothing was started",
            problems,
        )
    return local


def stage_init_adapter(storage: Storage, job_id: str, adapter: LocalAdapter) -> InitAdapter:
    """The verified copy into `jobs/<job_id>/init_adapter/`, its manifest written last; returns
    what the spec names (the staged manifest's sha256 is the one the trainer accepts)."""
    prefix = layout.JobLayout(job_id).key(INIT_ADAPTER_PREFIX)
    for rel in adapter.manifest.files:
        storage.put_file(f"{prefix}/{rel}", adapter.directory / rel)
    data = manifest_io.encode(adapter.manifest)
    storage.put_bytes(f"{prefix}/{layout.MANIFEST}", data)
    return InitAdapter(
        prefix=INIT_ADAPTER_PREFIX,
        manifest_sha256=sha256_bytes(data),
        artifact_id=adapter.artifact.id,
        training_job_id=adapter.artifact.training_job_id,
    )


def lineage(init: InitAdapter | None) -> dict[str, Any]:
    """What a job and its adapter record about where they started (`artifacts list` shows it)."""
    if init is None:
        return {}
    return {
        "continued_from": {
            "artifact_id": init.artifact_id,
            "training_job_id": init.training_job_id,
            "manifest_sha256": init.manifest_sha256,
        }
    }
