"""Ids as people type them: the 8 characters the CLI prints, or any longer unique prefix.

A full UUID is used as it is. A prefix (hex, dashes ignored, at least `MIN_PREFIX`
characters) must match exactly one row: none is "not found", several are refused with the
candidates listed, so a short id never silently picks the wrong job or adapter.
"""

from __future__ import annotations

import uuid

from sqlalchemy import String, Table, cast, func, select

from brightrun.errors import InputError
from brightrun.registry.repository import Bind, JobNotFound, _tx, jobs_t

MIN_PREFIX = 4
_HEX = set("0123456789abcdef")
_SHOWN = 8  # candidates listed when a prefix is ambiguous


def hex_prefix(ref: str) -> str | None:
    """The prefix to search for, or None when `ref` is a full UUID or not an id at all."""
    try:
        uuid.UUID(ref)
        return None
    except ValueError:
        pass
    digits = ref.strip().lower().replace("-", "")
    if MIN_PREFIX <= len(digits) < 32 and set(digits) <= _HEX:
        return digits
    return None


def match_prefix(bind: Bind, table: Table, prefix: str, what: str) -> uuid.UUID | None:
    """The one id of `table` starting with `prefix`; None when there is none."""
    # SQLite keeps a UUID as 32 hex characters, Postgres prints it with dashes: compare without.
    digits = func.replace(func.lower(cast(table.c.id, String)), "-", "")
    with _tx(bind) as conn:
        found = conn.execute(select(table.c.id).where(digits.like(f"{prefix}%")).limit(_SHOWN + 1)).all()
    if len(found) > 1:
        more = " (and more)" if len(found) > _SHOWN else ""
        raise InputError(
            f"{prefix!r} is the start of several {what} ids{more}; give more characters",
            [str(row[0]) for row in found[:_SHOWN]],
        )
    return uuid.UUID(str(found[0][0])) if found else None


def resolve_job_id(bind: Bind, ref: str) -> str:
    """A job's full id from its id or a unique prefix of it (`JobNotFound` when none)."""
    prefix = hex_prefix(ref)
    if prefix is None:
        return ref.strip()
    found = match_prefix(bind, jobs_t, prefix, "job")
    if found is None:
        raise JobNotFound(ref)
    return str(found)
