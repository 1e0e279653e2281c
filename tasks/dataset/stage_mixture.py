"""The dataset stage for a mixture (`datasets: [{source, weight}]`): each source fetched,
prepared (cached) and recorded on its own, exactly as a single training file is (stage.py),
then merged (mixture.py) and uploaded as the job's `data/`."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict

from brightrun.layout import JobLayout
from brightrun.registry import repository as repo
from brightrun.resources import Resources
from brightrun.spec import JobSpec
from brightrun.storage import Storage
from tasks.dataset.fetch import fetch_source
from tasks.dataset.mixture import (
    MixtureReport,
    PreparedPart,
    WeightedSource,
    merge_prepared,
    mixture_markdown,
)
from tasks.dataset.prepare import PrepareOptions
from tasks.dataset.report import render_report_markdown
from tasks.dataset.stage import (
    DATASETS_PREFIX,
    _prepare_cached,
    _store_source,
    prepared_cache_dir,
    record_source,
    refuse_held_out_conversations,
)


class PreparedMixture(BaseModel):
    """What the stage did: each source's stored URI and training_files row, the merged sets."""

    model_config = ConfigDict(frozen=True)

    sources: list[WeightedSource]  # each source as the pipeline's own stored copy
    training_file_ids: list[str]
    mixture: MixtureReport
    report_markdown: str


def training_file_id_of(source: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(source)
    except ValueError:
        return None


def prepare_job_mixture(
    resources: Resources,
    *,
    job_id: str,
    sources: list[WeightedSource],
    spec: JobSpec,
    storage: Storage,
    locate: Callable[[uuid.UUID], str],
) -> PreparedMixture:
    """Fetch, prepare and record every source, merge them, upload the merge under the job's
    `data/`. `locate`: a training_file_id's file URI. A source that cannot train raises
    InputError before anything of the job is uploaded."""
    settings = resources.settings
    options = PrepareOptions.from_spec(spec)
    fetched = []
    for entry in sources:
        file_id = training_file_id_of(entry.source)
        location = locate(file_id) if file_id is not None else entry.source
        source = fetch_source(
            location, settings.cache_dir / DATASETS_PREFIX, resources.open_storage, settings.fetch_policy
        )
        refuse_held_out_conversations(resources, source)  # every source, as a single file is
        out_dir = prepared_cache_dir(settings.cache_dir, source, spec, options)
        report = _prepare_cached(out_dir, source, spec, options, settings.dataset_limits)
        fetched.append((entry, file_id, source, out_dir, report))
    parts = [
        PreparedPart(name=source.display_name, sha256=source.sha256, directory=out_dir, weight=entry.weight)
        for entry, _, source, out_dir, _ in fetched
    ]
    merged_dir = settings.cache_dir / "mixtures" / f"{job_id}"
    shutil.rmtree(merged_dir, ignore_errors=True)
    mixture = merge_prepared(parts, merged_dir, spec.training.seed)
    stored, ids, sections = [], [], [mixture_markdown(mixture)]
    for entry, file_id, source, out_dir, report in fetched:
        uri = _store_source(storage, source)
        ids.append(record_source(resources, source, uri, report, out_dir, str(file_id) if file_id else None))
        stored.append(WeightedSource(source=uri, weight=entry.weight))
        sections.append(render_report_markdown(report))
    storage.put_dir(JobLayout(job_id).key(spec.dataset_prefix), merged_dir)
    shutil.rmtree(merged_dir, ignore_errors=True)
    repo.update_job(resources.registry, job_id, training_file_id=ids[0])
    return PreparedMixture(
        sources=stored, training_file_ids=ids, mixture=mixture, report_markdown="\n\n".join(sections)
    )
