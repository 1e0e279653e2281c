"""A faithful local fake of RunPod's GraphQL endpoint (DESIGN.md §8, §9).

Real GraphQL (graphql-core executes a schema with RunPod's type and field names), so a
misspelt field or a mistyped variable fails here as it would on RunPod.

Pods run as a container runtime runs them: the image's exec-form ENTRYPOINT and CMD are
read from `infra/Dockerfile.trainer` (or the `dockerfile` given), the pod's start command
(`dockerArgs`, split as a shell splits words) replaces CMD, and the result runs as a local
process with the pod's env plus what RunPod injects (`RUNPOD_POD_ID`, a pod-scoped
`RUNPOD_API_KEY`) and nothing of the caller's env but PATH/HOME/PYTHONPATH: a pod reaches
storage only through what the orchestrator put in its env. Each pod is its own session;
stopping a pod sends SIGTERM to its PID 1 alone (as `docker stop` does), SIGKILL ends
the whole session. `python` inside a pod is this interpreter (a shim on the pod's PATH).

The pod-scoped key may read, stop and terminate its own pod only (a pod removes itself
with it); anything else answers "Unauthorized".

Knobs: a Python method on `FakeRunPod`, or POST /admin/<knob> with a JSON body of the same
arguments (`python -m tests.fake_runpod` for a standalone fake). Stable API:

  interrupt(pod_id, mode="kill"|"term", grace_seconds=5)  spot interruption: EXITED, no runtime
  refuse_capacity(gpu_types=None, spot_only=True)         no machines (None: every GPU type);
  restore_capacity()                                       spot_only=False refuses on-demand too
  fail_auth(failing=True)                                  every call answers 401
  fail_for(seconds, status=500, operations=None)           every call (or only those GraphQL
                                                           root fields) answers HTTP `status`
                                                           (500, 429...) for `seconds`
  fail_next(count, status=502)                             the next `count` calls answer `status`
  recover()                                                end fail_for/fail_next/slow at once
  set_delay(seconds)                                       every answer comes `seconds` late
  answer_create_late(seconds, count=1)                     the next `count` creations make the
                                                           pod, then answer `seconds` late (past
                                                           the client's timeout)
  hold_in_created(count=1)                                 the next `count` pods stay CREATED:
                                                           no container, no runtime, billing
  mute_trainer(count=1)                                    the next `count` pods run a container
                                                           that never starts the trainer (no
                                                           heartbeat ever), until terminated
  set_cost(gpu_type, cost_per_hr)                          force a GPU type's costPerHr per GPU

Views (Python, and GET /admin/state): `live_pods()` (not terminated), `billing_pods()`
(CREATED or RUNNING: what RunPod charges for), `running_processes()`,
`billed_seconds(pod_id)`, `billed_usd(pod_id=None)` (one pod, or every pod: billed seconds x
costPerHr, so a test compares the registry's cost with the fake's billing),
`count_requests(operation)`, `pods_of(name_prefix)`.

Billing: a pod bills from its creation until it turns EXITED (its container ended, was
stopped or interrupted) or TERMINATED, whichever comes first.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import secrets
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from graphql import build_schema, graphql_sync

from tests.fake_runpod.serverless import Serverless

REPO = Path(__file__).resolve().parents[2]
SCHEMA = build_schema((Path(__file__).parent / "schema.graphql").read_text())
NO_CAPACITY = "There are no longer any instances available with the requested specifications"
TRAINER_DOCKERFILE = REPO / "infra" / "Dockerfile.trainer"
CREATE_OPERATIONS = frozenset({"podFindAndDeployOnDemand", "podRentInterruptable"})
# What a muted pod runs instead of its start command: a container that never starts the trainer.
MUTED_ARGV = [sys.executable, "-c", "import time; time.sleep(86400)"]

DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    # gpu type id: (minimum spot bid, on-demand price) per GPU, USD/hr
    "NVIDIA RTX A6000": (0.25, 0.49),
    "NVIDIA A40": (0.20, 0.44),
    "NVIDIA L40S": (0.40, 0.86),
    "NVIDIA A100 80GB PCIe": (0.80, 1.64),
    "NVIDIA H100 80GB HBM3": (1.50, 2.99),
}


class Unauthorized(Exception):
    def __init__(self, why: str = "") -> None:
        super().__init__(f"Unauthorized{': ' + why if why else ''}")


@dataclass(frozen=True)
class Image:
    """What a container runtime reads from an image: its exec-form ENTRYPOINT and CMD."""

    entrypoint: list[str]
    cmd: list[str]
    shell_entrypoint: bool = False  # shell form: Docker passes it neither CMD nor arguments

    def argv(self, docker_args: str) -> list[str]:
        """ENTRYPOINT + the pod's start command in place of CMD (RunPod's `dockerArgs`)."""
        if self.shell_entrypoint:
            return list(self.entrypoint)
        args = shlex.split(docker_args) if docker_args.strip() else list(self.cmd)
        return [*self.entrypoint, *args]


def parse_image(dockerfile: Path) -> Image:
    """The last ENTRYPOINT and CMD of a Dockerfile. Exec form (a JSON array) as written; shell
    form becomes `/bin/sh -c TEXT`, which, as in Docker, ignores CMD and any start command."""
    text = dockerfile.read_text().replace("\\\n", " ")
    values: dict[str, list[str]] = {"ENTRYPOINT": [], "CMD": []}
    shell_entrypoint = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":  # a new stage starts clean
            values = {"ENTRYPOINT": [], "CMD": []}
            shell_entrypoint = False
        if keyword not in values:
            continue
        rest = rest.strip()
        if rest.startswith("["):
            parsed = json.loads(rest)
            if not isinstance(parsed, list) or not all(isinstance(p, str) for p in parsed):
                raise ValueError(f"{dockerfile}: {keyword} must be a JSON array of strings: {rest}")
            values[keyword] = parsed
            if keyword == "ENTRYPOINT":
                shell_entrypoint = False
                values["CMD"] = []  # Docker: setting ENTRYPOINT resets an inherited CMD
        else:
            values[keyword] = ["/bin/sh", "-c", rest]
            if keyword == "ENTRYPOINT":
                shell_entrypoint = True
    if shell_entrypoint:
        return Image(entrypoint=values["ENTRYPOINT"], cmd=[], shell_entrypoint=True)
    return Image(entrypoint=values["ENTRYPOINT"], cmd=values["CMD"])


def status_change_text(when: float, what: str = "Rented by User") -> str:
    """RunPod's `lastStatusChange`: e.g. 'Rented by User: Sun Nov 29 2026 20:22:56 GMT+0000 (...)'."""
    stamp = time.strftime("%a %b %d %Y %H:%M:%S GMT+0000 (Coordinated Universal Time)", time.gmtime(when))
    return f"{what}: {stamp}"


