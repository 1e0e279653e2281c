"""Provisioning policy: the capacity plan, the walk down the GPU list, the cost estimate."""

from __future__ import annotations

from pathlib import Path

import pytest

from brightrun.compute import CapacityError, Compute, PodInfo, PodRequest, PodState
from brightrun.errors import InputError
from brightrun.spec import JobSpec, ProvisioningPolicy
from tasks.cost_model import check_estimate, model_blind_estimate
from tasks.provision import NoCapacityError, Offer, capacity_plan, provision

GPUS = ["G1", "G2", "G3"]


def policy(**kw: object) -> ProvisioningPolicy:
    return ProvisioningPolicy(gpu_types=GPUS, capacity_backoff_seconds=1.0, **kw)


def test_spot_then_on_demand_tries_spot_first_then_on_demand() -> None:
    plan = capacity_plan(policy(capacity="spot_then_on_demand", on_demand_after_interruptions=2), 0)
    assert plan == [Offer(g, True) for g in GPUS] + [Offer(g, False) for g in GPUS]


def test_spot_then_on_demand_switches_after_n_interruptions() -> None:
    p = policy(capacity="spot_then_on_demand", on_demand_after_interruptions=2)
    assert all(o.spot for o in capacity_plan(p, 1)[:3])
    assert capacity_plan(p, 2) == [Offer(g, False) for g in GPUS]


@pytest.mark.parametrize(("capacity", "spot"), [("spot", True), ("on_demand", False)])
def test_pure_policies(capacity: str, spot: bool) -> None:
    assert capacity_plan(policy(capacity=capacity), 7) == [Offer(g, spot) for g in GPUS]


class ScriptedCompute(Compute):
    """Refuses the offers in `refuse`; records every request."""

    name = "scripted"

    def __init__(self, refuse: set[tuple[str, bool]], error: Exception | None = None) -> None:
        self.refuse, self.error, self.requests = refuse, error, []

    def start(self, request: PodRequest) -> PodInfo:
        self.requests.append(request)
        if self.error is not None:
            raise self.error
        if (request.gpu_type, request.spot) in self.refuse:
            raise CapacityError("no capacity")
        return PodInfo(pod_id="p1", job_id=request.job_id, state=PodState.pending, gpu_type=request.gpu_type)

    def get(self, pod_id: str) -> PodInfo:
        raise NotImplementedError

    def terminate(self, pod_id: str) -> None:
        raise NotImplementedError

    def list_pods(self, job_id: str | None = None) -> list[PodInfo]:
        return []


def _provision(
    compute: Compute, p: ProvisioningPolicy, sleeps: list[float], interruptions: int = 0
) -> PodInfo:
    return provision(
        compute,
        job_id="j",
        attempt=1,
        spec_uri="s3://b/j/spec.json",
        env={},
        policy=p,
        interruptions=interruptions,
        sleep=sleeps.append,
    )


def test_capacity_errors_move_down_the_list_with_backoff() -> None:
    compute = ScriptedCompute({("G1", True), ("G2", True)})
    sleeps: list[float] = []
    pod = _provision(compute, policy(capacity="spot", max_bid_per_gpu=0.5), sleeps)
    assert pod.gpu_type == "G3"
    assert [(r.gpu_type, r.spot, r.bid_per_gpu) for r in compute.requests] == [
        ("G1", True, 0.5),
        ("G2", True, 0.5),
        ("G3", True, 0.5),
    ]
    assert sleeps == [1.0, 1.0]


def test_no_capacity_anywhere_names_every_offer_and_backs_off_per_round() -> None:
    compute = ScriptedCompute({(g, True) for g in GPUS})
    sleeps: list[float] = []
    with pytest.raises(NoCapacityError, match="spot G1, spot G2, spot G3") as info:
        _provision(compute, policy(capacity="spot", capacity_rounds=2), sleeps)
    assert "spot_then_on_demand" in str(info.value)
    assert sleeps == [1.0] * 3 + [2.0] * 3


