"""RunPod Serverless: the customer's worker-vllm endpoint, its template and network volume.

Two APIs, each URL a setting (the runpod SDK's names): GraphQL at `$RUNPOD_API_BASE_URL`
for templates and endpoints (through `GraphQLRunPodClient`, with its retry and redaction
policy), and the endpoint API at `$RUNPOD_ENDPOINT_BASE_URL/<id>/...` (`health`, the
OpenAI-compatible `openai/v1` routes). The network volume's S3 API is a third, with keys
of its own: `volume_storage` opens it (one URL per datacenter,
`https://s3api-<datacenter>.runpod.io/`; the bucket is the volume id).

`saveTemplate` replaces a template's whole env and starts a rolling release of the
endpoint's workers; `save_template_env` sends every other field back exactly as read.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from brightrun.compute.runpod_client import GraphQLRunPodClient, RunPodError, RunPodUnavailableError, redact
from brightrun.errors import InputError

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT_BASE_URL = "https://api.runpod.ai/v2"
VOLUME_MOUNT = "/runpod-volume"


class EndpointNotFound(InputError):
    """No endpoint of that id in the account."""


class EndpointCallFailed(RunPodError):
    """The endpoint's own API (health, the OpenAI route) failed or answered an error."""


@dataclass(frozen=True)
class Template:
    id: str
    name: str
    image_name: str
    docker_args: str
    container_disk_gb: int
    volume_gb: int
    volume_mount_path: str | None
    is_serverless: bool
    env: dict[str, str]

    def __repr__(self) -> str:  # env values may be secrets
        return f"Template(id={self.id!r}, image={self.image_name!r}, env_keys={sorted(self.env)})"


@dataclass(frozen=True)
class Endpoint:
    id: str
    name: str
    template_id: str
    network_volume_id: str | None
    workers_min: int
    workers_max: int


@dataclass(frozen=True)
class NetworkVolume:
    id: str
    name: str
    data_center_id: str


@dataclass(frozen=True)
class WorkerCounts:
    """`/health`'s workers: ready ones answer; unhealthy ones fail to start."""

    idle: int = 0
    running: int = 0
    initializing: int = 0
    unhealthy: int = 0
    throttled: int = 0

    @property
    def serving(self) -> int:
        return self.idle + self.running


Q_ACCOUNT = (
    "query Serverless { myself {"
    " endpoints { id name templateId networkVolumeId workersMin workersMax }"
    " podTemplates { id name imageName dockerArgs containerDiskInGb volumeInGb volumeMountPath"
    " isServerless env { key value } }"
    " networkVolumes { id name dataCenterId } } }"
)
Q_SAVE_TEMPLATE = (
    "mutation SaveTemplate($input: SaveTemplateInput) {"
    " saveTemplate(input: $input) { id env { key value } } }"
)


def volume_s3_url(data_center_id: str) -> str:
    """RunPod's S3-compatible API of the volumes of one datacenter."""
    return f"https://s3api-{data_center_id.lower()}.runpod.io/"


