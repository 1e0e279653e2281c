"""`export_feedback`: rated inference logs → a new training file (DESIGN.md §1, §6).

Scheduled daily (prefect.yaml). Each run exports the window from the watermark left by
the last successful export up to now minus a settle delay (late ratings land before
their window is read), registers the file, and — with `auto_train` and enough new
examples — starts `train_adapter` on it through its deployment as a linked subflow run.
The work itself is behind the `tasks.feedback` package's one door, `export_feedback_window`;
the flow builds the `Resources` once and hands them in.
"""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import Annotated, Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.concurrency.sync import concurrency
from pydantic import Field

from brightrun.errors import InputError
from brightrun.resources import Resources
from tasks.feedback import ExportOptions, FileOptions, SelectionOptions
from tasks.feedback.retrain import continue_from, retrain_datasets
from tasks.feedback.shape import shape_with_overrides
from tasks.feedback.task import export_window_task, start_training

CONCURRENCY_LIMIT = "export-feedback"
DEFAULT_TRAIN_DEPLOYMENT = "train_adapter/local"


def _ensure_concurrency_limit() -> None:
    """Create the one-slot global concurrency limit the flow occupies, if it is missing
    (without it `concurrency()` would not limit anything)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(CONCURRENCY_LIMIT)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=CONCURRENCY_LIMIT, limit=1)
                )


def retrain_parameters(
    resources: Resources,
    *,
    base_model: str,
    preset: str | None,
    job_name: str,
    curated_ids: list[str] | None,
    replay_share: float,
    continue_from_production: bool,
) -> dict[str, Any]:
    """train_adapter's parameters for the automatic retrain (tasks/feedback/retrain.py)."""
    from brightrun.registry import promotion
    from brightrun.registry import repository as repo

    files = repo.list_training_files(resources.registry, limit=None)
    parameters: dict[str, Any] = {
        "datasets": retrain_datasets(files, curated_ids, replay_share),
        "base_model": base_model,
        "preset": preset,
        "job_name": job_name,
    }
    if continue_from_production:
        production = promotion.production_adapter(resources.registry, base_model)
        config = None
        if production is not None:
            config = repo_artifact_lora_config(resources, production.id)
        parameters.update(continue_from(config))
    return parameters


def repo_artifact_lora_config(resources: Resources, artifact_id: str) -> dict[str, Any]:
    from brightrun.registry import repository as repo

    found = [a for a in repo.list_artifacts(resources.registry, limit=None) if a.id == artifact_id]
    return dict(found[0].lora_config) if found else {}