def test_non_capacity_errors_are_not_retried() -> None:
    compute = ScriptedCompute(set(), error=RuntimeError("validation: bad image"))
    with pytest.raises(RuntimeError, match="bad image"):
        _provision(compute, policy(), [])
    assert len(compute.requests) == 1


def test_cost_estimate_uses_steps_seconds_per_step_and_price() -> None:
    p = policy(capacity="on_demand", seconds_per_step={"G1": 36.0}, network_volume_id="vol1", gpu_count=2)
    est = model_blind_estimate(p, 100, {"G1": (0.2, 0.5)})
    # (100 steps x 36 s + 120 s startup with a volume) / 3600 h x 0.5 $/GPU/h x 2 GPUs
    assert est.hours == pytest.approx((3600 + 120) / 3600)
    assert est.usd == pytest.approx(round((3720 / 3600) * 1.0, 4))
    assert (est.gpu_type, est.spot) == ("G1", False)


def test_cost_estimate_skips_gpu_types_without_price_and_counts_download_without_volume() -> None:
    est = model_blind_estimate(
        policy(capacity="spot", seconds_per_step={"G2": 10.0}), 360, {"G2": (0.3, 0.6)}
    )
    assert est.gpu_type == "G2" and est.spot
    assert est.hours == pytest.approx((3600 + 600) / 3600)


def test_estimate_over_the_cap_is_refused() -> None:
    p = policy(capacity="on_demand", max_cost_usd=1.0, seconds_per_step={"G1": 36.0})
    with pytest.raises(InputError, match="max_cost_usd=1.0"):
        check_estimate(model_blind_estimate(p, 1000, {"G1": (0.2, 0.5)}), p)


def test_policy_lives_in_the_job_spec_and_validates() -> None:
    spec = JobSpec(job_id="j", base_model="m", provisioning={"capacity": "spot", "gpu_types": ["A"]})
    assert spec.provisioning.capacity == "spot"
    with pytest.raises(ValueError):
        ProvisioningPolicy(gpu_types=[])
    with pytest.raises(ValueError):
        ProvisioningPolicy(capacity="cheapest")


def test_estimated_total_steps_follows_max_steps_or_epochs_over_batches() -> None:
    from brightrun.spec import JobSpec
    from tasks.cost_model import estimated_total_steps

    spec = JobSpec(
        job_id="j",
        base_model="m",
        training={"batch_size": 4, "gradient_accumulation_steps": 2, "epochs": 2.0},
    )
    # The trainer's own plan (brightrun.steps): ceil(100 / 4) = 25 micro-batches per epoch, 50 in
    # 2 epochs, 2 per step = 25 steps; 1 example: 2 micro-batches = 1 step.
    assert estimated_total_steps(spec, 100) == 25
    assert estimated_total_steps(spec, 1) == 1
    capped = spec.model_copy(update={"training": spec.training.model_copy(update={"max_steps": 7})})
    assert estimated_total_steps(capped, 100) == 7


def test_a_local_attempt_names_the_local_device_not_the_policys_gpus(tmp_path: Path) -> None:
    from brightrun.compute.local import LocalCompute

    class NoStart(LocalCompute):
        def start(self, request: PodRequest) -> PodInfo:
            self.request = request
            return PodInfo(pod_id="local-1", job_id=request.job_id, state=PodState.running)

    compute = NoStart(tmp_path)
    events: list[tuple[str, dict]] = []
    provision(
        compute,
        job_id="j",
        attempt=1,
        spec_uri="s",
        env={},
        policy=policy(),
        on_event=lambda t, p: events.append((t, p)),
    )
    (requested,) = [p for t, p in events if t == "pod_requested"]
    assert requested["gpu_type"].startswith("local ") and requested["spot"] is False
    assert compute.request.gpu_type == requested["gpu_type"] and not compute.request.spot
