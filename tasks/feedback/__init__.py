"""The feedback export as one room with one door (DESIGN.md §1, §6).

    from tasks.feedback import ExportOptions, export_feedback_window
    result = export_feedback_window(resources, since=..., until=..., options=ExportOptions(), dry_run=False)

Modules, in the order data flows: `read` (the LexyHub logs of a window), `select` (which
rated logs become examples), `scrub` (personal data out), `dedup` (against the export
itself and every earlier training file, with the split the registry recorded), `write`
(the brightrun-lora-v4 file, chat JSONL, preference pairs), `register` (upload to the
pipeline's storage, then one registry transaction). `export` composes them behind the
door; registry SQL lives in `brightrun.registry.feedback_rows`. `task` holds the stage's
Prefect tasks (the flow imports them from there), so the package imports without Prefect.
"""

# Each name from the module it is defined in (the lock is registry SQL, the errors their own).
from brightrun.registry.feedback_rows import ExportBusy, export_lock
from tasks.feedback.dedup import EarlierCorpus
from tasks.feedback.errors import ExportError
from tasks.feedback.export import ExportOptions, export_feedback_window, process_rows
from tasks.feedback.result import ExportResult, ExportStats, ExportStatus
from tasks.feedback.select import SelectionOptions
from tasks.feedback.write import FileOptions

__all__ = [
    "EarlierCorpus",
    "ExportBusy",
    "ExportError",
    "ExportOptions",
    "ExportResult",
    "ExportStats",
    "ExportStatus",
    "FileOptions",
    "SelectionOptions",
    "export_feedback_window",
    "export_lock",
    "process_rows",
]
