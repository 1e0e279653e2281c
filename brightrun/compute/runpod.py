"""The RunPod compute backend: one pod per trainer attempt (DESIGN.md §3, §8).

Pods are named `brightrun-<job_id>-a<attempt>` so the reaper can find every pod of a
job from the provider's side alone. Each pod gets a self-destruct at creation: its
start command runs the trainer under `timeout <max duration>` and then removes its own
pod (RunPod restarts a container that exits, so a pod whose orchestrator died would
otherwise bill forever).
"""

from __future__ import annotations

import logging
import shlex

from brightrun.compute import CapacityError, Compute, PodInfo, PodRequest, PodState
from brightrun.compute.runpod_client import PodCreate, RemotePod, RunPodApi, client_from_env
from brightrun.spec import ProvisioningPolicy

log = logging.getLogger(__name__)

POD_PREFIX = "brightrun-"
SPOT_ENV = "BRIGHTRUN_CAPACITY"


def pod_name(job_id: str, attempt: int) -> str:
    return f"{POD_PREFIX}{job_id}-a{attempt}"


def job_id_of(name: str) -> str | None:
    """The job id in a pod name this product gave, else None."""
    if not name.startswith(POD_PREFIX):
        return None
    job, sep, attempt = name[len(POD_PREFIX) :].rpartition("-a")
    if not sep or not job or not attempt.isdigit():
        return None
    return job


def start_command(trainer: str, spec_uri: str, max_seconds: int) -> str:
    """The pod's dockerArgs: the trainer under a deadline, then the pod removes itself."""
    run = f"timeout --signal=TERM --kill-after=30 {max_seconds} {trainer} --spec {shlex.quote(spec_uri)}"
    # RUNPOD_POD_ID and a pod-scoped key are set by RunPod inside every pod.
    remove = 'command -v runpodctl >/dev/null && runpodctl remove pod "$RUNPOD_POD_ID"'
    script = (
        f"{run} & child=$!; "
        # A stopped container gets SIGTERM on PID 1 (this shell) alone: pass the spot warning on
        # to `timeout`, which hands it to the trainer so it can commit a checkpoint.
        "trap 'kill -TERM \"$child\" 2>/dev/null' TERM INT; "
        'wait "$child"; code=$?; '
        'while kill -0 "$child" 2>/dev/null; do wait "$child"; code=$?; done; '
        f"{remove}; exit $code"
    )
    return f"bash -c {shlex.quote(script)}"


def pod_state(pod: RemotePod | None) -> PodState:
    if pod is None or pod.desired_status in ("TERMINATED", "DEAD"):
        return PodState.terminated
    if pod.desired_status in ("EXITED", "PAUSED"):
        return PodState.exited
    if pod.desired_status == "RUNNING" and pod.has_runtime:
        return PodState.running
    return PodState.pending  # CREATED, RESTARTING, or RUNNING before the container is up


class RunPodCompute(Compute):
    name = "runpod"

    def __init__(
        self,
        api: RunPodApi,
        policy: ProvisioningPolicy | None = None,
        *,
        trainer_command: str = "python -m trainer",
    ) -> None:
        self.api = api
        self.policy = policy or ProvisioningPolicy()
        self.trainer_command = trainer_command
        self._spot: dict[str, bool] = {}

    @classmethod
    def from_env(cls, policy: ProvisioningPolicy | None = None, **kwargs: str) -> RunPodCompute:
        return cls(client_from_env(), policy, **kwargs)

    def _info(self, pod: RemotePod | None, pod_id: str) -> PodInfo:
        if pod is None:
            return PodInfo(
                pod_id=pod_id, job_id="", state=PodState.terminated, spot=self._spot.get(pod_id, False)
            )
        return PodInfo(
            pod_id=pod.id,
            job_id=job_id_of(pod.name) or "",
            state=pod_state(pod),
            cost_per_hr=pod.cost_per_hr,
            uptime_seconds=pod.uptime_seconds or 0.0,
            gpu_type=pod.gpu_display_name,
            spot=self._spot.get(pod.id, False),
        )

    def _bid(self, gpu_type: str, requested: float | None) -> float:
        prices = {p.id: p for p in self.api.gpu_prices(self.policy.gpu_count)}
        price = prices.get(gpu_type)
        if price is None or price.spot_min_bid is None:
            raise CapacityError(f"RunPod offers no spot {gpu_type} right now")
        min_bid = price.spot_min_bid / self.policy.gpu_count
        cap = requested if requested is not None else self.policy.max_bid_per_gpu
        if cap is None:
            return round(min_bid, 4)
        if cap < min_bid:
            raise CapacityError(
                f"spot {gpu_type}: the minimum bid is ${min_bid:.3f}/GPU/hr, above the policy's max bid "
                f"${cap:.3f} (provisioning.max_bid_per_gpu)"
            )
        return cap

    def start(self, request: PodRequest) -> PodInfo:
        policy = self.policy
        gpu = request.gpu_type or policy.gpu_types[0]
        env = {
            **request.env,
            "BRIGHTRUN_JOB_ID": request.job_id,
            "BRIGHTRUN_ATTEMPT": str(request.attempt),
            "BRIGHTRUN_SPEC_URI": request.spec_uri,
            SPOT_ENV: "spot" if request.spot else "on_demand",
        }
        if policy.network_volume_id:
            # A replacement pod finds the base model weights already on the volume.
            env.setdefault("HF_HOME", f"{policy.volume_mount_path.rstrip('/')}/hf")
        create = PodCreate(
            name=pod_name(request.job_id, request.attempt),
            image=policy.image,
            docker_args=start_command(
                self.trainer_command, request.spec_uri, int(policy.max_duration_hours * 3600)
            ),
            gpu_type=gpu,
            gpu_count=policy.gpu_count,
            cloud_type=policy.cloud_type,
            container_disk_gb=policy.container_disk_gb,
            network_volume_id=policy.network_volume_id,
            volume_mount_path=policy.volume_mount_path,
            env=env,
            spot=request.spot,
            bid_per_gpu=self._bid(gpu, request.bid_per_gpu) if request.spot else None,
        )
        pod = self.api.create_pod(create)
        self._spot[pod.id] = request.spot
        log.info("RunPod pod %s (%s) created: %s %s", pod.id, create.name, gpu, env[SPOT_ENV])
        return self._info(pod, pod.id)

    def get(self, pod_id: str) -> PodInfo:
        return self._info(self.api.get_pod(pod_id), pod_id)

    def terminate(self, pod_id: str) -> None:
        self.api.terminate_pod(pod_id)

    def list_pods(self, job_id: str | None = None) -> list[PodInfo]:
        pods = []
        for pod in self.api.list_pods():
            owner = job_id_of(pod.name)
            if owner is None or (job_id is not None and owner != job_id):
                continue
            pods.append(self._info(pod, pod.id))
        return pods