class ServerlessClient:
    """The endpoint's control plane (GraphQL) and its HTTP API."""

    def __init__(
        self,
        graphql: GraphQLRunPodClient,
        api_key: str,
        *,
        endpoint_base_url: str = DEFAULT_ENDPOINT_BASE_URL,
        timeout: float = 120.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.graphql = graphql
        self._api_key = api_key
        self.endpoint_base_url = endpoint_base_url.rstrip("/")
        self._http = httpx.Client(
            timeout=timeout, transport=transport, headers={"Authorization": f"Bearer {api_key}"}
        )

    def close(self) -> None:
        self._http.close()
        self.graphql.close()

    # -- control plane ----------------------------------------------------------------------------

    def _account(self) -> dict[str, Any]:
        return self.graphql._call("serverless listing", Q_ACCOUNT, {}).get("myself") or {}

    def endpoint_and_template(self, endpoint_id: str) -> tuple[Endpoint, Template, NetworkVolume | None]:
        account = self._account()
        found = [e for e in account.get("endpoints") or [] if e.get("id") == endpoint_id]
        if not found:
            known = ", ".join(sorted(str(e.get("id")) for e in account.get("endpoints") or [])) or "none"
            raise EndpointNotFound(
                f"RunPod endpoint {endpoint_id!r} is not in this account (its endpoints: {known}); "
                "check --endpoint / BRIGHTRUN_SERVING_ENDPOINT_ID and RUNPOD_API_KEY"
            )
        e = found[0]
        endpoint = Endpoint(
            id=str(e["id"]),
            name=str(e.get("name") or ""),
            template_id=str(e.get("templateId") or ""),
            network_volume_id=e.get("networkVolumeId") or None,
            workers_min=int(e.get("workersMin") or 0),
            workers_max=int(e.get("workersMax") or 0),
        )
        tpl = [t for t in account.get("podTemplates") or [] if t.get("id") == endpoint.template_id]
        if not tpl:
            raise EndpointNotFound(
                f"RunPod endpoint {endpoint_id} runs template {endpoint.template_id!r}, "
                "which this key cannot read"
            )
        t = tpl[0]
        template = Template(
            id=str(t["id"]),
            name=str(t.get("name") or ""),
            image_name=str(t.get("imageName") or ""),
            docker_args=str(t.get("dockerArgs") or ""),
            container_disk_gb=int(t.get("containerDiskInGb") or 0),
            volume_gb=int(t.get("volumeInGb") or 0),
            volume_mount_path=t.get("volumeMountPath"),
            is_serverless=bool(t.get("isServerless")),
            env={str(i["key"]): str(i.get("value") or "") for i in t.get("env") or []},
        )
        volume = None
        for v in account.get("networkVolumes") or []:
            if endpoint.network_volume_id and v.get("id") == endpoint.network_volume_id:
                volume = NetworkVolume(
                    str(v["id"]), str(v.get("name") or ""), str(v.get("dataCenterId") or "")
                )
        return endpoint, template, volume

    def save_template_env(self, template: Template, env: dict[str, str]) -> None:
        """Save the template with `env` as its whole env, every other field as read."""
        payload: dict[str, Any] = {
            "id": template.id,
            "name": template.name,
            "imageName": template.image_name,
            "dockerArgs": template.docker_args,
            "containerDiskInGb": template.container_disk_gb,
            "volumeInGb": template.volume_gb,
            "isServerless": template.is_serverless,
            "env": [{"key": k, "value": v} for k, v in env.items()],
        }
        if template.volume_mount_path:
            payload["volumeMountPath"] = template.volume_mount_path
        self.graphql._call(
            f"template {template.id} save", Q_SAVE_TEMPLATE, {"input": payload}, secrets=env.values()
        )

    # -- the endpoint's API -----------------------------------------------------------------------

    def _url(self, endpoint_id: str, rest: str) -> str:
        return f"{self.endpoint_base_url}/{endpoint_id}/{rest}"

    def _request(self, method: str, url: str, what: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise EndpointCallFailed(
                f"{what}: {type(exc).__name__}: {redact(str(exc), [self._api_key])}"
            ) from None
        if response.status_code in (401, 403):
            raise EndpointCallFailed(f"{what}: the RunPod API key was rejected ({response.status_code})")
        if response.status_code >= 400:
            raise EndpointCallFailed(
                f"{what}: HTTP {response.status_code}: {redact(response.text[:300], [self._api_key])}"
            )
        try:
            return response.json()
        except ValueError:
            raise EndpointCallFailed(f"{what}: an answer that is not JSON") from None

    def health(self, endpoint_id: str) -> WorkerCounts:
        body = self._request("GET", self._url(endpoint_id, "health"), f"endpoint {endpoint_id} health")
        w = body.get("workers") or {}
        return WorkerCounts(
            idle=int(w.get("idle") or 0),
            running=int(w.get("running") or 0),
            initializing=int(w.get("initializing") or 0),
            unhealthy=int(w.get("unhealthy") or 0),
            throttled=int(w.get("throttled") or 0),
        )

    def models(self, endpoint_id: str) -> list[str]:
        body = self._request(
            "GET", self._url(endpoint_id, "openai/v1/models"), f"endpoint {endpoint_id} /openai/v1/models"
        )
        return [str(m.get("id")) for m in body.get("data") or []]

    def chat(
        self, endpoint_id: str, model: str, messages: list[dict[str, str]], max_tokens: int
    ) -> dict[str, Any]:
        body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0}
        return dict(
            self._request(
                "POST",
                self._url(endpoint_id, "openai/v1/chat/completions"),
                f"endpoint {endpoint_id} chat completion with model {model!r}",
                json=body,
            )
        )

    def wait_for_release(
        self,
        endpoint_id: str,
        served_names: list[str],
        *,
        timeout_s: float,
        poll_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> float:
        """Wait until no worker is starting, one is ready, and the OpenAI route lists every
        served name (the new workers answer). Returns the seconds waited."""
        started = clock()
        last = "no answer yet"
        while clock() - started < timeout_s:
            try:
                counts = self.health(endpoint_id)
                if counts.initializing == 0 and counts.serving == 0 and counts.unhealthy > 0:
                    raise EndpointCallFailed(
                        f"endpoint {endpoint_id}: its workers fail to start with the new env "
                        f"({counts.unhealthy} unhealthy); see the endpoint's logs in RunPod's console"
                    )
                if counts.serving > 0 and counts.initializing == 0:
                    listed = self.models(endpoint_id)
                    missing = [n for n in served_names if n not in listed]
                    if not missing:
                        return clock() - started
                    last = f"the workers serve {listed}, not yet {missing}"
                else:
                    last = f"workers: {counts}"
            except EndpointCallFailed as exc:
                if "fail to start" in str(exc):
                    raise
                last = str(exc)
            sleep(poll_s)
        raise RunPodUnavailableError(
            f"endpoint {endpoint_id}: the release did not finish within {timeout_s:.0f} s ({last})"
        )


def serverless_client(
    api_key: str | None, *, api_base_url: str, endpoint_base_url: str, **kwargs: Any
) -> ServerlessClient:
    if not api_key:
        raise InputError("RUNPOD_API_KEY is not set: deploying to a RunPod endpoint needs the account's key")
    graphql = GraphQLRunPodClient(api_key, base_url=api_base_url, **kwargs)
    return ServerlessClient(graphql, api_key, endpoint_base_url=endpoint_base_url)
