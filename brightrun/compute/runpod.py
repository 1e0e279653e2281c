"""The RunPod compute backend: one pod per trainer attempt (DESIGN.md §3, §8).

Pods are named `brightrun-<job_id>-a<attempt>` (one name per job attempt) so the reaper
can find every pod of a job from the provider's side alone, and a create that timed out
can be looked up before it is retried. Each pod gets a self-destruct at creation: the
image's ENTRYPOINT (brightrun.compute.pod_supervisor) runs the trainer under the pod's
deadline and then removes its own pod through the API (RunPod restarts a container that
exits, so a pod whose orchestrator died would otherwise bill forever).
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Callable
from dataclasses import replace

from brightrun.compute import (
    CapacityError,
    Compute,
    PodInfo,
    PodRequest,
    PodState,
    PodTerminationError,
)
from brightrun.compute.runpod_client import (
    REGISTRY_ID_ENV,
    PodCreate,
    RemotePod,
    RunPodApi,
    RunPodCreateUncertain,
    RunPodError,
    RunPodUnavailableError,
)
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


def start_command(trainer: str, spec_uri: str, max_seconds: int, grace_seconds: int = 30) -> str:
    """The pod's start command (`dockerArgs`). RunPod runs the image's ENTRYPOINT with it in
    place of CMD, and the trainer image's ENTRYPOINT is `python -m brightrun.compute.pod_supervisor`
    (infra/Dockerfile.trainer): these are that program's arguments. It runs the trainer under the
    deadline, passes a stop signal on, and then removes its own pod through the API."""
    return (
        f"--deadline-seconds {int(max_seconds)} --grace-seconds {int(grace_seconds)} "
        f"-- {trainer} --spec {shlex.quote(spec_uri)}"
    )


class RunPodTerminationUnavailable(PodTerminationError, RunPodUnavailableError):
    """A termination not confirmed because RunPod's API is down (timeouts, 5xx, 429): both a
    `PodTerminationError` and a `RunPodUnavailableError`, so a caller can wait the outage out."""


def trainer_command_for(trainer: str, gpu_count: int) -> str:
    """One trainer process per GPU under torchrun when the pod has several (data parallel,
    trainer/distributed.py); `python -m torch.distributed.run` is torchrun, same interpreter."""
    if gpu_count <= 1 or not trainer.endswith("-m trainer"):
        return trainer
    python = trainer[: -len("-m trainer")].strip()
    return f"{python} -m torch.distributed.run --standalone --nproc-per-node={gpu_count} -m trainer"


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
    shared_account = True

    def __init__(
        self,
        api: RunPodApi,
        policy: ProvisioningPolicy | None = None,
        *,
        trainer_command: str = "python -m trainer",
        create_attempts: int = 3,
        registry_id: str | Callable[[], str] | None = None,
    ) -> None:
        self.api = api
        self.policy = policy or ProvisioningPolicy()
        self.trainer_command = trainer_command
        self.create_attempts = create_attempts
        self._spot: dict[str, bool] = {}
        # A callable is asked on the first pod start (it may open the registry).
        self._registry_id = registry_id

    @property
    def registry_id(self) -> str | None:
        if callable(self._registry_id):
            self._registry_id = self._registry_id()
        return self._registry_id

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
            state_since=pod.status_since,
            registry_id=pod.registry_id,
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
        if self.registry_id:
            env[REGISTRY_ID_ENV] = self.registry_id  # its reaper's and no other registry's
        if policy.network_volume_id:
            # A replacement pod finds the base model weights already on the volume.
            env.setdefault("HF_HOME", f"{policy.volume_mount_path.rstrip('/')}/hf")
        create = PodCreate(
            name=pod_name(request.job_id, request.attempt),
            image=policy.image,
            docker_args=start_command(
                trainer_command_for(self.trainer_command, policy.gpu_count),
                request.spec_uri,
                int(policy.max_duration_hours * 3600),
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
        pod, duplicates = self._create_once(create)
        self._spot[pod.id] = request.spot
        log.info("RunPod pod %s (%s) created: %s %s", pod.id, create.name, gpu, env[SPOT_ENV])
        info = self._info(pod, pod.id)
        return replace(info, duplicates_terminated=tuple(duplicates)) if duplicates else info

    def _create_once(self, create: PodCreate) -> tuple[RemotePod, list[str]]:
        """Create the attempt's pod, never two: a create whose answer was lost (a timeout, a 5xx)
        is followed by a lookup by the pod's unique name before any retry. Returns the pod and
        the ids of other pods of that name it found and terminated (the caller records them)."""
        uncertain: RunPodCreateUncertain | None = None
        for _ in range(self.create_attempts):
            try:
                pod = self.api.create_pod(create)
            except RunPodCreateUncertain as exc:
                uncertain = exc
                found = self.find_by_name(create.name)  # raises if RunPod cannot say: no retry
                if found:
                    log.warning("creating %s answered late (%s): found %s", create.name, exc, found[0].id)
                    return found[0], self._terminate_duplicates(create.name, found[0].id, found[1:])
                log.warning("creating %s failed (%s) and made no pod; trying again", create.name, exc)
                continue
            if uncertain is None:
                return pod, []
            # An earlier create's pod may have appeared since the lookup: keep the one we know.
            others = [p for p in self.find_by_name(create.name) if p.id != pod.id]
            return pod, self._terminate_duplicates(create.name, pod.id, others)
        raise RunPodUnavailableError(
            f"RunPod pod creation of {create.name}: no answer after {self.create_attempts} attempts "
            f"({uncertain}); RunPod may be down, try again later"
        )

    def find_by_name(self, name: str) -> list[RemotePod]:
        """Live pods of that exact name, oldest id first (RunPod does not enforce unique names)."""
        pods = [p for p in self.api.list_pods() if p.name == name and p.desired_status != "TERMINATED"]
        return sorted(pods, key=lambda p: p.id)

    def _terminate_duplicates(self, name: str, kept: str, others: list[RemotePod]) -> list[str]:
        done = []
        for other in others:
            log.error("a second pod %s for %s (kept %s): terminating it", other.id, name, kept)
            try:
                self.terminate(other.id)
            except PodTerminationError as exc:  # reported all the same; the monitor's cleanup
                log.error("%s", exc)  # lists the job's pods by name and the reaper finds it too
            done.append(other.id)
        return done

    def get(self, pod_id: str) -> PodInfo:
        return self._info(self.api.get_pod(pod_id), pod_id)

    def terminate(self, pod_id: str) -> None:
        """Terminate, then read the pod back: only a pod RunPod reports gone (absent or
        TERMINATED) counts as terminated; anything else raises `PodTerminationError`."""
        try:
            self.api.terminate_pod(pod_id)
            pod = self.api.get_pod(pod_id)
        except RunPodUnavailableError as exc:  # an outage: waiting may fix it
            raise RunPodTerminationUnavailable(
                pod_id, f"RunPod pod {pod_id}: termination not confirmed: {exc}"
            ) from exc
        except RunPodError as exc:
            raise PodTerminationError(
                pod_id, f"RunPod pod {pod_id}: termination not confirmed: {exc}"
            ) from exc
        if pod is not None and pod.desired_status != "TERMINATED":
            raise PodTerminationError(
                pod_id, f"RunPod pod {pod_id}: still {pod.desired_status} after podTerminate"
            )

    def list_pods(self, job_id: str | None = None) -> list[PodInfo]:
        pods = []
        for pod in self.api.list_pods():
            owner = job_id_of(pod.name)
            if owner is None or (job_id is not None and owner != job_id):
                continue
            pods.append(self._info(pod, pod.id))
        return pods
