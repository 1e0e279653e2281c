"""Errors a user sees. Each says what went wrong, where, and what to do."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any


class BrightrunError(Exception):
    """Base of every error meant for a person; the CLI prints it without a traceback."""

    exit_code = 1


class InputError(BrightrunError):
    """Bad input from the user (dataset, parameters, config): nothing was written."""

    exit_code = 2

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        self.problems = problems or []
        super().__init__(message)

    def __str__(self) -> str:
        head = super().__str__()
        if not self.problems:
            return head
        shown = self.problems[:50]
        more = len(self.problems) - len(shown)
        lines = [head, *(f"  - {p}" for p in shown)]
        if more:
            lines.append(f"  ... and {more} more")
        return "\n".join(lines)


# Error types whose message reads better beside the value that was refused ("Input should be
# a valid integer (got 'ten')"); for the others (missing, extra) the input adds nothing.
VALUE_ERRORS = frozenset(
    {"int_parsing", "float_parsing", "bool_parsing", "int_type", "float_type", "enum", "literal_error"}
)


def validation_problems(
    errors: Iterable[Mapping[str, Any]],
    *,
    within: Sequence[str | int] = (),
    empty: str | None = "input",
    show_input: bool | Collection[str] = False,
    plain_value_errors: bool = False,
    as_option: bool = False,
) -> list[str]:
    """One `where: what` line per pydantic error (`ValidationError.errors()`), for `InputError`.

    `within` is prepended to each location (the section a model was validated for); `empty`
    names a whole-model error's location (None: the message alone); `show_input` adds the
    refused value, to every error or to the error types given (e.g. `VALUE_ERRORS`);
    `plain_value_errors` drops pydantic's "Value error, " before a validator's own message;
    `as_option` names the location as the command-line option it came from (`--max-seq-length`).
    """
    out = []
    for error in errors:
        where = ".".join(str(part) for part in (*within, *error.get("loc", ())))
        if as_option and where:
            where = "--" + where.replace("_", "-")
        msg = str(error["msg"])
        if plain_value_errors and error["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")
        if show_input is True or (not isinstance(show_input, bool) and error["type"] in show_input):
            msg = f"{msg} (got {error.get('input')!r})"
        where = where or (empty or "")
        out.append(f"{where}: {msg}" if where else msg)
    return out
