"""RunPod Serverless in the fake: templates, endpoints, network volumes, workers (issue 24).

GraphQL, with RunPod's names: `myself { endpoints {...} podTemplates {...} networkVolumes
{...} }`, `saveTemplate(input: SaveTemplateInput)` (the env list replaces the template's
whole env) and `saveEndpoint(input: EndpointInput)`. Saving a template starts a rolling
release of every endpoint on it: its workers are replaced by workers with the new env
(here, one worker per endpoint, `workersMin` ignored).

A worker is `python -m tests.fake_runpod.vllm_worker`: our OpenAI-compatible server,
configured from worker-vllm's env as worker-vllm would (and refusing what vLLM refuses).
A network volume is a bucket on an S3-compatible store (SeaweedFS in the tests): the
volume's S3 API is that store, and a worker reads `/runpod-volume/...` from it.

HTTP, under `/v2/<endpoint id>/` with the account key as `Authorization: Bearer`: `health`
(RunPod's shape: jobs and workers counts), `runsync` (worker-vllm's `openai_route` input)
and `openai/v1/...`, proxied to a ready worker.

Knobs: `fail_openai(count, status=500)` the next `count` OpenAI-route calls answer
`status`; views: `worker_env(endpoint_id)`, `releases` (template id per release).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]


@dataclass
class VolumeStore:
    """The S3-compatible store that holds every network volume (one bucket per volume)."""

    endpoint_url: str
    access_key: str
    secret_key: str


@dataclass
class FakeWorker:
    id: str
    env: dict[str, str]
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    ready: bool = False

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def state(self) -> str:
        if not self.alive:
            return "unhealthy"
        if self.ready:
            return "idle"
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=1).status_code == 200:
                self.ready = True
                return "idle"
        return "initializing"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(worker: FakeWorker) -> None:
    if worker.alive:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.process.wait(timeout=10)


class Serverless:
    """State of the fake's serverless side; `FakeRunPod.serverless`."""

    def __init__(self, workdir: Path, pod_env: dict[str, str]) -> None:
        self.workdir = workdir
        self.pod_env = pod_env
        self.templates: dict[str, dict[str, Any]] = {}
        self.endpoints: dict[str, dict[str, Any]] = {}
        self.volumes: dict[str, dict[str, Any]] = {}
        self.workers: dict[str, FakeWorker] = {}  # endpoint id -> its worker
        self.store: VolumeStore | None = None
        self.releases: list[str] = []
        self.openai_failures_left = 0
        self.openai_failure_status = 500
        self._ids = itertools.count(1)
        self._lock = threading.RLock()

    # -- setup (what the customer made in RunPod's console) ---------------------------------------

    def add_volume(self, volume_id: str, data_center_id: str = "EU-RO-1", name: str = "lexybrain") -> None:
        self.volumes[volume_id] = {"id": volume_id, "name": name, "size": 50, "dataCenterId": data_center_id}

    def add_template(
        self,
        env: dict[str, str],
        *,
        image: str = "runpod/worker-v1-vllm:v2.7.0stable-cuda12.1.0",
        name: str = "",
    ) -> str:
        tid = f"tpl{next(self._ids):04d}"
        self.templates[tid] = {
            "id": tid,
            "name": name or f"lexybrain-{tid}",
            "imageName": image,
            "dockerArgs": "",
            "containerDiskInGb": 20,
            "volumeInGb": 0,
            "volumeMountPath": "/workspace",
            "isServerless": True,
            "env": dict(env),
        }
        return tid

    def add_endpoint(
        self, template_id: str, *, network_volume_id: str | None = None, start: bool = True
    ) -> str:
        eid = f"ep{next(self._ids):04d}{os.urandom(2).hex()}"
        self.endpoints[eid] = {
            "id": eid,
            "name": f"lexybrain-{eid}",
            "templateId": template_id,
            "gpuIds": "AMPERE_24",
            "networkVolumeId": network_volume_id,
            "locations": None,
            "workersMin": 1,
            "workersMax": 1,
            "idleTimeout": 5,
            "scalerType": "QUEUE_DELAY",
            "scalerValue": 4,
        }
        if start:
            self._replace_worker(eid)
        return eid

    # -- knobs and views ------------------------------------------------------------------------

    def fail_openai(self, count: int, status: int = 500) -> None:
        with self._lock:
            self.openai_failures_left, self.openai_failure_status = count, status

    def worker_env(self, endpoint_id: str) -> dict[str, str]:
        return dict(self.workers[endpoint_id].env)

    def worker_log(self, endpoint_id: str) -> str:
        return self.workers[endpoint_id].log_path.read_text(errors="replace")

    # -- workers --------------------------------------------------------------------------------

    def _replace_worker(self, endpoint_id: str) -> None:
        """A rolling release with one worker: the old one goes, a new one starts with the
        template's env as it is now."""
        endpoint = self.endpoints[endpoint_id]
        template = self.templates[endpoint["templateId"]]
        with self._lock:
            old = self.workers.pop(endpoint_id, None)
        if old is not None:
            _stop(old)
        volume_id = endpoint.get("networkVolumeId")
        mount = self.workdir / "volumes" / f"{endpoint_id}-{next(self._ids)}"
        mount.mkdir(parents=True, exist_ok=True)
        port = _free_port()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/root"),
            "PYTHONPATH": str(REPO),
            "PYTHONUNBUFFERED": "1",
            **self.pod_env,
            **template["env"],
            "RUNPOD_ENDPOINT_ID": endpoint_id,
            "FAKE_WORKER_PORT": str(port),
            "FAKE_VOLUME_DIR": str(mount),
        }
        if volume_id and self.store is not None:
            env.update(
                FAKE_VOLUME_ID=volume_id,
                FAKE_VOLUME_S3_ENDPOINT_URL=self.store.endpoint_url,
                FAKE_VOLUME_S3_ACCESS_KEY_ID=self.store.access_key,
                FAKE_VOLUME_S3_SECRET_ACCESS_KEY=self.store.secret_key,
            )
        wid = f"w{next(self._ids):04d}"
        log_path = self.workdir / f"worker-{endpoint_id}-{wid}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tests.fake_runpod.vllm_worker"],
                env=env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        with self._lock:
            self.workers[endpoint_id] = FakeWorker(wid, dict(template["env"]), port, proc, log_path)

    def shutdown(self) -> None:
        with self._lock:
            workers = list(self.workers.values())
            self.workers.clear()
        for w in workers:
            _stop(w)

    # -- GraphQL ----------------------------------------------------------------------------------

    def template_graphql(self, t: dict[str, Any]) -> dict[str, Any]:
        return {**t, "env": [{"key": k, "value": v} for k, v in t["env"].items()]}

    def myself_fields(self) -> dict[str, Any]:
        return {
            "endpoints": [dict(e) for e in self.endpoints.values()],
            "podTemplates": [self.template_graphql(t) for t in self.templates.values()],
            "networkVolumes": [dict(v) for v in self.volumes.values()],
        }

    def save_template(self, data: dict[str, Any]) -> dict[str, Any]:
        for required in ("name", "imageName", "containerDiskInGb", "volumeInGb", "dockerArgs", "env"):
            if data.get(required) is None:
                raise ValueError(f"{required} is required")
        tid = data.get("id")
        if tid and tid not in self.templates:
            raise LookupError(f"Template {tid} not found")
        if not tid:
            tid = f"tpl{next(self._ids):04d}"
        env = {}
        for item in data["env"]:
            env[item["key"]] = item["value"]
        template = {
            **self.templates.get(tid, {}),
            "id": tid,
            "name": data["name"],
            "imageName": data["imageName"],
            "dockerArgs": data["dockerArgs"],
            "containerDiskInGb": data["containerDiskInGb"],
            "volumeInGb": data["volumeInGb"],
            "isServerless": bool(data.get("isServerless", self.templates.get(tid, {}).get("isServerless"))),
            "env": env,
        }
        template.setdefault("volumeMountPath", data.get("volumeMountPath") or "/workspace")
        self.templates[tid] = template
        self.releases.append(tid)
        for eid, endpoint in list(self.endpoints.items()):
            if endpoint["templateId"] == tid:
                self._replace_worker(eid)
        return self.template_graphql(template)

    def save_endpoint(self, data: dict[str, Any]) -> dict[str, Any]:
        eid = data.get("id")
        if eid and eid not in self.endpoints:
            raise LookupError(f"Endpoint {eid} not found")
        if not data.get("templateId") or data["templateId"] not in self.templates:
            raise ValueError(f"templateId {data.get('templateId')!r} is not a template of this account")
        if not eid:
            return dict(self.endpoints[self.add_endpoint(data["templateId"])])
        endpoint = self.endpoints[eid]
        changed_template = endpoint["templateId"] != data["templateId"]
        endpoint.update({k: v for k, v in data.items() if v is not None and k in endpoint})
        if changed_template:
            self._replace_worker(eid)
        return dict(endpoint)

    # -- HTTP (/v2/<id>/...) ----------------------------------------------------------------------

    def health(self, endpoint_id: str) -> dict[str, Any]:
        worker = self.workers.get(endpoint_id)
        counts = {"idle": 0, "initializing": 0, "ready": 0, "running": 0, "throttled": 0, "unhealthy": 0}
        if worker is not None:
            state = worker.state()
            counts[state] += 1
            if state == "idle":
                counts["ready"] += 1
        return {
            "jobs": {"completed": 0, "failed": 0, "inProgress": 0, "inQueue": 0, "retried": 0},
            "workers": counts,
        }

    def _ready_worker(self, endpoint_id: str, wait_s: float = 30.0) -> FakeWorker | None:
        """A request queues until a worker is ready, as on RunPod (bounded here)."""
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            worker = self.workers.get(endpoint_id)
            if worker is not None and worker.state() == "idle":
                return worker
            if worker is not None and not worker.alive:
                return None
            time.sleep(0.2)
        return None

    def endpoint_http(self, method: str, endpoint_id: str, rest: str, body: bytes) -> tuple[int, Any]:
        if endpoint_id not in self.endpoints:
            return 404, {"error": f"endpoint {endpoint_id} not found"}
        if rest == "health":
            return 200, self.health(endpoint_id)
        if rest == "runsync":
            import json

            job = json.loads(body or b"{}").get("input") or {}
            route = str(job.get("openai_route") or "")
            if not route.startswith("/v1/"):
                return 400, {"error": "input.openai_route (e.g. /v1/chat/completions) is required here"}
            status, out = self._proxy("POST" if job.get("openai_input") else "GET", endpoint_id, route, job)
            return 200, {
                "id": f"sync-{next(self._ids)}",
                "status": "COMPLETED" if status == 200 else "FAILED",
                "output": [out],
            }
        if rest.startswith("openai/v1/"):
            with self._lock:
                failing = self.openai_failures_left > 0 and rest.endswith("chat/completions")
                if failing:
                    self.openai_failures_left -= 1
            if failing:
                return self.openai_failure_status, {
                    "error": {"message": "worker error", "type": "server_error"}
                }
            import json

            payload = json.loads(body) if body else None
            return self._proxy(
                method, endpoint_id, "/" + rest.removeprefix("openai/"), {"openai_input": payload}
            )
        return 404, {"error": f"no route /v2/{endpoint_id}/{rest}"}

    def _proxy(self, method: str, endpoint_id: str, route: str, job: dict[str, Any]) -> tuple[int, Any]:
        worker = self._ready_worker(endpoint_id)
        if worker is None:
            return 503, {
                "error": {"message": "no worker is ready: they fail to start", "type": "server_error"}
            }
        url = f"http://127.0.0.1:{worker.port}{route}"
        try:
            if method == "GET":
                response = httpx.get(url, timeout=120)
            else:
                response = httpx.post(url, json=job.get("openai_input"), timeout=120)
        except httpx.HTTPError as exc:
            return 502, {"error": {"message": f"worker unreachable: {exc}", "type": "server_error"}}
        try:
            return response.status_code, response.json()
        except ValueError:
            return 502, {"error": {"message": response.text[:200], "type": "server_error"}}