@dataclass
class FakePod:
    id: str
    name: str
    gpu_type: str
    gpu_count: int
    spot: bool
    cost_per_hr: float
    image: str
    docker_args: str
    env: dict[str, str]
    created_at: float
    log_path: Path
    api_key: str = ""  # the pod-scoped key RunPod puts in the pod's env
    status: str = "RUNNING"
    process: subprocess.Popen[bytes] | None = None
    argv: list[str] = field(default_factory=list)
    interrupted: bool = False
    exit_code: int | None = None
    ended_at: float | None = None  # billing stops: EXITED or TERMINATED
    extra: dict[str, Any] = field(default_factory=dict)

    def refresh(self) -> None:
        if self.status == "RUNNING" and self.process is not None:
            code = self.process.poll()
            if code is not None:
                self.exit_code = code
                self.status = "EXITED"
                self.end()

    def end(self, when: float | None = None) -> None:
        if self.ended_at is None:
            self.ended_at = when if when is not None else time.time()

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def billing(self) -> bool:
        self.refresh()
        return self.status in ("CREATED", "RUNNING")

    def billed_seconds(self, now: float | None = None) -> float:
        end = self.ended_at if self.ended_at is not None else (now or time.time())
        return max(0.0, end - self.created_at)

    def billed_usd(self, now: float | None = None) -> float:
        return self.cost_per_hr * self.billed_seconds(now) / 3600

    def as_graphql(self) -> dict[str, Any]:
        self.refresh()
        running = self.status == "RUNNING" and self.process is not None
        return {
            "id": self.id,
            "name": self.name,
            "desiredStatus": self.status,
            "costPerHr": self.cost_per_hr,
            "imageName": self.image,
            "dockerArgs": self.docker_args,
            "env": [f"{k}={v}" for k, v in self.env.items()],
            "gpuCount": self.gpu_count,
            "machine": {"gpuDisplayName": self.gpu_type.removeprefix("NVIDIA "), "podHostId": self.id},
            # A pod not started yet (CREATED), exited or interrupted has no runtime, as on RunPod.
            "runtime": {"uptimeInSeconds": int(time.time() - self.created_at)} if running else None,
            "lastStatusChange": status_change_text(self.created_at),
        }