@flow(name="export_feedback", log_prints=True, retries=0)
def export_feedback(
    since: datetime | None = None,
    until: datetime | None = None,
    settle_delay_minutes: Annotated[float, Field(ge=0)] = 15.0,
    include_neutral_with_notes: bool = False,
    latest_feedback_wins: bool = True,
    one_vote_per_user: bool = True,
    max_prompt_chars: Annotated[int, Field(gt=0)] = 8000,
    system_prompts: dict[str, str] | None = None,
    default_system_prompt: str | None = None,
    conversation_keys: list[str] | None = None,
    output_text_field: str | None = None,
    system_prompt_key: str | None = None,
    context_in_user_turn: bool | None = None,
    target_model: str = "lexybrain",
    vertical: str = "lexybrain_insights",
    min_examples: Annotated[int, Field(ge=1)] = 200,
    auto_train: bool = False,
    train_deployment: str = DEFAULT_TRAIN_DEPLOYMENT,
    train_base_model: str = "meta-llama/Meta-Llama-3-8B-Instruct",
    train_preset: str | None = "balanced",
    curated_training_files: list[str] | None = None,
    replay_share: Annotated[float, Field(gt=0, lt=1)] = 0.5,
    continue_from_production: bool = True,
    dry_run: bool = False,
    lock_wait_seconds: Annotated[float, Field(ge=0)] = 0.0,
    review: Literal["none", "pause"] = "none",
    review_timeout_minutes: Annotated[float, Field(gt=0)] = 24 * 60.0,
    review_poll_seconds: Annotated[int, Field(ge=1)] = 10,
) -> dict[str, Any]:
    """Export rated inference logs of `[since, until)` into a brightrun-lora-v4 training file.

    Args:
        since: window start (default: the watermark of the last successful export).
        until: window end, exclusive (default: now minus the settle delay).
        settle_delay_minutes: how long ratings may still arrive for a window.
        include_neutral_with_notes: also export responses rated neutral with notes.
        latest_feedback_wins: a response rated several times takes its latest rating
            (otherwise the net vote decides).
        one_vote_per_user: only each user's latest rating of a response counts.
        max_prompt_chars: user turns longer than this are skipped.
        system_prompts: system prompt per insight type.
        default_system_prompt: system prompt for other insight types.
        conversation_keys: request-context keys holding a conversation/session id (["none"]:
            each request alone; default: BRIGHTRUN_EXPORT_CONVERSATION_KEYS).
        output_text_field: output field holding a free-text answer ("json": JSON insights;
            default: BRIGHTRUN_EXPORT_OUTPUT_TEXT_FIELD).
        system_prompt_key: request-context key holding the request's system prompt
            (default: BRIGHTRUN_EXPORT_SYSTEM_PROMPT_KEY).
        context_in_user_turn: append the rest of the request context to the user turn
            (default: BRIGHTRUN_EXPORT_CONTEXT_IN_USER_TURN).
        target_model / vertical: recorded in the file's metadata.
        min_examples: with auto_train, train only when the new file has this many examples.
        auto_train: start `train_deployment` on the new file.
        train_deployment / train_base_model / train_preset: what to train.
        curated_training_files: training_files ids replayed in every retrain (default: every
            registered file that is not a feedback export).
        replay_share: share of the retrain's training examples that come from the curated files.
        continue_from_production: start from the production adapter of train_base_model.
        dry_run: read, select and report; write nothing (no file, row, watermark or cache).
        lock_wait_seconds: wait this long for a running export, then exit cleanly.
        review: `pause`: a pending export (BRIGHTRUN_REVIEW_* policy) pauses this run for the
            reviewer's form in the Prefect UI (approve / reject / approve with exclusions);
            `none`: it stays pending for `brightrun review`. Only approved files train.
        review_timeout_minutes: how long the paused run waits; then the file stays pending.
        review_poll_seconds: how often the paused run checks for the reviewer's answer.
    """
    logger = get_run_logger()
    if since is not None and until is not None and until <= since:
        raise InputError(f"until ({until.isoformat()}) must be after since ({since.isoformat()})")
    options = ExportOptions(
        selection=SelectionOptions(
            include_neutral_with_notes=include_neutral_with_notes,
            latest_feedback_wins=latest_feedback_wins,
            one_vote_per_user=one_vote_per_user,
            max_prompt_chars=max_prompt_chars,
            system_prompts=system_prompts or {},
            **({"default_system_prompt": default_system_prompt} if default_system_prompt else {}),
        ),
        file=FileOptions(target_model=target_model, vertical=vertical),
        settle_delay_s=settle_delay_minutes * 60,
        lock_wait_s=lock_wait_seconds,
    )
    _ensure_concurrency_limit()
    # The Prefect limit queues exports in this orchestrator; the database lock inside the
    # export also stops a CLI run or a second Prefect server from exporting at once.
    with Resources.from_settings() as resources:
        shape = shape_with_overrides(
            resources.settings,
            conversation_keys=conversation_keys,
            output_text_field=output_text_field,
            system_prompt_key=system_prompt_key,
            context_in_user_turn=context_in_user_turn,
            where="export_feedback",
        )
        options = options.model_copy(update={"shape": shape})
        try:
            with concurrency(CONCURRENCY_LIMIT, occupy=1, timeout_seconds=lock_wait_seconds + 60):
                result = export_window_task(resources, since, until, options, dry_run)
        except TimeoutError:
            result = None
    if result is None:
        message = "another export is running; this run exported nothing (the next scheduled run catches up)"
        logger.warning(message)
        return {"status": "busy", "message": message, "training_run": None}
    create_markdown_artifact(
        key="export-feedback-report",
        markdown=result.report,
        description=f"feedback export {result.since.isoformat()} → {result.until.isoformat()}",
    )
    logger.info(result.message)
    summary = result.summary()
    summary["training_run"] = None
    summary["review"] = None
    trainable = result.review_status == "approved"
    if result.status == "exported" and result.review_status == "pending":
        if review == "pause":
            from flows.review_step import wait_for_review

            with Resources.from_settings() as resources:
                summary["review"] = wait_for_review(
                    resources,
                    result,
                    timeout_s=int(review_timeout_minutes * 60),
                    poll_s=review_poll_seconds,
                )
            trainable = summary["review"]["status"] == "approved"
        else:
            logger.info(
                "training file %s awaits review: `brightrun review approve %s` (or reject) decides",
                result.training_file_id,
                result.training_file_id,
            )
    if result.status == "exported" and auto_train and not trainable:
        logger.info("not training: training file %s is not approved", result.training_file_id)
    elif result.status == "exported" and auto_train:
        if result.examples >= min_examples and result.training_file_uri:
            with Resources.from_settings() as resources:
                parameters = retrain_parameters(
                    resources,
                    base_model=train_base_model,
                    preset=train_preset,
                    job_name=f"feedback-{result.since:%Y%m%d}-{result.until:%Y%m%d}",
                    curated_ids=curated_training_files,
                    replay_share=replay_share,
                    continue_from_production=continue_from_production,
                )
            logger.info(
                "retraining on %d file(s) (curated replay share %.0f%%)%s",
                len(parameters["datasets"]),
                replay_share * 100,
                ", from the production adapter" if "init_adapter" in parameters else "",
            )
            summary["training_run"] = start_training(train_deployment, parameters)
            logger.info("started %s: %s", train_deployment, summary["training_run"]["flow_run_name"])
        else:
            logger.info(
                "not training: %d new example(s), fewer than min_examples=%d", result.examples, min_examples
            )
    return summary
