"""The dataset stage (DESIGN.md section 5), one room with one door.

The flow calls the door, `tasks.dataset.stage.prepare_job_dataset` (through its Prefect task,
`tasks.dataset.task.prepare_job_dataset_task`), once per job, importing it from its module;
`brightrun prepare` calls `prepare_dataset`, the function beneath the door that prepares one
file into a directory. The rooms inside:

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
and the export validate files with it): the door (the registry, SQLAlchemy) and its task
(Prefect) are not imported here.
"""

from __future__ import annotations

from tasks.dataset.prepare import DatasetReport, PrepareOptions, load_and_validate, prepare_dataset
from tasks.dataset.report import render_report_markdown, render_summary
from tasks.dataset.schema import FORMAT_SPEC, Problem, ValidationResult, validate_dataset

__all__ = [
    "FORMAT_SPEC",
    "DatasetReport",
    "PrepareOptions",
    "Problem",
    "ValidationResult",
    "load_and_validate",
    "prepare_dataset",
    "render_report_markdown",
    "render_summary",
    "validate_dataset",
]