class FakeRunPod:
    """State and knobs; `serve()` exposes it over HTTP on 127.0.0.1."""

    def __init__(
        self,
        *,
        api_key: str = "fake-runpod-key",
        workdir: Path | None = None,
        pod_env: dict[str, str] | None = None,
        dockerfile: Path | None = None,
    ) -> None:
        self.api_key = api_key
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="fake-runpod-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        # Environment every pod process gets besides its own env (the "image" environment).
        self.pod_env = dict(pod_env or {})
        self.dockerfile = Path(dockerfile or TRAINER_DOCKERFILE)
        self.prices: dict[str, tuple[float, float]] = dict(DEFAULT_PRICES)
        self.pods: dict[str, FakePod] = {}
        self.requests: list[dict[str, Any]] = []
        self.refused_spot: set[str] = set()
        self.refused_on_demand: set[str] = set()
        self.refuse_all_spot = False
        self.auth_failing = False
        self.failures_left = 0
        self.failure_status = 502
        self.failing_until = 0.0
        self.failing_operations: frozenset[str] | None = None
        self.delay_seconds = 0.0
        self.late_creates_left = 0
        self.late_create_seconds = 0.0
        self.created_holds_left = 0
        self.mutes_left = 0
        self.cost_override: dict[str, float] = {}
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""
        # RunPod Serverless: templates, endpoints, volumes, workers (tests/fake_runpod/serverless.py).
        self.serverless = Serverless(self.workdir, self.pod_env)

    @property
    def image(self) -> Image:
        return parse_image(self.dockerfile)

    # -- knobs -------------------------------------------------------------------------------------

    def refuse_capacity(self, gpu_types: list[str] | None = None, *, spot_only: bool = True) -> None:
        """No machines for these GPU types (all when None); on-demand too unless spot_only."""
        with self._lock:
            if gpu_types is None:
                self.refuse_all_spot = True
                gpu_types = list(self.prices)
            self.refused_spot.update(gpu_types)
            if not spot_only:
                self.refused_on_demand.update(gpu_types)

    def restore_capacity(self) -> None:
        with self._lock:
            self.refused_spot.clear()
            self.refused_on_demand.clear()
            self.refuse_all_spot = False

    def fail_auth(self, failing: bool = True) -> None:
        self.auth_failing = failing

    def fail_next(self, count: int, status: int = 502) -> None:
        with self._lock:
            self.failures_left, self.failure_status = count, status

    def fail_for(self, seconds: float, status: int = 500, operations: list[str] | None = None) -> None:
        """An outage: every call (or only calls of these root fields, e.g. ["podTerminate"])
        answers HTTP `status` (500, 502, 429...) for `seconds`, then the API recovers by itself."""
        with self._lock:
            self.failing_until = time.monotonic() + seconds
            self.failure_status = status
            self.failing_operations = frozenset(operations) if operations else None

    def recover(self) -> None:
        """End every outage and slowness knob now."""
        with self._lock:
            self.failing_until = 0.0
            self.failures_left = 0
            self.failing_operations = None
            self.delay_seconds = 0.0
            self.late_creates_left = 0

    def set_delay(self, seconds: float) -> None:
        """A slow API: every answer comes `seconds` late."""
        self.delay_seconds = seconds

    def answer_create_late(self, seconds: float, count: int = 1) -> None:
        """The next `count` pod creations make the pod at once but answer `seconds` later (set it
        past the client's timeout: the client sees a timeout although the pod exists)."""
        with self._lock:
            self.late_creates_left, self.late_create_seconds = count, seconds

    def hold_in_created(self, count: int = 1) -> None:
        """The next `count` pods stay CREATED: billed, no container, no runtime (uptime 0)."""
        with self._lock:
            self.created_holds_left = count

    def mute_trainer(self, count: int = 1) -> None:
        """The next `count` pods run a container that never starts the trainer: RUNNING, with a
        runtime, and no heartbeat ever."""
        with self._lock:
            self.mutes_left = count

    def set_cost(self, gpu_type: str, cost_per_hr: float) -> None:
        """Force a pod's reported costPerHr (per GPU) for a GPU type, spot or not."""
        self.cost_override[gpu_type] = cost_per_hr

    def interrupt(self, pod_id: str, *, mode: str = "kill", grace_seconds: float = 5.0) -> None:
        """A spot interruption: SIGKILL at once ("kill"), or SIGTERM then SIGKILL after the grace
        ("term"). The pod turns EXITED with no runtime, without anyone calling stop, once its
        container has ended (during the grace it still reads RUNNING, as on RunPod)."""
        with self._lock:
            pod = self.pods[pod_id]
            pod.interrupted = True
            proc = pod.process
            if proc is None and pod.status in ("RUNNING", "CREATED"):
                pod.status = "EXITED"
                pod.end()
        if proc is None or proc.poll() is not None:
            return
        if mode == "kill":
            _killpg(proc, signal.SIGKILL)
            proc.wait()
            return
        _killpg(proc, signal.SIGTERM)

        def _finish() -> None:
            try:
                proc.wait(timeout=grace_seconds)
            except subprocess.TimeoutExpired:
                _killpg(proc, signal.SIGKILL)
                proc.wait()

        threading.Thread(target=_finish, daemon=True).start()

    # -- views -------------------------------------------------------------------------------------

    def live_pods(self) -> list[FakePod]:
        """Pods not terminated (what a RunPod account would still show)."""
        with self._lock:
            for pod in self.pods.values():
                pod.refresh()
            return [p for p in self.pods.values() if p.status != "TERMINATED"]

    def billing_pods(self) -> list[FakePod]:
        """Pods RunPod would be charging for now (CREATED or RUNNING)."""
        with self._lock:
            return [p for p in self.pods.values() if p.billing]

    def running_processes(self) -> list[FakePod]:
        with self._lock:
            return [p for p in self.pods.values() if p.alive]

    def billed_seconds(self, pod_id: str) -> float:
        with self._lock:
            pod = self.pods[pod_id]
            pod.refresh()
            return pod.billed_seconds()

    def billed_usd(self, pod_id: str | None = None) -> float:
        """What RunPod charged (so far) for one pod, or for every pod: billed seconds x costPerHr."""
        with self._lock:
            pods = [self.pods[pod_id]] if pod_id is not None else list(self.pods.values())
            for pod in pods:
                pod.refresh()
            return sum(p.billed_usd() for p in pods)

    def count_requests(self, operation: str | None = None) -> int:
        with self._lock:
            return sum(1 for r in self.requests if operation is None or r["operation"] == operation)

    def pods_of(self, name_prefix: str) -> list[FakePod]:
        with self._lock:
            return [p for p in self.pods.values() if p.name.startswith(name_prefix)]

    def state(self) -> dict[str, Any]:
        with self._lock:
            return {
                "pods": [
                    {
                        **p.as_graphql(),
                        "spot": p.spot,
                        "interrupted": p.interrupted,
                        "exitCode": p.exit_code,
                        "billedSeconds": p.billed_seconds(),
                        "billedUsd": p.billed_usd(),
                        "argv": p.argv,
                    }
                    for p in self.pods.values()
                ],
                "requests": len(self.requests),
                "billedUsd": sum(p.billed_usd() for p in self.pods.values()),
            }

    # -- GraphQL resolvers -------------------------------------------------------------------------

    def _create(self, data: dict[str, Any], *, spot: bool) -> dict[str, Any]:
        gpu = data.get("gpuTypeId")
        if not gpu:
            raise ValueError("gpuTypeId is required")
        if gpu not in self.prices:
            raise ValueError(f"Unknown GPU type {gpu!r}")
        if not data.get("imageName"):
            raise ValueError("imageName is required")
        count = int(data.get("gpuCount") or 1)
        min_bid, on_demand = self.prices[gpu]
        with self._lock:
            refused = (
                (self.refuse_all_spot or gpu in self.refused_spot) if spot else gpu in self.refused_on_demand
            )
        if refused:
            raise RuntimeError(NO_CAPACITY)
        if spot:
            bid = float(data["bidPerGpu"])
            if bid < min_bid:
                raise ValueError(f"Your bid of {bid} is below the minimum bid price of {min_bid} for {gpu}")
            per_gpu = bid
        else:
            per_gpu = on_demand
        per_gpu = self.cost_override.get(gpu, per_gpu)
        env = {item["key"]: item["value"] for item in data.get("env") or []}
        pod_id = f"fake{next(self._ids):04d}{os.urandom(3).hex()}"
        with self._lock:
            hold = self.created_holds_left > 0
            self.created_holds_left -= 1 if hold else 0
            mute = not hold and self.mutes_left > 0
            self.mutes_left -= 1 if mute else 0
        pod = FakePod(
            id=pod_id,
            name=data.get("name") or pod_id,
            gpu_type=gpu,
            gpu_count=count,
            spot=spot,
            cost_per_hr=round(per_gpu * count, 4),
            image=data["imageName"],
            docker_args=data.get("dockerArgs") or "",
            env=env,
            created_at=time.time(),
            log_path=self.workdir / f"{pod_id}.log",
            api_key=f"rp-pod-{pod_id}-{secrets.token_hex(12)}",
            status="CREATED" if hold else "RUNNING",
            extra={
                k: data.get(k)
                for k in ("cloudType", "containerDiskInGb", "networkVolumeId", "volumeMountPath")
            },
        )
        with self._lock:
            self.pods[pod_id] = pod
        if not hold:
            pod.argv = list(MUTED_ARGV) if mute else self.image.argv(pod.docker_args)
            pod.process = self._launch(pod)
        return pod.as_graphql()

    def _launch(self, pod: FakePod) -> subprocess.Popen[bytes] | None:
        if not pod.argv:
            return None
        env = {
            # `python` of the "image": this interpreter, through a shim on the pod's PATH.
            "PATH": f"{self.workdir / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": os.environ.get("HOME", "/root"),
            "LANG": "C.UTF-8",
            "PYTHONPATH": str(REPO),
            "PYTHONUNBUFFERED": "1",
            **self.pod_env,
            **pod.env,
            # What RunPod puts in every pod (over anything the caller set), as RunPod does.
            "RUNPOD_POD_ID": pod.id,
            "RUNPOD_API_KEY": pod.api_key,
            "RUNPOD_API_BASE_URL": self.url,  # the real one needs no such variable: its default
        }
        with open(pod.log_path, "wb") as log:
            proc = subprocess.Popen(
                pod.argv, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

        def watch() -> None:  # billing stops the moment the container ends
            code = proc.wait()
            with self._lock:
                if pod.status == "RUNNING":
                    pod.exit_code = code
                    pod.status = "EXITED"
                pod.end()

        threading.Thread(target=watch, daemon=True, name=f"fake-pod-{pod.id}").start()
        return proc

    def _pod(self, pod_id: str) -> FakePod:
        with self._lock:
            pod = self.pods.get(pod_id)
        if pod is None:
            raise LookupError(f"Pod {pod_id} not found")
        return pod

    def _get(self, pod_id: str) -> dict[str, Any] | None:
        pod = self._pod(pod_id)
        if pod.status == "TERMINATED":
            return None
        return pod.as_graphql()

    def terminate(self, pod_id: str, *, from_inside: bool = False) -> None:
        """Delete the pod: billing stops, its whole session is killed. From inside the pod (its
        own key) the answer goes out first, then the container dies, as on RunPod."""
        pod = self._pod(pod_id)
        with self._lock:
            pod.refresh()
            pod.status = "TERMINATED"
            pod.end()
        proc = pod.process
        if proc is None or proc.poll() is not None:
            return
        if from_inside:
            threading.Timer(0.2, lambda: (_killpg(proc, signal.SIGKILL), proc.wait())).start()
            return
        _killpg(proc, signal.SIGKILL)
        proc.wait()

    def _stop(self, pod_id: str) -> dict[str, Any]:
        pod = self._pod(pod_id)
        if pod.status == "TERMINATED":
            raise LookupError(f"Pod {pod_id} not found")
        proc = pod.process
        if proc is not None and proc.poll() is None:
            _killpg(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                _killpg(proc, signal.SIGKILL)
                proc.wait()
        with self._lock:
            pod.refresh()
            pod.status = "EXITED"
            pod.end()
        return pod.as_graphql()

    def _root(self) -> Any:
        fake = self

        def account_only(info: Any, what: str) -> None:
            scope = info.context.get("pod_scope")
            if scope is not None:
                raise Unauthorized(f"a pod-scoped API key (pod {scope}) cannot {what}")

        def own_pod(info: Any, pod_id: str) -> None:
            scope = info.context.get("pod_scope")
            if scope is not None and scope != pod_id:
                raise Unauthorized(f"a pod-scoped API key (pod {scope}) cannot act on pod {pod_id}")

        class Root:
            def myself(self, info: Any) -> dict[str, Any]:
                account_only(info, "list pods")
                with fake._lock:
                    pods = [p.as_graphql() for p in fake.pods.values() if p.status != "TERMINATED"]
                return {"id": "fake-user", "pods": pods, **fake.serverless.myself_fields()}

            def pod(self, info: Any, input: dict[str, Any] | None = None) -> dict[str, Any] | None:  # noqa: A002
                pod_id = (input or {}).get("podId", "")
                own_pod(info, pod_id)
                return fake._get(pod_id)

            def gpuTypes(self, info: Any, input: dict[str, Any] | None = None) -> list[dict[str, Any]]:  # noqa: N802, A002
                account_only(info, "read GPU types")
                wanted = (input or {}).get("id")
                out = []
                for gpu, (bid, price) in fake.prices.items():
                    if wanted and gpu != wanted:
                        continue

                    def lowest(
                        info: Any, input: dict[str, Any] | None = None, b: float = bid, p: float = price
                    ):  # noqa: A002
                        n = int((input or {}).get("gpuCount") or 1)
                        return {
                            "minimumBidPrice": b * n,
                            "uninterruptablePrice": p * n,
                            "stockStatus": "High",
                        }

                    out.append(
                        {
                            "id": gpu,
                            "displayName": gpu.removeprefix("NVIDIA "),
                            "memoryInGb": 48,
                            "secureCloud": True,
                            "communityCloud": True,
                            "lowestPrice": lowest,
                        }
                    )
                return out

            def podFindAndDeployOnDemand(self, info: Any, input: dict[str, Any] | None = None):  # noqa: N802, A002
                account_only(info, "create pods")
                return fake._create(input or {}, spot=False)

            def podRentInterruptable(self, info: Any, input: dict[str, Any]):  # noqa: N802, A002
                account_only(info, "create pods")
                return fake._create(input, spot=True)

            def podStop(self, info: Any, input: dict[str, Any]):  # noqa: N802, A002
                own_pod(info, input["podId"])
                return fake._stop(input["podId"])

            def saveTemplate(self, info: Any, input: dict[str, Any] | None = None):  # noqa: N802, A002
                account_only(info, "save templates")
                return fake.serverless.save_template(input or {})

            def saveEndpoint(self, info: Any, input: dict[str, Any] | None = None):  # noqa: N802, A002
                account_only(info, "save endpoints")
                return fake.serverless.save_endpoint(input or {})

            def podTerminate(self, info: Any, input: dict[str, Any]) -> None:  # noqa: N802, A002
                own_pod(info, input["podId"])
                fake.terminate(input["podId"], from_inside=info.context.get("pod_scope") is not None)

        return Root()

    def execute(self, body: dict[str, Any], pod_scope: str | None = None) -> dict[str, Any]:
        result = graphql_sync(
            SCHEMA,
            body.get("query") or "",
            root_value=self._root(),
            context_value={"pod_scope": pod_scope},
            variable_values=body.get("variables"),
            operation_name=body.get("operationName"),
        )
        out: dict[str, Any] = {"data": result.data}
        if result.errors:
            out["errors"] = [{"message": e.message, "path": e.path} for e in result.errors]
        return out

    # -- HTTP --------------------------------------------------------------------------------------

    def serve(self, port: int = 0) -> str:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def _send(self, status: int, body: Any) -> None:
                raw = json.dumps(body, default=str).encode()
                # The client may have given up (a late answer): nobody is left to read it.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(raw)))
                    self.end_headers()
                    self.wfile.write(raw)

            def _serverless(self, method: str, body: bytes) -> bool:
                # /v2/<endpoint id>/...: RunPod's endpoint API ($RUNPOD_ENDPOINT_BASE_URL).
                if not self.path.startswith("/v2/"):
                    return False
                endpoint_id, _, rest = self.path.removeprefix("/v2/").partition("/")
                if self.headers.get("Authorization", "") != f"Bearer {fake.api_key}" or fake.auth_failing:
                    self._send(401, {"error": "Unauthorized"})
                else:
                    self._send(*fake.serverless.endpoint_http(method, endpoint_id, rest, body))
                return True

            def do_GET(self) -> None:  # noqa: N802
                if self._serverless("GET", b""):
                    return
                if self.path == "/admin/state":
                    self._send(200, fake.state())
                else:
                    self._send(404, {"error": "not found"})

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if self._serverless("POST", raw):
                    return
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    self._send(400, {"errors": [{"message": "Body is not JSON"}]})
                    return
                if self.path.startswith("/admin/"):
                    self._send(*fake._admin(self.path.removeprefix("/admin/"), body))
                elif self.path == "/graphql":
                    self._send(*fake._graphql(self.headers.get("Authorization", ""), body))
                else:
                    self._send(404, {"error": "not found"})

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="fake-runpod")
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._write_image_bin()
        return self.url

    def _write_image_bin(self) -> None:
        bin_dir = self.workdir / "bin"
        bin_dir.mkdir(exist_ok=True)
        for name in ("python", "python3"):
            # A script, not a symlink: a venv interpreter finds its pyvenv.cfg only by its own path.
            shim = bin_dir / name
            shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
            shim.chmod(0o755)

    def _scope(self, authorization: str) -> tuple[bool, str | None]:
        """(authorized, pod id of a pod-scoped key or None for the account key)."""
        if self.auth_failing:
            return False, None
        if authorization == f"Bearer {self.api_key}":
            return True, None
        with self._lock:
            for pod in self.pods.values():
                if pod.api_key and authorization == f"Bearer {pod.api_key}":
                    return True, pod.id
        return False, None

    def _graphql(self, authorization: str, body: dict[str, Any]) -> tuple[int, Any]:
        query = str(body.get("query") or "")
        operation = _operation_of(query)
        with self._lock:
            failing = self.failures_left > 0
            if failing:
                self.failures_left -= 1
            elif time.monotonic() < self.failing_until and (
                self.failing_operations is None or operation in self.failing_operations
            ):
                failing = True
            late = operation in CREATE_OPERATIONS and self.late_creates_left > 0 and not failing
            if late:
                self.late_creates_left -= 1
            status = self.failure_status if failing else 200
            self.requests.append({"operation": operation, "time": time.time(), "status": status})
        if self.delay_seconds:
            time.sleep(self.delay_seconds)
        if failing:
            return status, {"errors": [{"message": "upstream unavailable"}]}
        authorized, scope = self._scope(authorization)
        if not authorized:
            with self._lock:
                self.requests[-1]["status"] = 401
            return 401, {"errors": [{"message": "Unauthorized"}]}
        result = self.execute(body, pod_scope=scope)
        if late:
            time.sleep(self.late_create_seconds)
        return 200, result

    def _admin(self, knob: str, body: dict[str, Any]) -> tuple[int, Any]:
        actions = {
            "interrupt": lambda: self.interrupt(
                body["pod_id"], mode=body.get("mode", "kill"), grace_seconds=body.get("grace_seconds", 5.0)
            ),
            "refuse_capacity": lambda: self.refuse_capacity(
                body.get("gpu_types"), spot_only=body.get("spot_only", True)
            ),
            "restore_capacity": self.restore_capacity,
            "terminate": lambda: self.terminate(body["pod_id"]),
            "fail_auth": lambda: self.fail_auth(body.get("failing", True)),
            "fail_next": lambda: self.fail_next(body["count"], body.get("status", 502)),
            "fail_for": lambda: self.fail_for(
                body["seconds"], body.get("status", 500), body.get("operations")
            ),
            "recover": self.recover,
            "delay": lambda: self.set_delay(body["seconds"]),
            "answer_create_late": lambda: self.answer_create_late(body["seconds"], body.get("count", 1)),
            "hold_in_created": lambda: self.hold_in_created(body.get("count", 1)),
            "mute_trainer": lambda: self.mute_trainer(body.get("count", 1)),
            "set_cost": lambda: self.set_cost(body["gpu_type"], body["cost_per_hr"]),
        }
        if knob not in actions:
            return 404, {"error": f"unknown knob {knob!r}; one of {sorted(actions)}"}
        actions[knob]()
        return 200, {"ok": True}

    def shutdown(self) -> list[str]:
        """Stop serving and kill every pod process; returns the ids of pods that were still alive
        (a terminated pod whose container the runtime is still killing is not one of them)."""
        alive = [p.id for p in self.running_processes() if p.status != "TERMINATED"]
        self.serverless.shutdown()
        with self._lock:
            pods = list(self.pods.values())
        for pod in pods:
            if pod.process is not None and pod.process.poll() is None:
                _killpg(pod.process, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    pod.process.wait(timeout=10)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        return alive


def _operation_of(query: str) -> str:
    for name in (
        "saveTemplate",
        "saveEndpoint",
        "podFindAndDeployOnDemand",
        "podRentInterruptable",
        "podTerminate",
        "podStop",
        "podResume",
        "podBidResume",
        "gpuTypes",
        "myself",
        "pod",
    ):
        if name in query:
            return name
    return "unknown"


def _container_pids(proc: subprocess.Popen[bytes]) -> list[int]:
    """Every process of the pod's "container": its session (started with start_new_session). A
    session, not a process group: a program in the pod may move into a group of its own."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
                if os.getsid(int(entry)) == proc.pid:
                    pids.append(int(entry))
    return pids


def _killpg(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """As a container runtime does: `docker stop`'s SIGTERM goes to PID 1 alone (the pod's
    program must pass it on); SIGKILL ends every process in the container."""
    targets = [proc.pid] if sig == signal.SIGTERM else [proc.pid, *_container_pids(proc)]
    for pid in dict.fromkeys(targets):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
