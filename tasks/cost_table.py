"""The estimate as a text table, for `brightrun train ... --estimate`: the job's GPU types
first, then the usual ones, with the assumptions behind the figures (`tasks.cost_model`
computes them)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from brightrun.errors import BrightrunError
from brightrun.spec import JobSpec, ProvisioningPolicy
from tasks.cost_model import (
    DEFAULT_UTILISATION,
    ESTIMATE_GPUS,
    JobEstimate,
    Range,
    estimate_job,
    model_shape,
)


def _hours(r: Range | None) -> str:
    if r is None:
        return "-"
    return f"{r.low:.1f}-{r.high:.1f} h" if r.high >= 1 else f"{r.low * 60:.0f}-{r.high * 60:.0f} min"


def _usd(r: Range | None) -> str:
    return f"${r.low:,.2f}-{r.high:,.2f}" if r is not None else "no price"


def render_estimate(estimate: JobEstimate, policy: ProvisioningPolicy | None = None) -> str:
    """The estimate as a text table (for `brightrun train ... --estimate`)."""
    e = estimate
    gpus = f"{e.gpu_count} GPUs" if e.gpu_count > 1 else "1 GPU"
    lines = [
        f"{e.base_model}: {e.parameters / 1e9:.1f}B parameters, {e.total_steps} steps of "
        f"~{e.tokens_per_step:,.0f} tokens, {gpus} per pod",
        f"memory: {e.memory.describe()}",
        f"start-up per attempt: {e.startup_seconds.low / 60:.0f}-{e.startup_seconds.high / 60:.0f} min",
        "",
        f"{'GPU':<24} {'fits':<5} {'s/step':>11} {'time':>14} {'on-demand':>19} {'spot':>19}",
    ]
    for g in e.gpus:
        if g.step_seconds is None:
            lines.append(f"{g.gpu_type:<24} {'?':<5} unknown GPU type: no figures")
            continue
        per_step = f"{g.step_seconds.low:.1f}-{g.step_seconds.high:.1f}"
        lines.append(
            f"{g.gpu_type:<24} {'yes' if g.fits else 'NO':<5} {per_step:>11} {_hours(g.hours):>14} "
            f"{_usd(g.usd(False)):>19} {_usd(g.usd(True)):>19}"
        )
    for g in e.gpus:
        if g.fit_problem:
            lines.append(f"  {g.gpu_type}: {g.fit_problem}")
    if policy is not None:
        lines.append("")
        try:
            cap = e.for_cap(policy)
            lines.append(
                f"checked against the cap: {cap.describe()} vs max_cost_usd {policy.max_cost_usd}, "
                f"max_duration_hours {policy.max_duration_hours}"
            )
        except BrightrunError as exc:
            lines.append(f"cap check: {exc}")
    lines.append(
        f"assumed model FLOPs utilisation {DEFAULT_UTILISATION[0]:.0%}-{DEFAULT_UTILISATION[1]:.0%} "
        "(benchmarks/gpu_check.py measures it); spot's slow end allows one interruption"
    )
    return "\n".join(lines)


def estimate_all(
    spec: JobSpec,
    train_examples: int,
    prices: Mapping[str, tuple[float | None, float | None]],
    *,
    train_tokens: int | None = None,
    model_config: Mapping[str, Any] | None = None,
    train_sequences: int | None = None,
) -> JobEstimate:
    """The estimate over the job's GPU types first, then the usual ones. Raises InputError when
    the model's size is unknown (no config.json, not in the table)."""
    shape = model_shape(spec.base_model, model_config)
    names = [
        *spec.provisioning.gpu_types,
        *(g for g in ESTIMATE_GPUS if g not in spec.provisioning.gpu_types),
    ]
    return estimate_job(
        spec,
        train_examples,
        prices,
        shape,
        train_tokens=train_tokens,
        gpu_types=names,
        train_sequences=train_sequences,
    )


def estimate_table(
    spec: JobSpec,
    train_examples: int,
    prices: Mapping[str, tuple[float | None, float | None]],
    *,
    train_tokens: int | None = None,
    model_config: Mapping[str, Any] | None = None,
) -> str:
    """`brightrun train ... --estimate`: the job's GPU types first, then the usual ones."""
    estimate = estimate_all(
        spec, train_examples, prices, train_tokens=train_tokens, model_config=model_config
    )
    return render_estimate(estimate, spec.provisioning)


def policy_fit_problem(estimate: JobEstimate, policy: ProvisioningPolicy) -> str | None:
    """None when some GPU type of the policy fits the job; else what to change, naming the GPU
    types of the table that do fit."""
    if any(g.fits for g in estimate.gpus if g.gpu_type in policy.gpu_types):
        return None
    others = [g.gpu_type for g in estimate.gpus if g.fits and g.gpu_type not in policy.gpu_types]
    hint = (
        f"GPU types that fit: {', '.join(others)} (set provisioning.gpu_types)"
        if others
        else "no GPU type in the table fits it on one pod"
    )
    return f"none of provisioning.gpu_types ({', '.join(policy.gpu_types)}) fits this job; {hint}"
