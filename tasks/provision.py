"""Provisioning policy: which GPU, spot or on-demand, at what price (DESIGN.md §8).

Pure decisions (`capacity_plan`; the cost estimate is in tasks/cost_model.py) beside the
one function with I/O (`provision`), which walks the plan: a capacity error moves down the GPU list with
backoff; anything else (auth, validation) propagates at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from brightrun.compute import CapacityError, Compute, PodInfo, PodRequest
from brightrun.spec import CapacityType, ProvisioningPolicy

log = logging.getLogger(__name__)


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
    """Start the attempt's pod on the first offer with capacity. One pod per attempt: every
    offer of an attempt shares the pod's name, and the backend looks a lost create up by it."""
    plan = capacity_plan(policy, interruptions)
    describe = getattr(compute, "device_description", None)
    if describe is not None:  # local compute: its own device, not the policy's GPU types
        plan = [Offer(describe(), False)]
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
                pod = compute.start(request)
            except CapacityError as exc:
                refused.append(str(offer))
                log.warning("no capacity for %s: %s", offer, exc)
                if on_event:
                    on_event("no_capacity", {"gpu_type": offer.gpu_type, "spot": offer.spot})
                sleep(policy.capacity_backoff_seconds * 2**round_)
                continue
            # A create answered late may have made a second pod for this attempt: `start`
            # terminated it at once; the job's history says so.
            for duplicate in pod.duplicates_terminated:
                log.error("job %s attempt %d: terminated duplicate pod %s", job_id, attempt, duplicate)
                if on_event:
                    on_event("duplicate_pod_terminated", {"pod_id": duplicate, "kept_pod_id": pod.pod_id})
            return pod
    hint = ""
    if policy.capacity == CapacityType.spot:
        hint = " Allow on-demand with provisioning.capacity=spot_then_on_demand, or add GPU types."
    elif policy.capacity == CapacityType.spot_then_on_demand:
        hint = " Add GPU types to provisioning.gpu_types or try later."
    raise NoCapacityError(
        f"job {job_id}: no capacity after {policy.capacity_rounds} round(s) over "
        f"{', '.join(dict.fromkeys(refused))}.{hint}"
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
