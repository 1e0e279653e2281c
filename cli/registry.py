"""`brightrun db ...`, `brightrun jobs ...`, `brightrun artifacts ...`: the registry from the shell.

Tables on screen, `--json` for scripts. `jobs_app` and `db_app` are module-level so other
areas can add commands to them (e.g. `jobs cancel` from the flows area).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Annotated, Any

import typer

db_app = typer.Typer(help="The registry database: schema migrations.", no_args_is_help=True)
jobs_app = typer.Typer(help="Training jobs recorded in the registry.", no_args_is_help=True)
artifacts_app = typer.Typer(
    help="Adapters and other artifacts recorded in the registry.", no_args_is_help=True
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def register(app: typer.Typer) -> None:
    """Add this area's commands to the `brightrun` app."""
    app.add_typer(db_app, name="db")
    app.add_typer(jobs_app, name="jobs")
    app.add_typer(artifacts_app, name="artifacts")


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(value, default=str, indent=2))


# Someone waits at the terminal: these commands give up on an unreachable database after
# this long, not after the pipeline's `database_retry_seconds` (minutes, for running jobs).
CLI_RETRY_SECONDS = 10.0


def _resources() -> Any:
    from brightrun.resources import Resources
    from brightrun.settings import load_settings

    settings = load_settings()
    patience = min(settings.database_retry_seconds, CLI_RETRY_SECONDS)
    return Resources.from_settings(settings.model_copy(update={"database_retry_seconds": patience}))


def _no_registry_yet(resources: Any) -> bool:
    """Read-only commands never create a registry (nor its lock file): say so instead."""
    if resources.registry_exists():
        return False
    from brightrun.registry import mask_url

    typer.echo(
        f"no jobs yet: the registry {mask_url(resources.settings.resolved_database_url)} does not exist "
        "(the first `brightrun train` or `brightrun db upgrade` creates it)",
        err=True,
    )
    return True


def _check_choices(values: list[str] | None, allowed: type[Any], option: str) -> None:
    """An unknown --status/--type value: a usage error (exit 2) that lists the allowed values."""
    names = [v.value for v in allowed]
    unknown = [v for v in values or [] if v not in names]
    if unknown:
        raise typer.BadParameter(
            f"{', '.join(repr(v) for v in unknown)} unknown; allowed values are {', '.join(names)}",
            param_hint=f"'{option}'",
        )


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    if hasattr(value, "strftime"):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


# ---------------------------------------------------------------- db


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Option(help="Target revision.")] = "head",
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the SQL it would run, and change nothing.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Apply the registry migrations (safe to run again; needed once per release on Postgres).

    On Supabase run it over the direct connection (port 5432), not the pooler."""
    from brightrun.registry import is_sqlite, mask_url, upgrade
    from brightrun.settings import load_settings

    url = load_settings().resolved_database_url
    if dry_run:
        sql = upgrade(url, revision, dry_run=True)
        typer.echo(sql or "-- nothing to do: the registry is at the latest revision")
        return
    before_after = upgrade(url, revision)
    # The LexyBrain guide's view and function are Postgres objects (made where absent there).
    note = (
        "lexybrain_training_data and get_lexybrain_feedback_stats are Postgres objects: "
        "not created on a SQLite registry"
        if is_sqlite(url)
        else None
    )
    if as_json:
        _print_json({"database": mask_url(url), "revision": before_after, "note": note})
    else:
        typer.echo(f"registry {mask_url(url)} is at revision {before_after}")
        if note:
            typer.echo(note)


@db_app.command("current")
def db_current(as_json: JsonOption = False) -> None:
    """Show the database's schema revision and the latest one this brightrun knows."""
    from brightrun.registry import current_revision, head_revision, make_engine, mask_url

    resources = _resources()
    url = resources.settings.resolved_database_url
    current = None
    if resources.registry_exists():  # an absent SQLite file stays absent
        engine = make_engine(url)
        try:
            current = current_revision(engine)
        finally:
            engine.dispose()
    head = head_revision()
    info = {"database": mask_url(url), "current": current, "head": head, "up_to_date": current == head}
    if as_json:
        _print_json(info)
        return
    state = "up to date" if current == head else "behind: run `brightrun db upgrade`"
    typer.echo(f"registry {info['database']}: revision {current or '(none)'}, latest {head} ({state})")


# ---------------------------------------------------------------- jobs


@jobs_app.command("list")
def jobs_list(
    status: Annotated[
        list[str] | None,
        typer.Option(
            "--status",
            "-s",
            help="Only these statuses (queued, preprocessing, model_loaded, training, completed, "
            "failed, cancelled); repeat for several.",
        ),
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 50,
    as_json: JsonOption = False,
) -> None:
    """List jobs, newest first."""
    from brightrun.registry import repository as repo
    from brightrun.registry.models import JobStatus

    _check_choices(status, JobStatus, "--status")
    with _resources() as resources:
        if _no_registry_yet(resources):
            if as_json:
                _print_json([])
            return
        jobs = repo.list_jobs(resources.registry, status=status or None, limit=limit)
    if as_json:
        _print_json([dataclasses.asdict(j) for j in jobs])
        return
    from rich.table import Table

    # The id stays whole (it is what `jobs show` and `jobs cancel` take); the rest may fold.
    table = Table(title=f"{len(jobs)} job(s)")
    table.add_column("id", no_wrap=True)
    for col in ("name", "status", "base model", "step", "loss", "cost $", "created"):
        table.add_column(col, overflow="fold")
    for j in jobs:
        table.add_row(
            j.id,
            j.job_name or "-",
            j.status,
            _short_model(j.base_model),
            f"{j.current_step}/{j.total_steps or '?'}",
            _fmt(j.current_loss),
            _fmt(j.actual_cost_usd, 3),
            j.created_at.strftime("%Y-%m-%d %H:%M") if j.created_at else "-",
        )
    _console().print(table)


def _console() -> Any:
    """A terminal's own width; piped output (a log, `less`) gets room for a whole row."""
    import sys

    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 160)


