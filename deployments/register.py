"""Register every deployment of prefect.yaml: the Python equivalent of `prefect deploy --all`.

    PREFECT_API_URL=http://127.0.0.1:4200/api python -m deployments.register [prefect.yaml]

Why it exists: the `prefect deploy` CLI of Prefect 3.8.8 with this project's FastAPI pin
fails after the first deployment (its active-worker check posts `limit: null`, which the
server rejects with 422). This reads the same file and registers the same deployments
(entrypoint, work pool and queue, job variables, parameters, schedules, concurrency limit,
pull steps, tags), creating the work pools it names when they are missing. No image is
built here: build the flow image with `docker build -f infra/Dockerfile.flow .`.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from pathlib import Path
from typing import Any
from uuid import UUID

import yaml

REPO = Path(__file__).resolve().parents[1]
POOL_TYPES = {"brightrun-process": "process", "brightrun-docker": "docker"}
_ENV_TEMPLATE = re.compile(r"\{\{\s*\$(\w+)\s*\}\}")


def load_config(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("deployments"), list):
        raise ValueError(f"{path}: expected a Prefect project file with a `deployments` list")
    return data


def _resolve_env(value: Any) -> Any:
    """`{{ $VAR }}` as `prefect deploy` resolves it (BRIGHTRUN_REPO defaults to this checkout)."""
    if isinstance(value, str):
        return _ENV_TEMPLATE.sub(
            lambda m: os.environ.get(m.group(1), str(REPO) if m.group(1) == "BRIGHTRUN_REPO" else ""), value
        )
    if isinstance(value, list):
        return [_resolve_env(v) for v in value]
    if isinstance(value, dict):
        return {k: _resolve_env(v) for k, v in value.items()}
    return value


def _schedules(entries: list[dict[str, Any]] | None) -> list[Any]:
    from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule
    from prefect.schedules import Schedule

    out = []
    for entry in entries or []:
        active = entry.get("active", True)
        if "cron" in entry:
            schedule = CronSchedule(cron=entry["cron"], timezone=entry.get("timezone"))
            out.append(Schedule(cron=schedule.cron, timezone=schedule.timezone, active=active))
        elif "interval" in entry:
            seconds = float(entry["interval"])
            IntervalSchedule(interval=seconds)  # validates
            from datetime import timedelta

            out.append(Schedule(interval=timedelta(seconds=seconds), active=active))
        else:
            raise ValueError(f"unsupported schedule {entry}; use cron or interval")
    return out


def _concurrency(value: Any) -> Any:
    if value is None or isinstance(value, int):
        return value
    from prefect.client.schemas.objects import ConcurrencyLimitConfig

    return ConcurrencyLimitConfig(**value)


def ensure_work_pools(names: set[str]) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client:
        for name in sorted(names):
            with contextlib.suppress(ObjectAlreadyExists):
                client.create_work_pool(WorkPoolCreate(name=name, type=POOL_TYPES.get(name, "process")))


def register_all(path: Path = REPO / "prefect.yaml", *, create_pools: bool = True) -> dict[str, UUID]:
    """Register each deployment; returns `flow/deployment` -> id."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentUpdate
    from prefect.flows import load_flow_from_entrypoint

    config = _resolve_env(load_config(path))
    root = path.resolve().parent
    default_pull = config.get("pull") or []
    pools = {d["work_pool"]["name"] for d in config["deployments"] if d.get("work_pool")}
    if create_pools:
        ensure_work_pools(pools)
    registered: dict[str, UUID] = {}
    cwd = Path.cwd()
    sys.path.insert(0, str(root))
    os.chdir(root)  # entrypoints are relative to the project file, as for `prefect deploy`
    try:
        for spec in config["deployments"]:
            flow = load_flow_from_entrypoint(spec["entrypoint"])
            pool = spec.get("work_pool") or {}
            deployment = flow.to_deployment(
                name=spec["name"],
                description=spec.get("description"),
                tags=spec.get("tags"),
                parameters=spec.get("parameters") or {},
                schedules=_schedules(spec.get("schedules")),
                concurrency_limit=_concurrency(spec.get("concurrency_limit")),
                work_pool_name=pool.get("name"),
                work_queue_name=pool.get("work_queue_name"),
                job_variables=pool.get("job_variables") or {},
            )
            deployment.entrypoint = spec["entrypoint"]
            deployment_id = deployment.apply(work_pool_name=pool.get("name"))
            pull = spec.get("pull", default_pull)
            with get_client(sync_client=True) as client:
                client.update_deployment(deployment_id, DeploymentUpdate(pull_steps=pull, path=None))
            registered[f"{flow.name}/{spec['name']}"] = deployment_id
    finally:
        os.chdir(cwd)
        sys.path.remove(str(root))
    return registered


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "prefect.yaml"
    for name, deployment_id in register_all(path).items():
        print(f"{name}: {deployment_id}")


if __name__ == "__main__":
    main()
