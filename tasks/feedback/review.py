"""The review policy: whether a new export waits for a person or is approved on its figures.

Pure: `review_decision` reads the export's counts; the export registers the file with the
status it returns (`register.publish`), and the flow pauses for a reviewer when it is pending.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from tasks.feedback.result import ExportStats

if TYPE_CHECKING:
    from brightrun.registry.training_files import TrainingFileView
    from brightrun.resources import Resources

ReviewDecision = Literal["approved", "pending"]


class ReviewPolicy(BaseSettings):
    """Issue 19. Env: `BRIGHTRUN_REVIEW_REQUIRED`, `BRIGHTRUN_REVIEW_AUTO_APPROVE_MIN_POSITIVE_SHARE`,
    `BRIGHTRUN_REVIEW_AUTO_APPROVE_MAX_PII`. Every auto-approve condition that is set must
    hold; with none set every export waits for a reviewer."""

    model_config = SettingsConfigDict(env_prefix="BRIGHTRUN_REVIEW_", extra="ignore")

    required: bool = Field(
        default=True, description="New exports land pending until a person approves them (false: approved)"
    )
    auto_approve_min_positive_share: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Approve at least this share of positive ratings",
    )
    auto_approve_max_pii: int | None = Field(
        default=None,
        ge=0,
        description="Approve at most this many personal-data items replaced",
    )


def positive_share(stats: ExportStats) -> float | None:
    rated = sum(stats.ratings.values())
    return stats.ratings.get("positive", 0) / rated if rated else None


def review_decision(stats: ExportStats, policy: ReviewPolicy) -> ReviewDecision:
    """`approved` when review is off or every auto-approve condition set holds, else `pending`."""
    if not policy.required:
        return "approved"
    conditions: list[bool] = []
    if policy.auto_approve_min_positive_share is not None:
        share = positive_share(stats)
        conditions.append(share is not None and share >= policy.auto_approve_min_positive_share)
    if policy.auto_approve_max_pii is not None:
        conditions.append(sum(stats.scrubbed.values()) <= policy.auto_approve_max_pii)
    return "approved" if conditions and all(conditions) else "pending"


# ---------------------------------------------------------------- a reviewer's decision

Verdict = Literal["approve", "reject", "approve_with_exclusions"]


class ReviewForm(BaseModel):
    """What a reviewer answers about a pending export (the Prefect form, the CLI)."""

    decision: Verdict = Field(description="approve, reject, or approve_with_exclusions")
    reviewer: str = Field(min_length=1, description="Who decides (recorded on the training file)")
    reason: str = Field(default="", description="Why (required to reject)")
    exclude_example_ids: list[str] = Field(
        default_factory=list, description="With approve_with_exclusions: example ids left out (fb-...)"
    )


def apply_review(resources: Resources, file_id: str, form: ReviewForm) -> TrainingFileView:
    """Record the reviewer's decision on `file_id`. Approve with exclusions writes the file
    again without those examples, registers it approved, and rejects the original as
    replaced by it, in one transaction (the new file is uploaded before, so nothing half-
    written is ever registered). Returns the file that may now train (or the rejected one)."""
    from brightrun.registry import review as reviews

    engine = resources.registry
    if form.decision == "reject":
        return reviews.decide_review(
            engine, file_id, reviews.REJECTED, reviewer=form.reviewer, reason=form.reason
        )
    if form.decision == "approve" or not form.exclude_example_ids:
        return reviews.decide_review(
            engine, file_id, reviews.APPROVED, reviewer=form.reviewer, reason=form.reason or None
        )
    from tasks.feedback.exclusions import approve_without

    return approve_without(
        resources, file_id, form.exclude_example_ids, reviewer=form.reviewer, reason=form.reason
    )
