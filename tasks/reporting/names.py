"""The names a person reads in the Prefect UI: the run's name and each artifact's key."""

from __future__ import annotations

import re
from pathlib import PurePosixPath


def slug(text: str, max_len: int = 40) -> str:
    """Lowercase letters, digits and dashes (what Prefect artifact keys accept)."""
    out = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return out[:max_len].strip("-") or "x"


def short_id(job_id: str) -> str:
    """The first 8 characters of the job id: what `jobs list` shows and a person can type."""
    return slug(job_id, 60).replace("-", "")[:8] or "x"


def model_display_name(base_model: str) -> str:
    """`meta-llama/Meta-Llama-3-8B` -> `Meta-Llama-3-8B`; a local path -> its directory name."""
    return PurePosixPath(base_model.rstrip("/")).name or base_model


def run_name(dataset_name: str, base_model: str, job_id: str) -> str:
    """`train-<dataset>-<base model>-<job id>`: says what runs, in the run list."""
    return f"train-{dataset_name}-{model_display_name(base_model)}-{job_id}"


def artifact_key(job_id: str, what: str) -> str:
    """`job-1a2b3c4d-summary`: the job (short id) and what the artifact is."""
    return f"job-{short_id(job_id)}-{slug(what)}"
