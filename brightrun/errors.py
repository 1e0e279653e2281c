"""Errors a user sees. Each says what went wrong, where, and what to do."""

from __future__ import annotations


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
