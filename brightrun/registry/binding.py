"""How registry functions bind to the database: an Engine (a transaction of their own, retried
on a lost connection by `retry_on_disconnect`) or a Connection (the caller's transaction).

Every registry function takes `bind` first; `transaction(bind)` opens or joins the
transaction. Rows leave as frozen dataclass views (`row_view`) with string ids.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import MISSING, fields
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, Table
from sqlalchemy.dialects import postgresql, sqlite

from brightrun.errors import BrightrunError, InputError

Bind = Engine | Connection
V = TypeVar("V")


_JSON_FIELDS = frozenset({"metadata", "metrics", "hyperparameters", "lora_config", "payload"})


def row_view(cls: type[V], row: Any) -> V:
    data = row._mapping
    values = {}
    for f in fields(cls):  # type: ignore[arg-type]
        if f.name not in data and f.default is not MISSING:
            continue  # a column a later migration added, absent from the app's own table
        value = data[f.name]
        if value is None and f.name in _JSON_FIELDS:
            value = {}  # a row written by the app's own SQL may leave a JSON column NULL
        values[f.name] = str(value) if isinstance(value, uuid.UUID) else value
    return cls(**values)


@contextlib.contextmanager
def transaction(bind: Bind) -> Iterator[Connection]:
    if isinstance(bind, Engine):
        with bind.begin() as conn:
            yield conn
    elif bind.in_transaction():
        yield bind
    else:
        with bind.begin():
            yield bind


def to_uuid(value: str | uuid.UUID, what: str = "job") -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise InputError(f"{value!r} is not a valid {what} id (expected a UUID)") from None


def dialect_insert(conn: Connection, table: Table) -> Any:
    """A dialect insert that supports ON CONFLICT (Postgres and SQLite both do)."""
    name = conn.dialect.name
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    raise BrightrunError(f"the registry supports Postgres and SQLite, not {name}")
