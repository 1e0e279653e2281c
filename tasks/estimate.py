"""The cost estimate of a job, composed once (DESIGN.md §8).

The figures are the pure model's (tasks/cost_model.py); this module gathers what it needs: the
prepared data's example and token counts, RunPod's current prices, a local model's
config.json. Two callers:

- the flow, before renting anything: `check_job_cost` records the estimate (an event and the
  job's `estimated_cost_usd`) and refuses a job whose estimate breaks its caps;
- `brightrun train --estimate`: `estimate_dataset_file` prepares the file in a temporary
  directory for its real counts and returns the table per GPU type, recording nothing.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from brightrun import prepared
from brightrun.errors import InputError
from brightrun.layout import JobLayout
from brightrun.registry import repository as repo
from brightrun.resources import Resources
from brightrun.settings import ComputeBackend
from brightrun.spec import JobSpec
from brightrun.steps import describe_plan
from brightrun.storage import Storage
from tasks.cost_model import (
    CostEstimate,
    cap_estimate,
    check_estimate,
    estimated_total_steps,
)
from tasks.cost_table import estimate_all, policy_fit_problem, render_estimate
from tasks.provision import runpod_prices

Prices = Mapping[str, tuple[float | None, float | None]]


class EventSink(Protocol):
    """What the estimate needs of the flow's recorder: the job's registry and its event log."""

    engine: Any

    def event(
        self, type: str, attempt: int = 0, payload: Mapping[str, Any] | None = None, key: str | None = None
    ) -> None: ...


def job_prices(compute: Any, spec: JobSpec) -> dict[str, tuple[float | None, float | None]]:
    """Per-GPU (spot minimum bid, on-demand) USD/h for the job's pod size, from RunPod."""
    return runpod_prices(compute, spec.provisioning.gpu_count)


def cost_for_cap(
    spec: JobSpec,
    train_examples: int,
    train_tokens: int | None,
    prices: Prices,
    train_sequences: int | None = None,
) -> CostEstimate:
    """The estimate held against the job's caps (the first offer the provisioner would try)."""
    return cap_estimate(
        spec,
        train_examples,
        prices,
        train_tokens=train_tokens,
        model_config=local_model_config(spec.base_model),
        train_sequences=train_sequences,
    )


def check_job_cost(
    compute: Any, spec: JobSpec, storage: Storage, recorder: EventSink, logger: logging.Logger | Any
) -> CostEstimate:
    """Price the job before renting anything, record the estimate, and refuse the job (InputError)
    when the estimate already breaks `provisioning.max_cost_usd` or `max_duration_hours`."""
    meta = prepared.PreparedMeta.model_validate_json(
        storage.get_bytes(JobLayout(spec.job_id).key(f"{spec.dataset_prefix}/{prepared.META}"))
    )
    examples = prepared.step_examples(meta)
    steps = estimated_total_steps(spec, examples)
    estimate = cost_for_cap(
        spec, examples, meta.train_tokens, job_prices(compute, spec), train_sequences=meta.train_examples
    )
    recorder.event(
        "cost_estimated",
        0,
        {
            "steps": steps,
            "usd": estimate.usd,
            "gpu_type": estimate.gpu_type,
            "spot": estimate.spot,
            "hours": estimate.hours,
        },
    )
    repo.set_job_cost(recorder.engine, spec.job_id, estimated_cost_usd=estimate.usd)
    logger.info("job %s: estimated cost %s for %d steps", spec.job_id, estimate.describe(), steps)
    t = spec.training
    logger.info(
        "job %s: %s",
        spec.job_id,
        describe_plan(examples, meta.train_examples, t.batch_size, t.gradient_accumulation_steps, steps),
    )
    check_estimate(estimate, spec.provisioning)
    return estimate


def hub_endpoint() -> str:
    import os

    return os.environ.get("HF_ENDPOINT") or "https://huggingface.co"


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """One short request to the hub (offline mode, a firewall, no network: False at once)."""
    import os

    import httpx

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    try:
        httpx.head(hub_endpoint(), timeout=timeout_s)
    except httpx.HTTPError:
        return False
    return True


@dataclass(frozen=True)
class EstimateText:
    """What `train --estimate` prints, and why the job cannot run as asked (None: it can)."""

    text: str
    fit_problem: str | None


def estimate_dataset_file(
    resources: Resources, spec: JobSpec, dataset: str, *, sample_dataset: Path
) -> EstimateText:
    """Time and cost ranges per GPU type for training `spec` on `dataset`, before anything is
    rented: the file is prepared here (in a temporary directory) for its real example and token
    counts, and RunPod's current prices are read when a key is configured. Without hub access
    to the model's tokenizer, tokens are counted with the tiny model's (trained on
    `sample_dataset`), and the table says so."""
    from tasks.dataset.fetch import fetch_source
    from tasks.dataset.prepare import PrepareOptions, prepare_dataset
    from tasks.dataset.tokenizer import load_tokenizer

    source = fetch_source(
        dataset,
        resources.settings.cache_dir / "datasets",
        resources.open_storage,
        resources.settings.fetch_policy,
    )
    note = ""
    try:
        if not Path(spec.base_model).expanduser().is_dir() and not hub_reachable():
            # Unreachable: the hub client would retry for about a minute before failing.
            raise InputError(f"the model hub ({hub_endpoint()}) does not answer from here")
        tokenizer = load_tokenizer(spec.base_model, spec.base_model_revision)
    except InputError as exc:
        # No hub access here (or a gated model without HF_TOKEN): count with the tiny
        # model's tokenizer, trained on this kind of data, and say so.
        from brightrun.tiny_model import ensure_tiny_model

        tiny = resources.settings.home / "models" / "tiny-llama"
        ensure_tiny_model(tiny, sample_dataset)
        tokenizer = load_tokenizer(tiny)
        note = (
            f"\nnote: the tokenizer of {spec.base_model} could not be loaded here ({str(exc)[:200]}); "
            "tokens were counted with the tiny model's tokenizer, so the time and cost are approximate."
        )
    with tempfile.TemporaryDirectory(prefix="brightrun-estimate-") as tmp:
        report = prepare_dataset(
            source.path,
            tokenizer,
            Path(tmp) / "prepared",
            PrepareOptions.from_spec(spec),
            source_sha256=source.sha256,
            source_name=source.display_name,
            limits=resources.settings.dataset_limits,
        )
        # A step counts assistant targets, not sequences (brightrun.steps).
        meta = prepared.read_meta(Path(tmp) / "prepared")
        trained_examples = prepared.step_examples(meta)
    prices: dict[str, tuple[float | None, float | None]] = {}
    if resources.settings.runpod_api_key is not None:
        prices = job_prices(resources.compute(ComputeBackend.runpod, spec.provisioning), spec)
    else:
        note += (
            "\nnote: prices read 'no price' because RUNPOD_API_KEY is not set, so RunPod's current "
            "prices were not read; the time ranges and the 'fits' column hold without it."
        )
    estimate = estimate_all(
        spec,
        trained_examples,
        prices,
        train_tokens=report.train.tokens,
        model_config=local_model_config(spec.base_model),
        train_sequences=meta.train_examples,
    )
    return EstimateText(
        render_estimate(estimate, spec.provisioning) + note,
        policy_fit_problem(estimate, spec.provisioning),
    )


def local_model_config(base_model: str) -> dict[str, Any] | None:
    """config.json of a local model directory, else None (a hub id: use the table). Read here, at
    the edge, to feed `model_shape`."""
    path = Path(base_model).expanduser() / "config.json"
    if not path.is_file():
        return None
    config: dict[str, Any] = json.loads(path.read_text())
    return config
