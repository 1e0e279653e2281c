"""The registry's functions, importable from one place (`from brightrun.registry import
repository as repo`). Each concern has its own module, and this one only gathers them:

- `binding`: how a function binds to the database (an Engine: a transaction of its own,
  retried with backoff if the connection is lost mid-way; a Connection: the caller's
  transaction, no commit, no retry, so several calls commit together);
- `jobs`: training jobs, their status transitions (DESIGN.md §3) and events;
- `metrics`: training metrics per step;
- `training_files`: the app's `training_files` rows and their conversations;
- `artifacts`: model artifacts;
- `watermarks`: the feedback export's watermark.

Nothing ORM leaks out: functions return frozen dataclass views with string ids.
"""

from __future__ import annotations

from brightrun.registry.artifacts import Artifact, artifacts_t, list_artifacts, register_artifact
from brightrun.registry.binding import Bind, dialect_insert, row_view, to_uuid, transaction
from brightrun.registry.jobs import (
    ALLOWED_TRANSITIONS,
    IllegalTransition,
    Job,
    JobEvent,
    JobNotFound,
    NewEvent,
    add_event,
    add_events,
    create_job,
    events_t,
    get_job,
    increment_retry_count,
    is_allowed_transition,
    job_row,
    jobs_t,
    list_events,
    list_jobs,
    reopen_failed_job,
    set_job_cost,
    transition_job,
    update_job,
    update_job_progress,
)
from brightrun.registry.metrics import (
    MetricPoint,
    MetricRecord,
    add_metrics,
    list_metrics,
    merge_metric_records,
    metrics_t,
)
from brightrun.registry.training_files import (
    APP_TRAINING_FILES_BUCKET,
    ConversationRef,
    TrainingFileColumnsUnfilled,
    TrainingFileNotFound,
    TrainingFileView,
    check_app_path,
    exported_conversations,
    file_convs_t,
    files_t,
    get_training_file,
    list_training_files,
    register_training_file,
    required_columns,
    resolve_training_file,
    training_file_location,
)
from brightrun.registry.watermarks import Watermark, advance_watermark, get_watermark, watermarks_t

_tx = transaction  # the name registry modules outside this split still use

__all__ = [
    "ALLOWED_TRANSITIONS",
    "APP_TRAINING_FILES_BUCKET",
    "Artifact",
    "Bind",
    "ConversationRef",
    "IllegalTransition",
    "Job",
    "JobEvent",
    "JobNotFound",
    "MetricPoint",
    "MetricRecord",
    "NewEvent",
    "TrainingFileColumnsUnfilled",
    "TrainingFileNotFound",
    "TrainingFileView",
    "Watermark",
    "add_event",
    "add_events",
    "add_metrics",
    "advance_watermark",
    "artifacts_t",
    "check_app_path",
    "create_job",
    "dialect_insert",
    "events_t",
    "exported_conversations",
    "file_convs_t",
    "files_t",
    "get_job",
    "get_training_file",
    "get_watermark",
    "increment_retry_count",
    "is_allowed_transition",
    "job_row",
    "jobs_t",
    "list_artifacts",
    "list_events",
    "list_jobs",
    "list_metrics",
    "list_training_files",
    "merge_metric_records",
    "metrics_t",
    "register_artifact",
    "register_training_file",
    "reopen_failed_job",
    "required_columns",
    "resolve_training_file",
    "row_view",
    "set_job_cost",
    "to_uuid",
    "training_file_location",
    "transaction",
    "transition_job",
    "update_job",
    "update_job_progress",
    "watermarks_t",
]
