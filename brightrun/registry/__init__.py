"""The registry: jobs, training files, adapters, metrics and events in SQLite or Postgres.

    from brightrun.registry import open_registry, repository as repo
    engine = open_registry(settings)
    job = repo.create_job(engine, job_name="...", base_model="...")

`open_registry` upgrades the embedded SQLite database by itself (no setup step on a
laptop) and refuses a Postgres database behind the latest migration, naming the command
that fixes it (`brightrun db upgrade`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import Engine

from brightrun.registry.db import DatabaseError, DatabaseUnavailable, is_sqlite, make_engine, mask_url
from brightrun.registry.migrations import (
    SchemaOutOfDate,
    current_revision,
    ensure_schema_current,
    head_revision,
    upgrade,
)

if TYPE_CHECKING:
    from brightrun.settings import Settings

__all__ = [
    "DatabaseError",
    "DatabaseUnavailable",
    "is_sqlite",
    "SchemaOutOfDate",
    "current_revision",
    "ensure_schema_current",
    "head_revision",
    "make_engine",
    "mask_url",
    "open_registry",
    "open_registry_url",
    "upgrade",
]


def open_registry_url(
    url: str, *, auto_upgrade: bool | None = None, retry_seconds: float | None = None
) -> Engine:
    """An engine on `url` whose schema is current. `auto_upgrade` defaults to True for SQLite.

    `retry_seconds`: how long its calls keep retrying while the database is unreachable.
    """
    engine = make_engine(url, retry_seconds=retry_seconds)
    if auto_upgrade is None:
        auto_upgrade = is_sqlite(engine)
    try:
        if auto_upgrade:
            _auto_upgrade(engine)
        ensure_schema_current(engine)
    except BaseException:
        engine.dispose()
        raise
    return engine


def _auto_upgrade(engine: Engine) -> None:
    """Bring a registry to the latest schema, once: two processes opening a fresh SQLite file
    at the same moment (the flow and its trainer's reaper, two CLI calls) take a file lock
    next to the database file, so the second finds the schema made instead of racing to
    create it. Postgres needs no file: the migrations take an advisory lock (env.py)."""
    import fcntl
    from pathlib import Path

    from brightrun.registry.migrations import current_revision, head_revision

    if current_revision(engine) == head_revision():
        return
    database = engine.url.database
    if not is_sqlite(engine) or not database or database == ":memory:":
        upgrade(engine)
        return
    database_path = Path(database).expanduser().resolve()
    lock_path = database_path.with_name(database_path.name + ".migrate.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if current_revision(engine) != head_revision():
            upgrade(engine)


def open_registry(settings: Settings, *, auto_upgrade: bool | None = None) -> Engine:
    """The registry engine for these settings (see the module docstring), with the
    `database_retry_seconds` patience for outages."""
    from brightrun.registry.db import set_training_file_values

    engine = open_registry_url(
        settings.resolved_database_url,
        auto_upgrade=auto_upgrade,
        retry_seconds=settings.database_retry_seconds,
    )
    values = dict(settings.training_file_defaults)
    if settings.service_user_id:
        values.setdefault("created_by", settings.service_user_id)
    set_training_file_values(engine, values)
    return engine
