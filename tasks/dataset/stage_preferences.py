"""The dataset stage for a preference job (`training.objective: dpo | kto`): the preference
file (TRL's conversational JSONL, what the feedback export writes as `*.preferences.jsonl`)
fetched, checked line by line, deduplicated, tokenized and split (preferences.py, cached by
content), uploaded as the job's `data/` and recorded, exactly where an SFT job's training
file goes (stage.py)."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from brightrun import prepared
from brightrun.layout import JobLayout
from brightrun.registry import repository as repo
from brightrun.resources import Resources
from brightrun.spec import JobSpec
from brightrun.storage import Storage
from tasks.dataset.fetch import SourceFile, fetch_source
from tasks.dataset.preferences import Objective, PreferenceOptions, PreferenceReport, prepare_preferences
from tasks.dataset.stage import DATASETS_PREFIX
from tasks.dataset.tokenizer import load_tokenizer, tokenizer_fingerprint

log = logging.getLogger(__name__)


class PreparedJobPreferences(BaseModel):
    """What the stage did for a preference job: the stored source, its row, the split, the
    report for the UI."""

    model_config = ConfigDict(frozen=True)

    source_uri: str
    sha256: str
    display_name: str
    training_file_id: str
    objective: str
    records: int
    duplicates: int
    train_examples: int
    validation_examples: int
    report_markdown: str


def preference_options(spec: JobSpec) -> PreferenceOptions:
    objective: Objective = "dpo" if spec.training.objective == "dpo" else "kto"
    return PreferenceOptions(
        objective=objective,
        max_seq_length=spec.training.max_seq_length,
        validation_fraction=spec.preprocessing.validation_fraction,
        seed=spec.training.seed,
    )


def preference_cache_dir(
    cache_dir: Path, source: SourceFile, spec: JobSpec, options: PreferenceOptions
) -> Path:
    """Input-addressed, as the SFT cache: same bytes, tokenizer and options, one directory."""
    tokenizer = tokenizer_fingerprint(spec.base_model, spec.base_model_revision)
    key = "\n".join([prepared.PREFERENCE_FORMAT, source.sha256, tokenizer, repr(options)])
    return cache_dir / "prepared-preferences" / hashlib.sha256(key.encode()).hexdigest()[:32]


def preference_report_markdown(name: str, report: PreferenceReport) -> str:
    lines = [
        f"# Preference data: {name}",
        "",
        f"objective `{report.objective}`",
        "",
        "| | |",
        "|---|---:|",
        f"| records kept | {report.records} |",
        f"| duplicates dropped | {len(report.duplicates)} |",
        f"| skipped (too long) | {len(report.skipped)} |",
        f"| train | {report.train} |",
        f"| validation (held out for preference accuracy) | {report.validation} |",
    ]
    if report.objective == "kto":
        lines += [
            f"| thumbs up | {report.desirable} |",
            f"| thumbs down | {report.undesirable} |",
        ]
    for title, items in (("Duplicates (first few)", report.duplicates), ("Skipped", report.skipped)):
        if items:
            lines += ["", f"{title}:", "", *[f"- {m}" for m in items[:10]]]
    return "\n".join(lines) + "\n"


def _report_of(out_dir: Path) -> PreferenceReport:
    return PreferenceReport(**json.loads((out_dir / prepared.REPORT).read_text(encoding="utf-8")))


def prepare_job_preferences(
    resources: Resources,
    *,
    job_id: str,
    dataset: str,
    spec: JobSpec,
    storage: Storage,
    training_file_id: str | None = None,
) -> PreparedJobPreferences:
    """Fetch, check, prepare (cached), upload and record job `job_id`'s preference file.
    Raises `InputError` (every problem as `file:line: field: what`) before anything of the job
    is uploaded or recorded."""
    settings = resources.settings
    source = fetch_source(
        dataset, settings.cache_dir / DATASETS_PREFIX, resources.open_storage, settings.fetch_policy
    )
    options = preference_options(spec)
    out_dir = preference_cache_dir(settings.cache_dir, source, spec, options)
    if (out_dir / prepared.META).is_file() and (out_dir / prepared.REPORT).is_file():
        report = _report_of(out_dir)
    else:
        shutil.rmtree(out_dir, ignore_errors=True)
        tokenizer = load_tokenizer(spec.base_model, spec.base_model_revision)
        report = prepare_preferences(
            source.path, tokenizer, out_dir, options, source_name=source.display_name
        )
    if report.validation == 0:
        log.warning(
            "%s: no record held out (fewer than two prompts/conversations): no held-out preference "
            "accuracy for this job",
            source.display_name,
        )
    key = f"{DATASETS_PREFIX}/{source.sha256}.preferences.jsonl"
    if storage.stat(key) is None:
        storage.put_file(key, source.path)
    source_uri = storage.uri(key)
    storage.put_dir(JobLayout(job_id).key(spec.dataset_prefix), out_dir)
    if training_file_id is None:
        row, _ = repo.register_training_file(
            resources.registry,
            name=source.display_name,
            json_file_path=source_uri,
            sha256=source.sha256,
            format=prepared.PREFERENCE_FORMAT,
            size_bytes=source.size,
            total_training_pairs=report.records,
            examples=report.train + report.validation,
            metadata={"objective": report.objective},
        )
        training_file_id = str(row.id)
    repo.update_job(resources.registry, job_id, training_file_id=training_file_id)
    return PreparedJobPreferences(
        source_uri=source_uri,
        sha256=source.sha256,
        display_name=source.display_name,
        training_file_id=str(training_file_id),
        objective=report.objective,
        records=report.records,
        duplicates=len(report.duplicates),
        train_examples=report.train,
        validation_examples=report.validation,
        report_markdown=preference_report_markdown(source.display_name, report),
    )
