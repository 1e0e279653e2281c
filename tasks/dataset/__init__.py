"""The dataset stage (DESIGN.md section 5), one room with one door.

The flow calls `prepare_job_dataset` (or its Prefect task `prepare_job_dataset_task`) once
per job; `brightrun prepare` calls `prepare_dataset`, the function beneath the door that
prepares one file into a directory. The rooms inside:

    schema.py     the brightrun-lora-v4 format and its streaming validator
    fetch.py      a path / file:// / s3:// / https source, fetched and hashed once
    tokenizer.py  the base model's fast tokenizer, loaded without torch
    convert.py    conversations -> chat-template renders -> token ids with a loss mask
    split.py      the train/validation rule, applied once
    write.py      streams examples to the split files and records the split
    prepare.py    one file into one prepared directory, and its report
    report.py     the report as Markdown and as one CLI screen
    stage.py      the door: fetch, store, prepare (cached), upload, record, one result
    task.py       the door as a Prefect task

Importing this package needs neither torch, transformers nor Prefect (the orchestrator side
and the export validate files with it); the door and its task load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tasks.dataset.prepare import DatasetReport, PrepareOptions, load_and_validate, prepare_dataset
from tasks.dataset.report import render_report_markdown, render_summary
from tasks.dataset.schema import FORMAT_SPEC, Problem, ValidationResult, validate_dataset

if TYPE_CHECKING:
    from tasks.dataset.stage import PreparedJobDataset, prepare_job_dataset
    from tasks.dataset.task import prepare_job_dataset_task

__all__ = [
    "FORMAT_SPEC",
    "DatasetReport",
    "PrepareOptions",
    "PreparedJobDataset",
    "Problem",
    "ValidationResult",
    "load_and_validate",
    "prepare_dataset",
    "prepare_job_dataset",
    "prepare_job_dataset_task",
    "render_report_markdown",
    "render_summary",
    "validate_dataset",
]

_LAZY = {
    "prepare_job_dataset": "tasks.dataset.stage",
    "PreparedJobDataset": "tasks.dataset.stage",
    "prepare_job_dataset_task": "tasks.dataset.task",
}


def __getattr__(name: str) -> Any:
    # The door needs the registry (SQLAlchemy) and its task Prefect: loaded when asked for,
    # so `brightrun prepare` and the validator start fast.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tasks.dataset' has no attribute {name!r}")
