"""A small RunPod client over the GraphQL API (DESIGN.md §8).

Everything RunPod-specific about the wire lives here, behind `RunPodApi`, so a REST
client can replace it when the GraphQL API is retired (2027). Values travel as
GraphQL *variables*, never spliced into the query text: an env value with quotes,
backslashes or newlines arrives intact (the SDK's `create_pod` breaks on a quote).

Error policy: no capacity -> `RunPodCapacityError` (the caller moves on); a bad key ->
`RunPodAuthError` at once, never retried; other GraphQL errors (validation) fail at
once; timeouts, connection errors, 429 and 5xx are retried with backoff. Pod creation is
not idempotent: a create that may have reached RunPod (a read timeout, a 5xx) is never
retried here but raises `RunPodCreateUncertain`, and the backend looks the pod up by its
unique name before it tries again (brightrun.compute.runpod).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import httpx

from brightrun.compute import CapacityError, ComputeError

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.runpod.io"
NO_CAPACITY = "There are no longer any instances available with the requested specifications"
_REDACTED = "***"


class RunPodError(ComputeError):
    """RunPod refused a request; the message names the operation."""


class RunPodAuthError(RunPodError):
    exit_code = 3


class RunPodCapacityError(RunPodError, CapacityError):
    pass


class RunPodUnavailableError(RunPodError):
    """Timeouts or 5xx persisted past every retry."""


class RunPodNotFound(RunPodError):
    pass


class RunPodCreateUncertain(RunPodUnavailableError):
    """A pod creation failed in a way that does not say whether RunPod made the pod (a timeout
    after the request was sent, a 5xx): look it up by name before creating it again."""


@dataclass(frozen=True)
class PodCreate:
    """What a new pod runs and where. `env` values may hold secrets: never logged."""

    name: str
    image: str
    docker_args: str
    gpu_type: str
    gpu_count: int = 1
    cloud_type: str = "ALL"
    container_disk_gb: int = 50
    volume_gb: int = 0
    network_volume_id: str | None = None
    volume_mount_path: str = "/workspace"
    env: dict[str, str] = field(default_factory=dict)
    spot: bool = False
    bid_per_gpu: float | None = None

    def __repr__(self) -> str:  # env may hold credentials
        return f"PodCreate(name={self.name!r}, gpu_type={self.gpu_type!r}, spot={self.spot})"


@dataclass(frozen=True)
class RemotePod:
    id: str
    name: str
    desired_status: str  # RUNNING | EXITED | TERMINATED | CREATED | RESTARTING | PAUSED | DEAD
    cost_per_hr: float
    uptime_seconds: float | None  # None: no runtime (not started yet, exited, interrupted)
    gpu_display_name: str | None
    image: str | None
    docker_args: str | None
    env_keys: tuple[str, ...]  # names only: values may be secrets
    # When the pod entered its current status (RunPod's `lastStatusChange`; for a pod that
    # never ran, its creation), epoch seconds; None if RunPod did not say.
    status_since: float | None = None
    # The registry that started it (its `BRIGHTRUN_REGISTRY_ID` env value, not a secret);
    # None: an untagged pod (started before issue 20, or by hand).
    registry_id: str | None = None

    @property
    def has_runtime(self) -> bool:
        return self.uptime_seconds is not None


@dataclass(frozen=True)
class GpuPrice:
    id: str
    display_name: str
    memory_gb: int | None
    spot_min_bid: float | None  # per GPU, USD/hr; None: no spot offer
    on_demand_price: float | None  # per GPU, USD/hr


class RunPodApi(Protocol):
    """The operations the backend needs; one implementation per RunPod API generation."""

    def create_pod(self, request: PodCreate) -> RemotePod: ...
    def get_pod(self, pod_id: str) -> RemotePod | None: ...
    def list_pods(self) -> list[RemotePod]: ...
    def stop_pod(self, pod_id: str) -> None: ...
    def terminate_pod(self, pod_id: str) -> None: ...
    def gpu_prices(self, gpu_count: int = 1) -> list[GpuPrice]: ...


_POD_FIELDS = """
fragment PodFields on Pod {
  id name desiredStatus costPerHr imageName dockerArgs env lastStatusChange
  machine { gpuDisplayName }
  runtime { uptimeInSeconds }
}
"""

Q_CREATE_ON_DEMAND = (
    "mutation CreateOnDemand($input: PodFindAndDeployOnDemandInput) {"
    " podFindAndDeployOnDemand(input: $input) { ...PodFields } }" + _POD_FIELDS
)
Q_CREATE_SPOT = (
    "mutation CreateSpot($input: PodRentInterruptableInput!) {"
    " podRentInterruptable(input: $input) { ...PodFields } }" + _POD_FIELDS
)
Q_GET = "query Pod($input: PodFilter) { pod(input: $input) { ...PodFields } }" + _POD_FIELDS
Q_LIST = "query Pods { myself { pods { ...PodFields } } }" + _POD_FIELDS
Q_STOP = "mutation Stop($input: PodStopInput!) { podStop(input: $input) { id desiredStatus } }"
Q_TERMINATE = "mutation Terminate($input: PodTerminateInput!) { podTerminate(input: $input) }"
Q_PRICES = (
    "query Prices($gpuCount: Int!) { gpuTypes { id displayName memoryInGb"
    " lowestPrice(input: {gpuCount: $gpuCount}) { minimumBidPrice uninterruptablePrice } } }"
)


def redact(text: str, secrets: Iterable[str]) -> str:
    """Replace every secret value (4+ characters) in `text`."""
    for secret in sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True):
        text = text.replace(secret, _REDACTED)
    return text


_STATUS_CHANGE = re.compile(r"(\w{3} \w{3} \d{1,2} \d{4} \d{2}:\d{2}:\d{2}) GMT([+-]\d{4})")


def parse_status_change(text: str | None) -> float | None:
    """RunPod's `lastStatusChange` ('Rented by User: Sun Nov 29 2026 20:22:56 GMT+0000 (...)')
    as epoch seconds; None when absent or in a shape we do not know."""
    match = _STATUS_CHANGE.search(text or "")
    if not match:
        return None
    try:
        return datetime.strptime(f"{match.group(1)} {match.group(2)}", "%a %b %d %Y %H:%M:%S %z").timestamp()
    except ValueError:
        return None


def _pod(data: dict[str, Any]) -> RemotePod:
    runtime = data.get("runtime")
    machine = data.get("machine") or {}
    uptime = runtime.get("uptimeInSeconds") if isinstance(runtime, dict) else None
    env = data.get("env") or []
    return RemotePod(
        id=str(data["id"]),
        name=str(data.get("name") or ""),
        desired_status=str(data.get("desiredStatus") or "UNKNOWN"),
        cost_per_hr=float(data.get("costPerHr") or 0.0),
        uptime_seconds=float(uptime) if uptime is not None else None,
        gpu_display_name=machine.get("gpuDisplayName"),
        image=data.get("imageName"),
        docker_args=data.get("dockerArgs"),
        env_keys=tuple(str(item).partition("=")[0] for item in env),
        status_since=parse_status_change(data.get("lastStatusChange")),
        registry_id=_env_value(env, REGISTRY_ID_ENV),
    )


REGISTRY_ID_ENV = "BRIGHTRUN_REGISTRY_ID"


def _env_value(env: list[Any], key: str) -> str | None:
    """One env value from RunPod's `env` ("KEY=value" strings); only for keys that are not secrets."""
    for item in env:
        name, sep, value = str(item).partition("=")
        if sep and name == key:
            return value or None
    return None


