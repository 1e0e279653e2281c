"""Engine creation and connection handling for the registry database.

Production (Postgres/Supabase): pooled connections checked with pre-ping, a short
statement timeout so a stuck query fails instead of hanging a flow, and retries with
backoff when the connection is lost (a restarted server, a dropped pooler connection).
The embedded default (SQLite under $BRIGHTRUN_HOME) gets WAL and a busy timeout so
threads and processes share it.

The URL's password never reaches a log line or an error message: log with `mask_url`,
raise through `database_error`.
"""

from __future__ import annotations

import functools
import itertools
import logging
import random
import re
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import Engine, create_engine, event, exc, make_url
from sqlalchemy.engine import URL

from brightrun.errors import BrightrunError

log = logging.getLogger("brightrun.registry")

P = ParamSpec("P")
T = TypeVar("T")

DEFAULT_STATEMENT_TIMEOUT_MS = 30_000
# The first waits after a lost connection (a restart or a pooler failover heals in these
# ~8 s). An engine opened with a patience (`retry_seconds`, the `database_retry_seconds`
# setting) keeps going after them, doubling up to MAX_RETRY_DELAY, until the patience is spent.
RETRY_DELAYS: tuple[float, ...] = (0.2, 0.5, 1.0, 2.0, 4.0)
MAX_RETRY_DELAY = 15.0
# Patience per engine (an Engine takes no attributes of ours; weak so engines still go away).
_patience: weakref.WeakKeyDictionary[Engine, float] = weakref.WeakKeyDictionary()
_SECRET_QUERY_KEYS = re.compile(r"(?i)((?:password|passwd|pwd|sslpassword|secret|token|key)=)[^&\s'\"]+")


class DatabaseError(BrightrunError):
    """The registry database failed or cannot be reached (the URL in the message is masked)."""


class DatabaseUnavailable(DatabaseError):
    """The connection was lost or refused, and retries did not bring it back."""


def mask_url(url: str | URL) -> str:
    """The URL with its password (and secret-looking query parameters) replaced by ***."""
    try:
        parsed = make_url(url) if isinstance(url, str) else url
        text = parsed.render_as_string(hide_password=True)
    except Exception:
        text = re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", str(url))
    return _SECRET_QUERY_KEYS.sub(r"\1***", text)


def _secrets_of(url: URL) -> list[str]:
    secrets = [url.password] if url.password else []
    for key, value in url.query.items():
        if _SECRET_QUERY_KEYS.match(f"{key}=x"):
            secrets.extend([value] if isinstance(value, str) else list(value))
    return [s for s in secrets if s and len(s) >= 3]


