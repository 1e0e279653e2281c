"""Provisioning policy: which GPU, spot or on-demand, at what price (DESIGN.md §8).

Pure decisions (`capacity_plan`, `estimate_cost`) beside the one function with I/O
(`provision`), which walks the plan: a capacity error moves down the GPU list with
backoff; anything else (auth, validation) propagates at once.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from brightrun.compute import CapacityError, Compute, PodInfo, PodRequest
from brightrun.errors import BrightrunError, InputError
from brightrun.spec import CapacityType, JobSpec, ProvisioningPolicy

log = logging.getLogger(__name__)

# Rough seconds per optimizer step for an 8B model, QLoRA, batch 4 x 4 x 2048 tokens, by GPU
# type; relative speeds from public benchmarks. A measured `policy.seconds_per_step` wins.
DEFAULT_SECONDS_PER_STEP: dict[str, float] = {
    "NVIDIA H100 80GB HBM3": 6.0,
    "NVIDIA A100 80GB PCIe": 11.0,
    "NVIDIA L40S": 13.0,
    "NVIDIA RTX A6000": 20.0,
    "NVIDIA A40": 22.0,
}
FALLBACK_SECONDS_PER_STEP = 25.0
# Startup on a fresh pod: image pull and model download (8B: ~16 GB); no volume to reuse.
STARTUP_SECONDS_NO_VOLUME = 600.0
STARTUP_SECONDS_WITH_VOLUME = 120.0


class NoCapacityError(CapacityError):
    """Every GPU type the policy allows was refused for every round."""


@dataclass(frozen=True)
class Offer:
    gpu_type: str
    spot: bool

    def __str__(self) -> str:
        return f"{'spot' if self.spot else 'on-demand'} {self.gpu_type}"


def capacity_plan(policy: ProvisioningPolicy, interruptions: int) -> list[Offer]:
    """The offers to try, in order, for the next attempt."""
    spot = [Offer(g, True) for g in policy.gpu_types]
    on_demand = [Offer(g, False) for g in policy.gpu_types]
    if policy.capacity == CapacityType.spot:
        return spot
    if policy.capacity == CapacityType.on_demand:
        return on_demand
    if interruptions >= policy.on_demand_after_interruptions:
        return on_demand
    return spot + on_demand  # on-demand only once no spot capacity is found


def provision(
    compute: Compute,
    *,
    job_id: str,
    attempt: int,
    spec_uri: str,
    env: Mapping[str, str],
    policy: ProvisioningPolicy,
    interruptions: int = 0,
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> PodInfo:
    """Start the attempt's pod on the first offer with capacity."""
    plan = capacity_plan(policy, interruptions)
    refused: list[str] = []
    for round_ in range(policy.capacity_rounds):
        for offer in plan:
            bid = policy.max_bid_per_gpu if offer.spot else None
            request = PodRequest(
                job_id=job_id,
                attempt=attempt,
                spec_uri=spec_uri,
                env=dict(env),
                gpu_type=offer.gpu_type,
                spot=offer.spot,
                bid_per_gpu=bid,
            )
            if on_event:
                on_event(
                    "pod_requested", {"gpu_type": offer.gpu_type, "spot": offer.spot, "round": round_ + 1}
                )
            try:
                return compute.start(request)
            except CapacityError as exc:
                refused.append(str(offer))
                log.warning("no capacity for %s: %s", offer, exc)
                if on_event:
                    on_event("no_capacity", {"gpu_type": offer.gpu_type, "spot": offer.spot})
                sleep(policy.capacity_backoff_seconds * 2**round_)
    hint = ""
    if policy.capacity == CapacityType.spot:
        hint = " Allow on-demand with provisioning.capacity=spot_then_on_demand, or add GPU types."
    elif policy.capacity == CapacityType.spot_then_on_demand:
        hint = " Add GPU types to provisioning.gpu_types or try later."
    raise NoCapacityError(
        f"job {job_id}: no capacity after {policy.capacity_rounds} round(s) over "
        f"{', '.join(dict.fromkeys(refused))}.{hint}"
    )


@dataclass(frozen=True)
class CostEstimate:
    gpu_type: str
    spot: bool
    hourly_usd: float
    hours: float
    usd: float

    def describe(self) -> str:
        kind = "spot" if self.spot else "on-demand"
        return f"~${self.usd:.2f} ({self.hours:.2f} h of {kind} {self.gpu_type} at ${self.hourly_usd:.3f}/h)"


def estimate_cost(
    policy: ProvisioningPolicy,
    total_steps: int,
    prices: Mapping[str, tuple[float | None, float | None]],
) -> CostEstimate:
    """Cost of the first offer that has a price: steps x seconds/step + startup, x hourly price.

    `prices` maps GPU type -> (spot min bid, on-demand price), per GPU, USD/hr.
    """
    for offer in capacity_plan(policy, 0):
        spot_bid, on_demand = prices.get(offer.gpu_type, (None, None))
        per_gpu = (policy.max_bid_per_gpu or spot_bid) if offer.spot else on_demand
        if per_gpu is None:
            continue
        per_step = policy.seconds_per_step.get(
            offer.gpu_type, DEFAULT_SECONDS_PER_STEP.get(offer.gpu_type, FALLBACK_SECONDS_PER_STEP)
        )
        startup = STARTUP_SECONDS_WITH_VOLUME if policy.network_volume_id else STARTUP_SECONDS_NO_VOLUME
        hours = (total_steps * per_step + startup) / 3600
        hourly = per_gpu * policy.gpu_count
        return CostEstimate(offer.gpu_type, offer.spot, hourly, hours, round(hours * hourly, 4))
    raise BrightrunError(f"no price known for any of {policy.gpu_types}; check the GPU type names")


def estimated_total_steps(spec: JobSpec, train_examples: int) -> int:
    """Optimizer steps the trainer will run: `max_steps`, else epochs over the training
    examples at batch size x gradient accumulation (a packed micro-batch holds `batch_size`
    examples, as the trainer packs them)."""
    training = spec.training
    if training.max_steps is not None:
        return training.max_steps
    per_step = training.batch_size * training.gradient_accumulation_steps
    return max(1, math.ceil(math.ceil(train_examples / per_step) * training.epochs))


def check_estimate(estimate: CostEstimate, policy: ProvisioningPolicy) -> None:
    """Refuse to launch a job whose estimate already exceeds the cap."""
    if estimate.usd > policy.max_cost_usd:
        raise InputError(
            f"estimated cost {estimate.describe()} exceeds provisioning.max_cost_usd="
            f"{policy.max_cost_usd}; raise the cap, lower training steps, or choose cheaper GPU types"
        )
    if estimate.hours > policy.max_duration_hours:
        raise InputError(
            f"estimated duration {estimate.hours:.1f} h exceeds provisioning.max_duration_hours="
            f"{policy.max_duration_hours}"
        )


def runpod_prices(compute: Any, gpu_count: int = 1) -> dict[str, tuple[float | None, float | None]]:
    """Per-GPU (spot min bid, on-demand) from a RunPodCompute's API."""
    out: dict[str, tuple[float | None, float | None]] = {}
    for p in compute.api.gpu_prices(gpu_count):
        out[p.id] = (
            p.spot_min_bid / gpu_count if p.spot_min_bid is not None else None,
            p.on_demand_price / gpu_count if p.on_demand_price is not None else None,
        )
    return out
