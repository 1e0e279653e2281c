"""One settings object for the whole product.

Read once at the boundary (CLI, flow entry, trainer entry) from `BRIGHTRUN_*`
environment variables and an optional config file, then passed down as typed
values. Secrets are `SecretStr`: they never print, never reach a log line.
"""

from __future__ import annotations

import os
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from brightrun.storage import resolve_s3_endpoint


class ComputeBackend(StrEnum):
    local = "local"
    runpod = "runpod"


def default_home() -> Path:
    return Path(os.environ.get("BRIGHTRUN_HOME", Path.home() / ".brightrun")).expanduser()


class _ConfigFileSource(PydanticBaseSettingsSource):
    """Values from `$BRIGHTRUN_CONFIG` or `$BRIGHTRUN_HOME/config.yaml` (lowest precedence)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        explicit = os.environ.get("BRIGHTRUN_CONFIG")
        path = Path(explicit) if explicit else default_home() / "config.yaml"
        if not path.exists():
            if explicit:
                raise FileNotFoundError(f"BRIGHTRUN_CONFIG points to {path}, which does not exist")
            return {}
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: the config file must be a mapping of setting: value")
        return {k: v for k, v in data.items() if v is not None}


# ---------------------------------------------------------------- input limits (issue 20)
# Defaults every reader applies even when no settings reach it; the Settings fields of the
# same names (BRIGHTRUN_DATASET_MAX_DEPTH, ...) override them at the boundary.


class DatasetLimits(BaseModel):
    """Bounds on a training file, checked while it streams: past one, the file is refused
    with a located message before it can take the machine's memory."""

    max_file_bytes: int = Field(default=2 * 1024**3, ge=1)
    max_depth: int = Field(default=64, ge=4)
    max_string_chars: int = Field(default=1_000_000, ge=16)
    max_conversations: int = Field(default=1_000_000, ge=1)
    max_pairs: int = Field(default=10_000_000, ge=1)


class FetchPolicy(BaseModel):
    """How an http(s) training file is fetched: a size cap, redirects, whom it may reach."""

    max_bytes: int = Field(default=2 * 1024**3, ge=1)
    redirects: Literal["none", "same-host"] = "same-host"
    allow_private: bool = False  # loopback, private, link-local (cloud metadata) addresses
    allow_local_paths: bool = False  # an app row's json_file_path that is absolute or a URL


class JudgeSettings(BaseModel):
    """The pairwise judge (issue 25): any OpenAI-compatible chat completions endpoint."""

    base_url: str
    model: str
    api_key: SecretStr | None = None
    timeout_seconds: float = Field(default=60.0, gt=0)
    retries: int = Field(default=2, ge=0, le=10)
    rubric_file: Path | None = None  # default: docs/judge_rubric.md of this repository