def classify(message: str, operation: str) -> RunPodError:
    lowered = message.lower()
    if NO_CAPACITY.lower() in lowered or "no longer any instances" in lowered:
        return RunPodCapacityError(f"RunPod {operation}: {message}")
    if "unauthorized" in lowered or "api key" in lowered or "authenticat" in lowered:
        return _auth_error(operation)
    if "pod" in lowered and ("not found" in lowered or "no pod" in lowered):
        return RunPodNotFound(f"RunPod {operation}: {message}")
    return RunPodError(f"RunPod {operation} was rejected: {message}")


def _auth_error(operation: str) -> RunPodAuthError:
    return RunPodAuthError(
        f"RunPod {operation}: the API key was rejected (401 Unauthorized). Set RUNPOD_API_KEY to a valid "
        "key with read/write access (RunPod console -> Settings -> API Keys)."
    )


class GraphQLRunPodClient:
    """`RunPodApi` over `$RUNPOD_API_BASE_URL/graphql` with `Authorization: Bearer <key>`."""

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str | None = None,
        timeout: float = 30.0,
        max_attempts: int = 5,
        backoff_seconds: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not api_key:
            raise RunPodAuthError(
                "RUNPOD_API_KEY is not set: export a RunPod API key to use --compute runpod"
            )
        self._api_key = api_key
        self.base_url = (base_url or os.environ.get("RUNPOD_API_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.url = f"{self.base_url}/graphql"
        self.max_attempts = max_attempts
        self.backoff_seconds = backoff_seconds
        self._sleep = sleep
        self._http = httpx.Client(
            timeout=timeout,
            transport=transport,
            headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"},
        )
        self.requests_sent = 0

    def close(self) -> None:
        self._http.close()

    def __repr__(self) -> str:
        return f"GraphQLRunPodClient(url={self.url!r})"

    # -- transport ---------------------------------------------------------------------------------

    def _call(
        self,
        operation: str,
        query: str,
        variables: dict[str, Any],
        *,
        secrets: Iterable[str] = (),
        idempotent: bool = True,
    ) -> dict[str, Any]:
        """One operation, retried with backoff where that is safe. With `idempotent=False` a
        failure after the request may have reached RunPod raises `RunPodCreateUncertain`."""
        hide = [self._api_key, *secrets]
        last: str = ""
        for attempt in range(1, self.max_attempts + 1):
            self.requests_sent += 1
            try:
                response = self._http.post(self.url, json={"query": query, "variables": variables})
            except httpx.TransportError as exc:  # timeouts, refused connections, resets
                last = f"{type(exc).__name__}: {exc}"
                # Not connected: RunPod never saw it. Anything later may have made the pod.
                if not idempotent and not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
                    raise RunPodCreateUncertain(
                        f"RunPod {operation}: {redact(last, hide)}; the pod may exist ({self.url})"
                    ) from None
            else:
                if response.status_code in (401, 403):
                    raise _auth_error(operation)
                if not idempotent and response.status_code >= 500:
                    raise RunPodCreateUncertain(
                        f"RunPod {operation}: HTTP {response.status_code}; the pod may exist ({self.url})"
                    )
                if response.status_code == 429 or response.status_code >= 500:
                    last = f"HTTP {response.status_code}"
                elif response.status_code >= 400:
                    raise RunPodError(
                        f"RunPod {operation}: HTTP {response.status_code}: "
                        f"{redact(response.text[:500], hide)}"
                    )
                else:
                    try:
                        body = response.json()
                    except ValueError:
                        last = "a response that is not JSON"
                    else:
                        errors = body.get("errors") or []
                        if errors:
                            message = str(errors[0].get("message", errors[0]))
                            raise classify(redact(message, hide), operation)
                        return body.get("data") or {}
            if attempt < self.max_attempts:
                delay = self.backoff_seconds * 2 ** (attempt - 1)
                log.warning("RunPod %s: %s; retrying in %.1fs", operation, redact(last, hide), delay)
                self._sleep(delay)
        raise RunPodUnavailableError(
            f"RunPod {operation}: {redact(last, hide)} after {self.max_attempts} attempts ({self.url}); "
            "RunPod may be down, try again later"
        )

    # -- operations --------------------------------------------------------------------------------

    def create_pod(self, request: PodCreate) -> RemotePod:
        payload: dict[str, Any] = {
            "name": request.name,
            "imageName": request.image,
            "dockerArgs": request.docker_args,
            "gpuTypeId": request.gpu_type,
            "gpuCount": request.gpu_count,
            "cloudType": request.cloud_type,
            "containerDiskInGb": request.container_disk_gb,
            "volumeInGb": request.volume_gb,
            "volumeMountPath": request.volume_mount_path,
            "env": [{"key": k, "value": v} for k, v in request.env.items()],
        }
        if request.network_volume_id:
            payload["networkVolumeId"] = request.network_volume_id
        if request.spot:
            if request.bid_per_gpu is None:
                raise RunPodError(f"RunPod spot pod {request.name}: a bid per GPU is required")
            payload["bidPerGpu"] = request.bid_per_gpu
            operation, query, key = "spot pod creation", Q_CREATE_SPOT, "podRentInterruptable"
        else:
            operation, query, key = "on-demand pod creation", Q_CREATE_ON_DEMAND, "podFindAndDeployOnDemand"
        data = self._call(
            f"{operation} ({request.gpu_type})",
            query,
            {"input": payload},
            secrets=request.env.values(),
            idempotent=False,
        )
        pod = data.get(key)
        if not pod:
            # RunPod answers null (no error) when it found no machine for the spec.
            raise RunPodCapacityError(f"RunPod {operation} ({request.gpu_type}): {NO_CAPACITY}")
        return _pod(pod)

    def get_pod(self, pod_id: str) -> RemotePod | None:
        try:
            data = self._call("pod lookup", Q_GET, {"input": {"podId": pod_id}})
        except RunPodNotFound:
            return None
        pod = data.get("pod")
        return _pod(pod) if pod else None

    def list_pods(self) -> list[RemotePod]:
        data = self._call("pod listing", Q_LIST, {})
        return [_pod(p) for p in ((data.get("myself") or {}).get("pods") or [])]

    def stop_pod(self, pod_id: str) -> None:
        self._call("pod stop", Q_STOP, {"input": {"podId": pod_id}})

    def terminate_pod(self, pod_id: str) -> None:
        try:
            self._call("pod termination", Q_TERMINATE, {"input": {"podId": pod_id}})
        except RunPodNotFound:
            return

    def gpu_prices(self, gpu_count: int = 1) -> list[GpuPrice]:
        data = self._call("GPU price lookup", Q_PRICES, {"gpuCount": gpu_count})
        prices = []
        for gpu in data.get("gpuTypes") or []:
            lowest = gpu.get("lowestPrice") or {}
            prices.append(
                GpuPrice(
                    id=str(gpu["id"]),
                    display_name=str(gpu.get("displayName") or gpu["id"]),
                    memory_gb=gpu.get("memoryInGb"),
                    spot_min_bid=lowest.get("minimumBidPrice"),
                    on_demand_price=lowest.get("uninterruptablePrice"),
                )
            )
        return prices


def client_from_env(api_key: str | None = None, **kwargs: Any) -> GraphQLRunPodClient:
    """The client for the configured account. This client does not use the `runpod` SDK (its
    `create_pod` splices env values into the query unescaped, and it has no spot rental); where
    other code has imported the SDK, its key is set too, since the SDK ignores RUNPOD_API_KEY."""
    key = api_key or os.environ.get("RUNPOD_API_KEY") or ""
    if not key:
        raise RunPodAuthError("RUNPOD_API_KEY is not set: export a RunPod API key to use --compute runpod")
    sdk = sys.modules.get("runpod")  # importing it costs seconds; configure it only if in use
    if sdk is not None:
        sdk.api_key = key
    return GraphQLRunPodClient(key, **kwargs)
