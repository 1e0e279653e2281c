"""Schema migrations: where they live, applying them, and refusing a database behind them.

The Alembic scripts live in `infra/migrations` (the only way the schema is made). They
are found, in order: `$BRIGHTRUN_MIGRATIONS_DIR`; `infra/migrations` beside this package
in a source checkout; `brightrun/registry/_migrations` inside an installed package
(a copy of `infra/migrations` that the build puts there).

Alembic records the revision in `brightrun_alembic_version`, not `alembic_version`, so
the pipeline's migrations never collide with another app's in a shared Supabase database.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, event, exc

from brightrun.errors import BrightrunError
from brightrun.registry.db import database_error, make_engine, mask_url

log = logging.getLogger("brightrun.registry")

VERSION_TABLE = "brightrun_alembic_version"
UPGRADE_HINT = "run `brightrun db upgrade`"


class InstallRefused(BrightrunError):
    """The database holds a table of a pipeline table's name but of another shape: nothing
    was installed (the migrations ran in one transaction, rolled back)."""

    exit_code = 2


class SchemaOutOfDate(BrightrunError):
    """The registry database is behind (or ahead of) the migrations of this brightrun."""


def migrations_dir() -> Path:
    candidates = []
    if env := os.environ.get("BRIGHTRUN_MIGRATIONS_DIR"):
        candidates.append(Path(env))
    here = Path(__file__).resolve().parent
    candidates += [here.parents[1] / "infra" / "migrations", here / "_migrations"]
    for path in candidates:
        if (path / "env.py").is_file():
            return path
    raise BrightrunError(
        "the registry migrations were not found (looked in "
        + ", ".join(str(p) for p in candidates)
        + "); set BRIGHTRUN_MIGRATIONS_DIR to the infra/migrations directory of the brightrun source"
    )


def alembic_config(engine: Engine | None = None) -> Config:
    """An Alembic config for the migrations; `engine` is handed to env.py (no URL in the ini)."""
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.set_main_option("version_table", VERSION_TABLE)
    if engine is not None:
        config.attributes["engine"] = engine
    return config


def head_revision() -> str:
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    if len(heads) != 1:
        raise BrightrunError(f"the registry migrations have {len(heads)} heads ({heads}); expected one")
    return heads[0]


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or None when it has never been migrated."""
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(
                conn, opts={"version_table": VERSION_TABLE}
            ).get_current_revision()
    except exc.DBAPIError as error:
        raise database_error(engine, error, "reading the registry schema revision") from None


def upgrade(url_or_engine: str | Engine, revision: str = "head", *, dry_run: bool = False) -> str:
    """Apply the migrations up to `revision` (default: the latest); returns the new revision.

    `dry_run`: run them in a transaction that is rolled back, and return the SQL they ran
    (one statement per line, ending in `;`) instead of a revision. The migrations read the
    database to decide what to make, so the SQL is what this database would get; Postgres
    undoes DDL on rollback, so nothing stays.
    """
    engine = (
        url_or_engine
        if isinstance(url_or_engine, Engine)
        # No statement timeout: an index build on a big table may take a while.
        else make_engine(url_or_engine, statement_timeout_ms=None, pool_size=1)
    )
    log.info("upgrading registry %s to %s%s", mask_url(engine.url), revision, " (dry run)" if dry_run else "")
    config = alembic_config(engine)
    statements: list[str] = []
    if dry_run:
        config.attributes["dry_run"] = True

        def record(_conn: object, _cursor: object, statement: str, *_rest: object) -> None:
            # The migrations' own reads of the catalog are not what they would change.
            if not statement.lstrip().upper().startswith(("SELECT", "PRAGMA", "WITH")):
                statements.append(statement.strip() + ";")

        event.listen(engine, "before_cursor_execute", record)
    try:
        command.upgrade(config, revision)
    except exc.DBAPIError as error:
        raise database_error(engine, error, "applying the registry migrations") from None
    finally:
        if dry_run:
            event.remove(engine, "before_cursor_execute", record)
        if not isinstance(url_or_engine, Engine):
            engine.dispose()
    if dry_run:
        return "\n".join(statements)
    return current_revision(engine) or "base"


def downgrade(engine: Engine, revision: str = "base") -> None:
    """Undo migrations (tests and development). Never drops the lexybrain_* tables."""
    command.downgrade(alembic_config(engine), revision)


def ensure_schema_current(engine: Engine) -> str:
    """Raise SchemaOutOfDate unless the database is at the latest revision; returns it."""
    head = head_revision()
    current = current_revision(engine)
    if current == head:
        return head
    where = mask_url(engine.url)
    if current is None:
        raise SchemaOutOfDate(f"the registry database {where} has no brightrun schema yet; {UPGRADE_HINT}")
    script = ScriptDirectory.from_config(alembic_config())
    try:
        known = script.get_revision(current) is not None
    except Exception:
        known = False
    if not known:
        raise SchemaOutOfDate(
            f"the registry database {where} is at revision {current}, newer than this brightrun "
            f"knows (latest {head}); upgrade the brightrun package"
        )
    raise SchemaOutOfDate(
        f"the registry database {where} is at revision {current}, behind the latest {head}; {UPGRADE_HINT}"
    )
