"""The `docker` deployment's check step (deployments/docker_check.py): what counts as no Docker."""

from __future__ import annotations

import pytest

from deployments.docker_check import docker_engine_problem, prefect_docker_problem, skip_message


def test_an_engine_that_answers_is_no_problem() -> None:
    assert docker_engine_problem(lambda: None) is None


def test_an_engine_that_does_not_answer_is_named_with_the_first_line_of_the_error() -> None:
    def refused() -> None:
        raise ConnectionError("Error while fetching server API version: refused\ndetails")

    said = docker_engine_problem(refused)
    assert said == "the Docker engine does not answer (Error while fetching server API version: refused)"


def test_no_docker_sdk_says_how_to_install_it() -> None:
    def missing() -> None:
        raise ImportError("No module named 'docker'")

    assert "pip install" in (docker_engine_problem(missing) or "")


def test_the_real_probe_reports_a_closed_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:9")  # discard port: nothing listens
    assert (docker_engine_problem() or "").startswith("the Docker engine does not answer (")


def test_missing_prefect_docker_says_how_to_install_it() -> None:
    assert (
        prefect_docker_problem(lambda _: None) == 'prefect-docker is not installed (pip install ".[docker]")'
    )
    assert prefect_docker_problem(lambda _: object()) is None


def test_the_message_says_what_happened_for_all_and_by_name() -> None:
    assert skip_message(["x"], deploy_all=True).startswith("Skipping the `docker` deployment: x.")
    assert "Nothing was registered" in skip_message(["x", "y"], deploy_all=False)
    assert "x; y" in skip_message(["x", "y"], deploy_all=False)
