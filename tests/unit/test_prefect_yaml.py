"""`prefect deploy --all` on a machine without Docker (issue 21): it never pip-installs into the
venv (no step has `requires:`), and the docker deployment comes last, so every other deployment
is registered before its build step fails."""

from __future__ import annotations

from pathlib import Path

import yaml

PREFECT_YAML = Path(__file__).resolve().parents[2] / "prefect.yaml"


def test_no_step_installs_packages_and_the_docker_deployment_is_last() -> None:
    deployments = yaml.safe_load(PREFECT_YAML.read_text())["deployments"]
    for spec in deployments:
        for section in ("build", "push", "pull"):
            for step in spec.get(section) or []:
                for name, args in step.items():
                    assert "requires" not in (args or {}), f"{spec['name']}: {name} would pip-install"
    uses_docker = [i for i, spec in enumerate(deployments) if spec.get("build")]
    assert uses_docker == [len(deployments) - 1]
