"""A faithful local fake of RunPod's GraphQL endpoint (DESIGN.md §8, §9).

Real GraphQL (graphql-core executes a schema with RunPod's type and field names), so a
misspelt field or a mistyped variable fails here as it would on RunPod. Its pods are
local subprocesses running the pod's `dockerArgs` with the pod's env (and nothing of
the caller's env but PATH/HOME/PYTHONPATH): a pod reaches storage only through what
the orchestrator put in its env.

Knobs (Python API on `FakeRunPod`, or POST /admin/<knob> with a JSON body):
interrupt a pod (SIGKILL, or SIGTERM then SIGKILL after a grace), refuse capacity for
GPU types (spot only or both), fail auth (401), answer 5xx N times, be slow, set prices.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
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

REPO = Path(__file__).resolve().parents[2]
SCHEMA = build_schema((Path(__file__).parent / "schema.graphql").read_text())
NO_CAPACITY = "There are no longer any instances available with the requested specifications"

DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    # gpu type id: (minimum spot bid, on-demand price) per GPU, USD/hr
    "NVIDIA RTX A6000": (0.25, 0.49),
    "NVIDIA A40": (0.20, 0.44),
    "NVIDIA L40S": (0.40, 0.86),
    "NVIDIA A100 80GB PCIe": (0.80, 1.64),
    "NVIDIA H100 80GB HBM3": (1.50, 2.99),
}


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
    status: str = "RUNNING"
    process: subprocess.Popen[bytes] | None = None
    interrupted: bool = False
    exit_code: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def refresh(self) -> None:
        if self.status == "RUNNING" and self.process is not None:
            code = self.process.poll()
            if code is not None:
                self.exit_code = code
                self.status = "EXITED"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def as_graphql(self) -> dict[str, Any]:
        self.refresh()
        running = self.status == "RUNNING"
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
            # An exited or interrupted pod has no runtime, as on RunPod.
            "runtime": {"uptimeInSeconds": int(time.time() - self.created_at)} if running else None,
        }


class FakeRunPod:
    """State and knobs; `serve()` exposes it over HTTP on 127.0.0.1."""

    def __init__(
        self,
        *,
        api_key: str = "fake-runpod-key",
        workdir: Path | None = None,
        pod_env: dict[str, str] | None = None,
    ) -> None:
        self.api_key = api_key
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="fake-runpod-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        # Environment every pod process gets besides its own env (the "image" environment).
        self.pod_env = dict(pod_env or {})
        self.prices: dict[str, tuple[float, float]] = dict(DEFAULT_PRICES)
        self.pods: dict[str, FakePod] = {}
        self.requests: list[dict[str, Any]] = []
        self.refused_spot: set[str] = set()
        self.refused_on_demand: set[str] = set()
        self.refuse_all_spot = False
        self.auth_failing = False
        self.failures_left = 0
        self.failure_status = 502
        self.delay_seconds = 0.0
        self.cost_override: dict[str, float] = {}
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

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
        self.failures_left, self.failure_status = count, status

    def set_delay(self, seconds: float) -> None:
        self.delay_seconds = seconds

    def set_cost(self, gpu_type: str, cost_per_hr: float) -> None:
        """Force a pod's reported costPerHr (per GPU) for a GPU type, spot or not."""
        self.cost_override[gpu_type] = cost_per_hr

    def interrupt(self, pod_id: str, *, mode: str = "kill", grace_seconds: float = 5.0) -> None:
        """A spot interruption: SIGKILL at once ("kill"), or SIGTERM then SIGKILL after the grace
        ("term"). The pod turns EXITED with no runtime, without anyone calling stop."""
        with self._lock:
            pod = self.pods[pod_id]
            pod.interrupted = True
            proc = pod.process
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
        """Pods not terminated (what a RunPod account would still bill or show)."""
        with self._lock:
            for pod in self.pods.values():
                pod.refresh()
            return [p for p in self.pods.values() if p.status != "TERMINATED"]

    def running_processes(self) -> list[FakePod]:
        with self._lock:
            return [p for p in self.pods.values() if p.alive]

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
                    {**p.as_graphql(), "spot": p.spot, "interrupted": p.interrupted, "exitCode": p.exit_code}
                    for p in self.pods.values()
                ],
                "requests": len(self.requests),
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
            extra={
                k: data.get(k)
                for k in ("cloudType", "containerDiskInGb", "networkVolumeId", "volumeMountPath")
            },
        )
        pod.process = self._launch(pod)
        with self._lock:
            self.pods[pod_id] = pod
        return pod.as_graphql()

    def _launch(self, pod: FakePod) -> subprocess.Popen[bytes] | None:
        if not pod.docker_args.strip():
            return None
        argv = [sys.executable if a in ("python", "python3") else a for a in shlex.split(pod.docker_args)]
        env = {
            # `python` and `runpodctl` of the "image": this interpreter and a shim that removes
            # the pod through this fake (what RunPod's runpodctl does with the pod-scoped key).
            "PATH": f"{self.workdir / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": os.environ.get("HOME", "/root"),
            "LANG": "C.UTF-8",
            "PYTHONPATH": str(REPO),
            "PYTHONUNBUFFERED": "1",
            "RUNPOD_POD_ID": pod.id,
            "FAKE_RUNPOD_URL": self.url,
            **self.pod_env,
            **pod.env,
        }
        log = open(pod.log_path, "wb")  # noqa: SIM115 - the child owns it
        try:
            return subprocess.Popen(
                argv, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        finally:
            log.close()

    def _get(self, pod_id: str) -> dict[str, Any] | None:
        with self._lock:
            pod = self.pods.get(pod_id)
        if pod is None:
            raise LookupError(f"Pod {pod_id} not found")
        if pod.status == "TERMINATED":
            return None
        return pod.as_graphql()

    def terminate(self, pod_id: str) -> None:
        with self._lock:
            pod = self.pods.get(pod_id)
        if pod is None:
            raise LookupError(f"Pod {pod_id} not found")
        if pod.process is not None and pod.process.poll() is None:
            _killpg(pod.process, signal.SIGKILL)
            pod.process.wait()
        pod.refresh()
        pod.status = "TERMINATED"

    def _terminate_async(self, pod_id: str) -> None:
        # Called from inside the pod (runpodctl): answer first, then kill the caller.
        threading.Timer(0.2, lambda: self.terminate(pod_id)).start()

    def _stop(self, pod_id: str) -> dict[str, Any]:
        with self._lock:
            pod = self.pods.get(pod_id)
        if pod is None or pod.status == "TERMINATED":
            raise LookupError(f"Pod {pod_id} not found")
        if pod.process is not None and pod.process.poll() is None:
            _killpg(pod.process, signal.SIGTERM)
            try:
                pod.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                _killpg(pod.process, signal.SIGKILL)
                pod.process.wait()
        pod.refresh()
        pod.status = "EXITED"
        return pod.as_graphql()

    def _root(self) -> Any:
        fake = self

        class Root:
            def myself(self, info: Any) -> dict[str, Any]:
                with fake._lock:
                    pods = [p.as_graphql() for p in fake.pods.values() if p.status != "TERMINATED"]
                return {"id": "fake-user", "pods": pods}

            def pod(self, info: Any, input: dict[str, Any] | None = None) -> dict[str, Any] | None:  # noqa: A002
                return fake._get((input or {}).get("podId", ""))

            def gpuTypes(self, info: Any, input: dict[str, Any] | None = None) -> list[dict[str, Any]]:  # noqa: N802, A002
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
                return fake._create(input or {}, spot=False)

            def podRentInterruptable(self, info: Any, input: dict[str, Any]):  # noqa: N802, A002
                return fake._create(input, spot=True)

            def podStop(self, info: Any, input: dict[str, Any]):  # noqa: N802, A002
                return fake._stop(input["podId"])

            def podTerminate(self, info: Any, input: dict[str, Any]) -> None:  # noqa: N802, A002
                fake.terminate(input["podId"])

        return Root()

    def execute(self, body: dict[str, Any]) -> dict[str, Any]:
        result = graphql_sync(
            SCHEMA,
            body.get("query") or "",
            root_value=self._root(),
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
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self) -> None:  # noqa: N802
                if self.path == "/admin/state":
                    self._send(200, fake.state())
                else:
                    self._send(404, {"error": "not found"})

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
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
        shim = bin_dir / "runpodctl"
        shim.write_text(
            f"#!{sys.executable}\n"
            "import json, os, sys, urllib.request\n"
            "if sys.argv[1:3] != ['remove', 'pod']:\n"
            "    sys.exit('fake runpodctl: only `remove pod ID`')\n"
            "req = urllib.request.Request(os.environ['FAKE_RUNPOD_URL'] + '/admin/terminate',\n"
            "    data=json.dumps({'pod_id': sys.argv[3]}).encode(), method='POST')\n"
            "urllib.request.urlopen(req, timeout=10)\n"
        )
        shim.chmod(0o755)

    def _graphql(self, authorization: str, body: dict[str, Any]) -> tuple[int, Any]:
        query = str(body.get("query") or "")
        operation = _operation_of(query)
        with self._lock:
            self.requests.append({"operation": operation, "time": time.time()})
            failing = self.failures_left > 0
            if failing:
                self.failures_left -= 1
        if self.delay_seconds:
            time.sleep(self.delay_seconds)
        if self.auth_failing or authorization != f"Bearer {self.api_key}":
            return 401, {"errors": [{"message": "Unauthorized"}]}
        if failing:
            return self.failure_status, {"errors": [{"message": "upstream unavailable"}]}
        return 200, self.execute(body)

    def _admin(self, knob: str, body: dict[str, Any]) -> tuple[int, Any]:
        actions = {
            "interrupt": lambda: self.interrupt(
                body["pod_id"], mode=body.get("mode", "kill"), grace_seconds=body.get("grace_seconds", 5.0)
            ),
            "refuse_capacity": lambda: self.refuse_capacity(
                body.get("gpu_types"), spot_only=body.get("spot_only", True)
            ),
            "restore_capacity": self.restore_capacity,
            "terminate": lambda: self._terminate_async(body["pod_id"]),
            "fail_auth": lambda: self.fail_auth(body.get("failing", True)),
            "fail_next": lambda: self.fail_next(body["count"], body.get("status", 502)),
            "delay": lambda: self.set_delay(body["seconds"]),
            "set_cost": lambda: self.set_cost(body["gpu_type"], body["cost_per_hr"]),
        }
        if knob not in actions:
            return 404, {"error": f"unknown knob {knob!r}; one of {sorted(actions)}"}
        actions[knob]()
        return 200, {"ok": True}

    def shutdown(self) -> list[str]:
        """Stop serving and kill every pod process; returns the ids of pods that were still alive."""
        alive = [p.id for p in self.running_processes()]
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
    session, not a process group: `timeout` in the start command moves into a group of its own."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
                if os.getsid(int(entry)) == proc.pid:
                    pids.append(int(entry))
    return pids


def _killpg(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """As a container runtime does: `docker stop`'s SIGTERM goes to PID 1 alone (the start
    command must pass it on); SIGKILL ends every process in the container."""
    targets = [proc.pid] if sig == signal.SIGTERM else [proc.pid, *_container_pids(proc)]
    for pid in dict.fromkeys(targets):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