def _short_model(base_model: str) -> str:
    """A hub id as it is (org/name); a local model directory by its last component."""
    return base_model.rstrip("/").rsplit("/", 1)[-1] if base_model.startswith(("/", ".")) else base_model


@jobs_app.command("show")
def jobs_show(
    job_id: Annotated[str, typer.Argument(help="The job's id (see `brightrun jobs list`).")],
    events: Annotated[int, typer.Option(help="Show this many latest events.")] = 20,
    as_json: JsonOption = False,
) -> None:
    """One job: its fields (ETA in estimated_completion_at, who started it in created_by),
    latest events and artifacts."""
    from brightrun.registry import repository as repo
    from brightrun.registry.short_ids import resolve_job_id

    with _resources() as resources:
        if _no_registry_yet(resources):
            raise repo.JobNotFound(job_id)
        engine = resources.registry
        job_id = resolve_job_id(engine, job_id)
        job = repo.get_job(engine, job_id)
        job_events = repo.list_events(engine, job_id)[-events:] if events else []
        artifacts = repo.list_artifacts(engine, training_job_id=job_id)
    if as_json:
        _print_json(
            {
                **dataclasses.asdict(job),
                "events": [dataclasses.asdict(e) for e in job_events],
                "artifacts": [dataclasses.asdict(a) for a in artifacts],
            }
        )
        return
    from rich.table import Table

    console = _console()
    fields = Table(title=f"job {job.id}", show_header=False)
    fields.add_column("field", style="bold")
    fields.add_column("value", overflow="fold")
    for name, value in dataclasses.asdict(job).items():
        if name == "estimated_completion_at":
            name = "estimated_completion_at (ETA)"
        if isinstance(value, dict):
            value = json.dumps(value, default=str) if value else "-"
        fields.add_row(name, _fmt(value))
    console.print(fields)
    if job_events:
        table = Table(title="events (latest last)")
        for col in ("time", "type", "attempt", "payload"):
            table.add_column(col, overflow="fold")
        for e in job_events:
            table.add_row(_fmt(e.created_at), e.type, str(e.attempt), json.dumps(e.payload, default=str))
        console.print(table)
    if artifacts:
        _artifacts_table(console, artifacts)


# ---------------------------------------------------------------- artifacts


def _artifacts_table(console: Any, artifacts: list[Any]) -> None:
    """Two lines per adapter, never folded: the first holds what the other commands take (the
    id, the served name, the job) with the status and figures, the second where it lives and,
    for a round that continued from another adapter (train --init-adapter), its lineage. A
    table of eleven columns folds ids in any terminal narrower than 200 characters."""
    console.print(f"{len(artifacts)} artifact(s)", soft_wrap=True)
    for a in artifacts:
        parent = ((getattr(a, "metadata", None) or {}).get("continued_from") or {}).get("artifact_id")
        console.print(
            f"{a.id}  {a.served_name or '-'}  {a.deployment_status}  {a.artifact_type}  "
            f"job {a.training_job_id}  val loss {_fmt(a.validation_loss)}  "
            f"ppl {_fmt(a.validation_perplexity)}  size {_fmt(a.file_size_bytes)}",
            soft_wrap=True,
            highlight=False,
            markup=False,
        )
        lineage = f"  continued from {parent}" if parent else ""
        console.print(
            f"    base {a.base_model or '-'}  path {a.storage_path}{lineage}",
            soft_wrap=True,
            highlight=False,
            markup=False,
        )


@artifacts_app.command("list")
def artifacts_list(
    job: Annotated[str | None, typer.Option("--job", help="Only this job's artifacts.")] = None,
    artifact_type: Annotated[
        str | None, typer.Option("--type", help="lora_adapter, merged_model, checkpoint or gguf.")
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 100,
    as_json: JsonOption = False,
) -> None:
    """List registered artifacts (adapters), newest first."""
    from brightrun.registry import repository as repo
    from brightrun.registry.models import ArtifactType

    _check_choices([artifact_type] if artifact_type else None, ArtifactType, "--type")
    with _resources() as resources:
        if _no_registry_yet(resources):
            if as_json:
                _print_json([])
            return
        artifacts = repo.list_artifacts(
            resources.registry, training_job_id=job, artifact_type=artifact_type, limit=limit
        )
    if as_json:
        _print_json([dataclasses.asdict(a) for a in artifacts])
        return

    _artifacts_table(_console(), artifacts)
