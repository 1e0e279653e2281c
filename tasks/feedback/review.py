"""The review policy: whether a new export waits for a person or is approved on its figures.

Pure: `review_decision` reads the export's counts; the export registers the file with the
status it returns (`register.publish`), and the flow pauses for a reviewer when it is pending.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from tasks.feedback.result import ExportStats

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
