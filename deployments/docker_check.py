"""The `docker` deployment's first build step: without Docker, say so and stop, cleanly.

`prefect deploy --all` on a machine without a Docker engine (or without prefect-docker, the
`docker` extra) would otherwise end in a traceback from the image build, or, had the step a
`requires:`, pip-install prefect-docker into the venv. The `docker` deployment is the last in
prefect.yaml, so by the time this step runs every other deployment is registered: with
`--all` the deploy ends here with exit 0 and a line saying what was skipped and why; asked for
by name (`-n train_adapter/docker`) it fails with that line (exit 1), since nothing was done.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Sequence
from typing import Any

DOCKER_PROBE_TIMEOUT_S = 15.0


def _ping_engine() -> None:
    import docker  # prefect-docker's own client: DOCKER_HOST and the socket as its build sees them

    client = docker.from_env(timeout=DOCKER_PROBE_TIMEOUT_S)
    try:
        client.ping()
    finally:
        client.close()


def docker_engine_problem(ping: Callable[[], None] = _ping_engine) -> str | None:
    """Why no image can be built here, or None when a Docker engine answers."""
    try:
        ping()
    except ImportError:
        return 'the docker Python package is not installed (pip install ".[docker]")'
    except Exception as exc:  # the SDK's errors wrap requests' and urllib3's, whatever failed
        said = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return f"the Docker engine does not answer ({said})"
    return None


def prefect_docker_problem(find_spec: Callable[[str], Any] = importlib.util.find_spec) -> str | None:
    if find_spec("prefect_docker") is None:
        return 'prefect-docker is not installed (pip install ".[docker]")'
    return None


def skip_message(problems: Sequence[str], deploy_all: bool) -> str:
    why = "; ".join(problems)
    if deploy_all:
        return (
            f"Skipping the `docker` deployment: {why}. Every other deployment is registered; on a "
            "machine with Docker, run `prefect deploy -n train_adapter/docker`."
        )
    return f"Cannot deploy train_adapter/docker here: {why}. Nothing was registered."


def require_docker(**_: Any) -> dict[str, str]:
    """Prefect build step (prefect.yaml): returns nothing to template; ends the deploy without
    Docker. Called by `prefect deploy`, whose command line says whether it deploys `--all`."""
    problems = [p for p in (prefect_docker_problem(), docker_engine_problem()) if p is not None]
    if not problems:
        return {}
    deploy_all = "--all" in sys.argv
    print(skip_message(problems, deploy_all), flush=True)
    raise SystemExit(0 if deploy_all else 1)
