"""The pipeline's resources, built once from the settings and handed to whoever needs them.

In the spirit of Dagster's resources: the flow, the stages, the reaper, the feedback export
and the CLI take a `Resources`; nothing else reads settings to open storage, a registry or a
compute backend. That keeps every part talking to the same places: the configured S3
endpoint, the job's own storage as the registry recorded it, one registry engine.

    resources = Resources.from_settings(load_settings())
    storage = resources.storage                    # the global storage, with its endpoint
    engine = resources.registry                    # opened (and migrated, SQLite) on first use
    job_storage = resources.job_storage(job)       # where that job's files really are
    compute = resources.compute(ComputeBackend.runpod, spec.provisioning)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from brightrun.settings import ComputeBackend, Settings, load_settings
from brightrun.storage import Storage, StorageError, open_storage

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from brightrun.compute import Compute
    from brightrun.spec import ProvisioningPolicy

#: Variables a trainer needs to reach S3 (never logged, never in spec.json).
_AWS_CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION")


def storage_root_of(job_prefix_uri: str, job_id: str) -> str:
    """`s3://b/p/jobs/<id>` -> `s3://b/p`: the storage a job's files live in."""
    suffix = f"/jobs/{job_id}"
    uri = job_prefix_uri.rstrip("/")
    if not uri.endswith(suffix):
        raise StorageError(f"{job_prefix_uri!r} is not the prefix of job {job_id} (expected …{suffix})")
    return uri[: -len(suffix)] or "/"


@dataclass
class Resources:
    """Storage (with its endpoint), the registry and the compute choice, built once."""

    settings: Settings
    _storage: dict[str, Storage] = field(default_factory=dict, repr=False)
    _engine: Engine | None = field(default=None, repr=False)
    _computes: dict[str, Compute] = field(default_factory=dict, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> Resources:
        return cls(settings or load_settings())

    # storage ----------------------------------------------------------------------------
    @property
    def storage_url(self) -> str:
        return self.settings.resolved_storage_url

    @property
    def storage(self) -> Storage:
        """The global storage (`BRIGHTRUN_STORAGE_URL`)."""
        return self.open_storage(self.storage_url)

    def open_storage(self, url: str) -> Storage:
        """A storage at `url` (a directory or `s3://bucket/prefix`) on the configured endpoint;
        one object per URL for the life of these resources."""
        key = url.rstrip("/") or "/"
        if key not in self._storage:
            self._storage[key] = open_storage(key, endpoint_url=self.settings.resolved_s3_endpoint_url)
        return self._storage[key]

    def job_storage(self, job: Any) -> Storage:
        """The storage a job's files are in: its own `storage_url` as the registry recorded it
        (a job may have run on other storage than today's global one)."""
        url = (getattr(job, "metadata", None) or {}).get("storage_url")
        if not url and getattr(job, "storage_prefix", None):
            url = storage_root_of(job.storage_prefix, str(job.id))
        return self.open_storage(url or self.storage_url)

    # registry ---------------------------------------------------------------------------
    @property
    def registry(self) -> Engine:
        """The registry engine, opened once (the embedded SQLite one migrates itself)."""
        if self._engine is None:
            from brightrun.registry import open_registry

            self._engine = open_registry(self.settings)
        return self._engine

    def registry_id(self) -> str:
        """The id this registry's pods carry (issue 20): `BRIGHTRUN_REGISTRY_ID`, else its own."""
        from brightrun.registry.identity import registry_id_of

        return registry_id_of(self.registry, self.settings.registry_id)

    def registry_exists(self) -> bool:
        """False for an embedded registry that was never created: read-only commands say
        "no jobs yet" instead of creating one."""
        url = self.settings.resolved_database_url
        if not url.startswith("sqlite"):
            return True
        path = url.split(":///", 1)[-1]
        return path in ("", ":memory:") or os.path.exists(path)

    # compute ----------------------------------------------------------------------------
    def compute_backend(self, requested: ComputeBackend | str | None = None) -> ComputeBackend:
        return ComputeBackend(requested) if requested else self.settings.compute

    def compute(
        self, backend: ComputeBackend | str | None = None, policy: ProvisioningPolicy | None = None
    ) -> Compute:
        """The compute backend that starts, watches and terminates a job's pods."""
        chosen = self.compute_backend(backend)
        if chosen is ComputeBackend.runpod:
            from brightrun.compute.runpod import RunPodCompute
            from brightrun.compute.runpod_client import client_from_env

            key = self.settings.runpod_api_key
            if policy is not None:  # a policy is per job: no sharing
                return RunPodCompute(
                    client_from_env(key.get_secret_value() if key else None),
                    policy,
                    registry_id=self.registry_id,
                )
            if "runpod" not in self._computes:
                self._computes["runpod"] = RunPodCompute(
                    client_from_env(key.get_secret_value() if key else None), registry_id=self.registry_id
                )
            return self._computes["runpod"]
        if "local" not in self._computes:
            from brightrun.compute.local import LocalCompute

            self._computes["local"] = LocalCompute(self.settings.home)
        return self._computes["local"]

    def computes_to_reap(self) -> list[Compute]:
        """Every backend a leftover pod can be on: this machine, and RunPod when a key is set."""
        out = [self.compute(ComputeBackend.local)]
        if self.settings.runpod_api_key is not None or self.settings.compute is ComputeBackend.runpod:
            out.append(self.compute(ComputeBackend.runpod))
        return out

    def trainer_env(self, storage_url: str) -> dict[str, str]:
        """What a trainer needs to reach its storage and the hub: the endpoint, the AWS keys
        and HF_TOKEN. Goes into the pod's environment only."""
        env: dict[str, str] = {"BRIGHTRUN_STORAGE_URL": storage_url}
        if self.settings.resolved_s3_endpoint_url:
            env["AWS_ENDPOINT_URL"] = self.settings.resolved_s3_endpoint_url
            env["BRIGHTRUN_S3_ENDPOINT_URL"] = self.settings.resolved_s3_endpoint_url
        for name in _AWS_CREDENTIALS:
            if os.environ.get(name):
                env[name] = os.environ[name]
        if self.settings.hf_token is not None:
            env["HF_TOKEN"] = self.settings.hf_token.get_secret_value()
        return env

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def __enter__(self) -> Resources:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
