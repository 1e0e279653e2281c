"""Alembic environment for the brightrun registry.

The engine comes from `brightrun.registry.migrations.upgrade` (config.attributes["engine"]);
under Alembic's own CLI, from `-x url=...` or the brightrun settings
(BRIGHTRUN_DATABASE_URL, default the embedded SQLite file).
"""

from __future__ import annotations

import logging.config

from alembic import context
from sqlalchemy import Engine, text

from brightrun.registry.db import make_engine
from brightrun.registry.models import Base

config = context.config
VERSION_TABLE = config.get_main_option("version_table") or "brightrun_alembic_version"
# Any constant works; it serialises concurrent `brightrun db upgrade` runs on Postgres.
ADVISORY_LOCK_KEY = 0x62726E74  # "brnt"


class _DryRunDone(Exception):
    """Raised at the end of a dry run so the transaction rolls back."""


def _engine() -> tuple[Engine, bool]:
    engine = config.attributes.get("engine")
    if engine is not None:
        return engine, False
    if config.config_file_name:
        logging.config.fileConfig(config.config_file_name, disable_existing_loggers=False)
    url = context.get_x_argument(as_dictionary=True).get("url")
    if not url:
        from brightrun.settings import load_settings

        url = load_settings().resolved_database_url
    return make_engine(url, statement_timeout_ms=None, pool_size=1), True


def run_migrations_online() -> None:
    engine, owned = _engine()
    try:
        with engine.connect() as connection:
            context.configure(
                connection=connection,
                target_metadata=Base.metadata,
                version_table=VERSION_TABLE,
                render_as_batch=connection.dialect.name == "sqlite",
                compare_type=True,
            )
            # One transaction for every migration (Postgres): a refused install
            # (InstallRefused) or a dry run (`db upgrade --dry-run`) leaves nothing behind.
            try:
                with context.begin_transaction():
                    if connection.dialect.name == "postgresql":
                        connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": ADVISORY_LOCK_KEY})
                    context.run_migrations()
                    if config.attributes.get("dry_run"):
                        raise _DryRunDone
            except _DryRunDone:
                pass
    finally:
        if owned:
            engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run against a database")
run_migrations_online()
