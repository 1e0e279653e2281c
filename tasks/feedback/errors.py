"""The export's errors (ExportBusy lives with the lock in `brightrun.registry.feedback_rows`)."""

from __future__ import annotations

from brightrun.errors import BrightrunError


class ExportError(BrightrunError):
    """The export could not complete; nothing was registered and the watermark did not move."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient  # worth another try later (a lost database, not bad data)