def scrub(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return _SECRET_QUERY_KEYS.sub(r"\1***", text)


class _ScrubFilter(logging.Filter):
    """Removes known secrets from every record that passes through the registry's loggers."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = record.getMessage()
            cleaned = scrub(message, sorted(self.secrets, key=len, reverse=True))
            if cleaned != message:
                record.msg, record.args = cleaned, None
        return True


_scrub_filter = _ScrubFilter()
for _name in ("brightrun", "sqlalchemy", "alembic"):
    logging.getLogger(_name).addFilter(_scrub_filter)


def is_sqlite(engine_or_url: Engine | str | URL) -> bool:
    url = engine_or_url.url if isinstance(engine_or_url, Engine) else make_url(engine_or_url)
    return url.get_backend_name() == "sqlite"


def make_engine(
    url: str | URL,
    *,
    statement_timeout_ms: int | None = DEFAULT_STATEMENT_TIMEOUT_MS,
    pool_size: int = 5,
    echo: bool = False,
    retry_seconds: float | None = None,
) -> Engine:
    """An engine configured for the registry (see module docstring). `url` may hold secrets.

    `retry_seconds`: how long a repository call on this engine keeps retrying while the
    database is unreachable (None: only the RETRY_DELAYS, about 8 s).
    """
    parsed = make_url(url) if isinstance(url, str) else url
    _scrub_filter.secrets.update(_secrets_of(parsed))
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            parsed, echo=echo, pool_pre_ping=True, connect_args={"timeout": 30, "check_same_thread": False}
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            if parsed.database and parsed.database != ":memory:":
                cur.execute("PRAGMA journal_mode=WAL")
            cur.close()

        _set_patience(engine, retry_seconds)
        return engine

    if backend == "postgresql" and parsed.get_driver_name() in ("psycopg2", "default"):
        # One driver everywhere (psycopg 3): `postgresql://` means psycopg here.
        parsed = parsed.set(drivername="postgresql+psycopg")
    connect_args: dict[str, Any] = {}
    if backend == "postgresql":
        connect_args = postgres_connect_args()
    engine = create_engine(
        parsed,
        echo=echo,
        pool_pre_ping=True,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_recycle=1800,
        pool_timeout=30,
        connect_args=connect_args,
        hide_parameters=True,
    )
    if backend == "postgresql" and statement_timeout_ms:
        # SET LOCAL in every transaction, never a session SET: behind a transaction pooler
        # (Supabase's Supavisor on 6543, PgBouncer) consecutive transactions reach different
        # server connections, so a session setting lands on one backend and leaks to other
        # clients. The `options` startup parameter is no way out either: poolers reject it.
        timeouts = (
            f"SET LOCAL statement_timeout = {int(statement_timeout_ms)}; "
            f"SET LOCAL idle_in_transaction_session_timeout = {int(statement_timeout_ms) * 4}"
        )

        @event.listens_for(engine, "begin")
        def _pg_timeouts(conn: Any) -> None:
            if conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
                return  # no transaction: SET LOCAL would only warn
            # A plain DBAPI cursor: the Connection may carry stream_results (a named server
            # cursor cannot run SET). psycopg opens the transaction with this statement.
            dbapi = conn.dialect.loaded_dbapi
            try:
                with conn.connection.dbapi_connection.cursor() as cur:
                    cur.execute(timeouts)
            except dbapi.Error as error:
                # A pooled connection whose server went away fails here first, raw from the
                # driver: wrapped and invalidated as SQLAlchemy would, so `retry_on_disconnect`
                # and the monitor's outbox see a lost connection, not an unknown error.
                conn.invalidate()
                raise exc.DBAPIError.instance(
                    timeouts, None, error, dbapi.Error, connection_invalidated=True, dialect=conn.dialect
                ) from None

    log.debug("registry engine for %s", mask_url(parsed))
    _set_patience(engine, retry_seconds)
    return engine


def postgres_connect_args() -> dict[str, Any]:
    """psycopg connect arguments for every Postgres engine (the pipeline's and migrations').

    `prepare_threshold=None`: no server-side prepared statements. psycopg 3 prepares a
    statement after 5 runs; behind a transaction pooler the next run reaches another server
    connection, where `_pg3_0` "does not exist" (or "already exists"). A direct connection
    loses nothing that matters for the registry's short queries.
    """
    return {"connect_timeout": 10, "application_name": "brightrun", "prepare_threshold": None}


# Values for the app's training_files columns the pipeline cannot fill (created_by from the
# service user, BRIGHTRUN_TRAINING_FILE_DEFAULTS), per engine like the patience.
_training_file_values: weakref.WeakKeyDictionary[Engine, dict[str, Any]] = weakref.WeakKeyDictionary()


def set_training_file_values(engine: Engine, values: dict[str, Any]) -> None:
    _training_file_values[engine] = dict(values)


def training_file_values(engine: Engine) -> dict[str, Any]:
    return dict(_training_file_values.get(engine, {}))


def _set_patience(engine: Engine, retry_seconds: float | None) -> None:
    if retry_seconds is not None:
        _patience[engine] = float(retry_seconds)


def retry_delays(patience: float | None) -> Iterator[float]:
    """The waits between tries: RETRY_DELAYS, then (with a patience) doubling up to
    MAX_RETRY_DELAY until the waits add up to `patience` seconds."""
    if patience is None:
        yield from RETRY_DELAYS
        return
    spent = 0.0
    delay = RETRY_DELAYS[0] if RETRY_DELAYS else 1.0
    for i in itertools.count():
        delay = RETRY_DELAYS[i] if i < len(RETRY_DELAYS) else min(delay * 2, MAX_RETRY_DELAY)
        if spent >= patience:
            return
        delay = min(delay, patience - spent)
        spent += delay
        yield delay


# Refusals that say the URL or credentials are wrong, not that the server is away.
_PERMANENT = (
    "does not exist",
    "password authentication failed",
    "no pg_hba.conf entry",
    "unable to open database file",
)


def is_disconnect(error: BaseException) -> bool:
    """True for errors that a fresh connection may cure (lost or refused connections)."""
    if isinstance(error, exc.DBAPIError):
        if error.connection_invalidated:
            return True
        if isinstance(error, (exc.OperationalError, exc.InterfaceError)):
            text = str(error.orig).lower() if error.orig is not None else str(error).lower()
            if any(marker in text for marker in _PERMANENT):
                return False  # a wrong URL or password: waiting will not cure it
            return any(
                marker in text
                for marker in (
                    "connection",
                    "server closed",
                    "terminating",
                    "shutting down",
                    "starting up",
                    "timeout expired",
                    "could not receive",
                    "ssl syscall",
                    "eof detected",
                    "the database system is",
                )
            )
    return False


def database_error(engine_or_url: Engine | str | URL, error: BaseException, doing: str) -> DatabaseError:
    """A user-facing error for `error`, with the URL masked and secrets scrubbed."""
    url = engine_or_url.url if isinstance(engine_or_url, Engine) else engine_or_url
    parsed = make_url(url) if isinstance(url, str) else url
    detail = str(getattr(error, "orig", None) or error).strip().splitlines()
    first = detail[0] if detail else type(error).__name__
    message = scrub(f"{doing}: {first} (database {mask_url(parsed)})", _secrets_of(parsed))
    kind = DatabaseUnavailable if is_disconnect(error) else DatabaseError
    return kind(
        message
        + (
            "; check that the server is up and BRIGHTRUN_DATABASE_URL is right"
            if kind is DatabaseUnavailable
            else ""
        )
    )


def retry_on_disconnect(fn: Callable[P, T]) -> Callable[P, T]:
    """Retry `fn` with jittered backoff while the database connection is lost.

    Only for functions that open their own transaction from an Engine (the repository's
    functions when given an Engine): a transaction cut in the middle rolled back, so
    running it again is safe. With a Connection the caller owns the transaction: no retry.
    """

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        bind = args[0] if args else None
        if not isinstance(bind, Engine):
            return fn(*args, **kwargs)
        # Read at call time so tests (and impatient scripts) can shorten the backoff.
        patience = _patience.get(bind)
        delays = retry_delays(patience)
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                return fn(*args, **kwargs)
            except exc.DBAPIError as error:
                if not is_disconnect(error):
                    raise database_error(bind, error, f"{fn.__name__} failed") from None
                delay = next(delays, None)
                waited = time.monotonic() - started
                if delay is None:
                    raise database_error(
                        bind, error, f"{fn.__name__}: database unreachable for {waited:.0f}s"
                    ) from None
                log.warning(
                    "registry %s unreachable (%s: attempt %d, %.0fs so far%s); retrying in %.1fs",
                    mask_url(bind.url),
                    fn.__name__,
                    attempt,
                    waited,
                    f", patience {patience:.0f}s" if patience is not None else "",
                    delay,
                )
                bind.dispose()  # drop every pooled connection: they are all dead after a restart
                time.sleep(delay * (0.75 + random.random() / 2))

    return wrapper
