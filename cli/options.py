"""Option parsing the commands share, each bad value an `InputError` naming its option."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

from brightrun.errors import InputError

Command = TypeVar("Command", bound=Callable[..., Any])


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


def shared_options(into: str, *options: inspect.Parameter) -> Callable[[Command], Command]:
    """Give several commands the same options, written once: `options` (keyword parameters
    with `Annotated[..., typer.Option(...)]` and a default) are appended to the command's
    signature, and the command receives their values as one dict, its parameter `into`."""

    def decorate(command: Command) -> Command:
        own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != into]

        @functools.wraps(command)
        def with_options(**kwargs: Any) -> Any:
            shared = {option.name: kwargs.pop(option.name) for option in options}
            return command(**kwargs, **{into: shared})

        with_options.__signature__ = inspect.Signature([*own, *options])  # type: ignore[attr-defined]
        return cast(Command, with_options)

    return decorate


def option(name: str, annotation: Any, default: Any) -> inspect.Parameter:
    """One option for `shared_options`."""
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)
