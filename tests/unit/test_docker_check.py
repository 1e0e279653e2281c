"""The `docker` deployment's check step (deployments/docker_check.py): what counts as no Docker."""

from __future__ import annotations

import subprocess
from typing import Any

from deployments.docker_check import docker_engine_problem, prefect_docker_problem, skip_message


def _answer(code: int, out: str = "", err: str = "") -> Any:
    def run(args: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(args, code, out, err)

    return run


def test_an_engine_that_answers_is_no_problem() -> None:
    assert docker_engine_problem(lambda _: "/usr/bin/docker", _answer(0, "28.2.2\n")) is None


def test_no_docker_command_or_no_engine_is_named() -> None:
    assert docker_engine_problem(lambda _: None) == "no `docker` command on PATH"
    said = docker_engine_problem(
        lambda _: "/usr/bin/docker", _answer(1, "", "Cannot connect to the Docker daemon at unix:///x.sock.")
    )
    assert (
        said == "the Docker engine does not answer (Cannot connect to the Docker daemon at unix:///x.sock.)"
    )


def test_a_hanging_docker_is_a_problem_not_a_hang() -> None:
    def hangs(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        raise subprocess.TimeoutExpired(args, kwargs["timeout"])

    assert "failed" in (docker_engine_problem(lambda _: "/usr/bin/docker", hangs) or "")


def test_missing_prefect_docker_says_how_to_install_it() -> None:
    assert (
        prefect_docker_problem(lambda _: None) == 'prefect-docker is not installed (pip install ".[docker]")'
    )
    assert prefect_docker_problem(lambda _: object()) is None


def test_the_message_says_what_happened_for_all_and_by_name() -> None:
    assert skip_message(["x"], deploy_all=True).startswith("Skipping the `docker` deployment: x.")
    assert "Nothing was registered" in skip_message(["x", "y"], deploy_all=False)
    assert "x; y" in skip_message(["x", "y"], deploy_all=False)
