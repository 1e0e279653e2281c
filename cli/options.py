"""Option parsing the commands share, each bad value an `InputError` naming its option."""

from __future__ import annotations

from datetime import UTC, datetime

from brightrun.errors import InputError


def parse_when(value: str | None, option: str) -> datetime | None:
    """`--since 2026-03-01` -> an aware datetime (UTC when no zone is given); None stays None."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InputError(
            f"{option} {value!r} is not a date or time; use ISO 8601, e.g. 2026-03-01 or 2026-03-01T12:00:00Z"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