class Settings(BaseSettings):
    """Where things live. Every field has an embedded default that needs no setup."""

    model_config = SettingsConfigDict(env_prefix="BRIGHTRUN_", extra="ignore")

    home: Path = Field(default_factory=default_home, description="Local state: storage, SQLite, caches")
    storage_url: str | None = Field(
        default=None, description="A directory or s3://bucket/prefix (default: $home/storage)"
    )
    s3_endpoint_url: str | None = Field(
        default=None, description="S3 endpoint (SeaweedFS, R2, Supabase); falls back to AWS_ENDPOINT_URL"
    )
    database_url: SecretStr | None = Field(
        default=None, description="SQLAlchemy URL (default: sqlite:///$home/registry.db)"
    )
    database_retry_seconds: float = Field(
        default=300.0,
        ge=0,
        description="Seconds a registry call keeps retrying, with backoff, while the database is unreachable",
    )
    pod_termination_patience_seconds: float = Field(
        default=300.0,
        ge=0,
        description="Seconds the end of a job (its flow, `brightrun jobs cancel`) keeps retrying a pod's "
        "termination while the provider does not confirm it; then the pod is named for the reaper",
    )
    compute: ComputeBackend = ComputeBackend.local
    training_files_url: str = Field(
        default="s3://training-files",
        description="Where the app keeps training files: a `training_files.json_file_path` is relative "
        "to it (Supabase Storage's `training-files` bucket, on the configured S3 endpoint)",
    )
    # The app's own training_files (issue 22): who the pipeline's rows are created by, and
    # values for the app's NOT NULL columns the pipeline cannot fill itself.
    service_user_id: str | None = Field(
        default=None,
        description="The Supabase auth.users id the pipeline's training_files rows are created_by",
    )
    training_file_defaults: dict[str, Any] = Field(
        default_factory=dict,
        description="JSON object of values for the app's training_files columns the pipeline does not "
        'know, e.g. {"project_id": "..."} (BRIGHTRUN_TRAINING_FILE_DEFAULTS)',
    )
    webhook_secret: SecretStr | None = None
    # Input limits: see DatasetLimits and FetchPolicy (and README, "Security and reliability").
    dataset_max_file_bytes: int = Field(default=DatasetLimits().max_file_bytes, ge=1)
    dataset_max_depth: int = Field(default=DatasetLimits().max_depth, ge=4)
    dataset_max_string_chars: int = Field(default=DatasetLimits().max_string_chars, ge=16)
    dataset_max_conversations: int = Field(default=DatasetLimits().max_conversations, ge=1)
    dataset_max_pairs: int = Field(default=DatasetLimits().max_pairs, ge=1)
    fetch_max_bytes: int = Field(default=FetchPolicy().max_bytes, ge=1)
    fetch_redirects: Literal["none", "same-host"] = FetchPolicy().redirects
    fetch_allow_private: bool = FetchPolicy().allow_private
    fetch_allow_local_paths: bool = FetchPolicy().allow_local_paths
    # Evaluation sets and the judge (issue 25; README "Evaluation sets and the judge").
    promotion_evalset: str | None = Field(
        default=None, description="NAME[@VERSION] of the registered set eval and promote score on"
    )
    judge_base_url: str | None = None
    judge_model: str | None = None
    judge_api_key: SecretStr | None = None
    judge_timeout_seconds: float = Field(default=60.0, gt=0)
    judge_retries: int = Field(default=2, ge=0, le=10)
    judge_rubric_file: Path | None = None

    # Personal data in feedback exports (issue 19): the spaCy pipeline that finds names and
    # places (a package name or a directory); "none", or a pipeline that is not installed,
    # means the built-in fallback (see tasks/feedback/pii.py). Never downloaded.
    pii_spacy_model: str = Field(default="en_core_web_lg", description="BRIGHTRUN_PII_SPACY_MODEL")

    # Chat-shaped feedback export (issue 19, tasks/feedback/shape.py): which request-context
    # keys group requests into conversations (comma-separated; "none": each request alone),
    # which output field holds a free-text answer ("json": LexyBrain's JSON insights), and
    # which context key carries a request's own system prompt ("none": configured prompts).
    export_conversation_keys: str = Field(default="none", description="BRIGHTRUN_EXPORT_CONVERSATION_KEYS")
    export_output_text_field: str = Field(default="json", description="BRIGHTRUN_EXPORT_OUTPUT_TEXT_FIELD")
    export_system_prompt_key: str = Field(default="none", description="BRIGHTRUN_EXPORT_SYSTEM_PROMPT_KEY")
    export_context_in_user_turn: bool = Field(
        default=True, description="BRIGHTRUN_EXPORT_CONTEXT_IN_USER_TURN"
    )

    # Issue 20 (harden): one registry's own pods, one operator per job, trustworthy webhooks.
    registry_id: str | None = Field(
        default=None,
        description="This registry's id on its pods (default: the one its migration made); the reaper "
        "touches only pods that carry it",
    )
    job_lease_seconds: float = Field(
        default=120.0, gt=0, description="How long a job's lease (resume, cancel, monitor) lives unrenewed"
    )
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, description="Seconds one delivery may take")
    webhook_expiry_seconds: float = Field(
        default=86400.0, gt=0, description="How long an undelivered webhook is retried before it is dropped"
    )

    # Serving on the customer's RunPod Serverless endpoint (issue 24, `brightrun deploy`):
    # the endpoint promote/rollback deploy to, RunPod's URLs under the runpod SDK's names, and
    # the endpoint's network volume's S3 API (its own keys, made in RunPod's console).
    serving_endpoint_id: str | None = Field(
        default=None,
        description="The worker-vllm endpoint `promote --to production` and `rollback` deploy to",
    )
    runpod_api_base_url: str = Field(default="https://api.runpod.io", validation_alias="RUNPOD_API_BASE_URL")
    runpod_endpoint_base_url: str = Field(
        default="https://api.runpod.ai/v2", validation_alias="RUNPOD_ENDPOINT_BASE_URL"
    )
    serving_volume_s3_endpoint_url: str | None = Field(
        default=None, description="The volume's S3 API (default https://s3api-<datacenter>.runpod.io/)"
    )
    serving_volume_s3_access_key_id: SecretStr | None = None
    serving_volume_s3_secret_access_key: SecretStr | None = None
    serving_volume_prefix: str = Field(
        default="brightrun/adapters", description="Adapters' folder on the volume"
    )
    serving_release_timeout_seconds: float = Field(default=900.0, gt=0)
    serving_smoke_max_tokens: int = Field(default=8, ge=1, le=256)
    serving_lease_seconds: float = Field(default=3600.0, gt=0)
    # Secrets that keep their conventional names (no BRIGHTRUN_ prefix).
    runpod_api_key: SecretStr | None = Field(default=None, validation_alias="RUNPOD_API_KEY")
    hf_token: SecretStr | None = Field(default=None, validation_alias="HF_TOKEN")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _ConfigFileSource(settings_cls))

    @model_validator(mode="after")
    def _check(self) -> Settings:
        self.home = self.home.expanduser()
        if (
            self.storage_url
            and "://" in self.storage_url
            and not self.storage_url.startswith(("s3://", "file://"))
        ):
            raise ValueError(
                f"BRIGHTRUN_STORAGE_URL={self.storage_url!r}: use a directory or s3://bucket/prefix"
            )
        return self

    @property
    def dataset_limits(self) -> DatasetLimits:
        return DatasetLimits(
            max_file_bytes=self.dataset_max_file_bytes,
            max_depth=self.dataset_max_depth,
            max_string_chars=self.dataset_max_string_chars,
            max_conversations=self.dataset_max_conversations,
            max_pairs=self.dataset_max_pairs,
        )

    @property
    def fetch_policy(self) -> FetchPolicy:
        return FetchPolicy(
            max_bytes=self.fetch_max_bytes,
            redirects=self.fetch_redirects,
            allow_private=self.fetch_allow_private,
            allow_local_paths=self.fetch_allow_local_paths,
        )

    @property
    def judge(self) -> JudgeSettings | None:
        """The judge's settings, or None when BRIGHTRUN_JUDGE_BASE_URL is not set."""
        if not self.judge_base_url:
            return None
        if not self.judge_model:
            raise ValueError(
                "BRIGHTRUN_JUDGE_BASE_URL is set but BRIGHTRUN_JUDGE_MODEL is not: name the model"
            )
        return JudgeSettings(
            base_url=self.judge_base_url,
            model=self.judge_model,
            api_key=self.judge_api_key,
            timeout_seconds=self.judge_timeout_seconds,
            retries=self.judge_retries,
            rubric_file=self.judge_rubric_file,
        )

    @cached_property
    def resolved_storage_url(self) -> str:
        return self.storage_url or str(self.home / "storage")

    @cached_property
    def resolved_database_url(self) -> str:
        if self.database_url is not None:
            return self.database_url.get_secret_value()
        return f"sqlite:///{self.home / 'registry.db'}"

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"

    @property
    def resolved_s3_endpoint_url(self) -> str | None:
        return resolve_s3_endpoint(self.s3_endpoint_url)


def load_settings(**overrides: Any) -> Settings:
    """The one way to read settings (env + config file + explicit overrides)."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})
