"""The review policy's decision on an export's figures (issue 19)."""

from __future__ import annotations

from collections import Counter

import pytest

from tasks.feedback.exclusions import without_examples
from tasks.feedback.result import ExportStats
from tasks.feedback.review import ReviewPolicy, review_decision


def _stats(positive: int, negative: int, pii: int) -> ExportStats:
    return ExportStats(
        ratings=Counter(positive=positive, negative=negative), scrubbed=Counter({"[EMAIL]": pii})
    )


@pytest.mark.parametrize(
    ("policy", "stats", "decision"),
    [
        (ReviewPolicy(), _stats(10, 0, 0), "pending"),  # nothing set: a person decides
        (ReviewPolicy(required=False), _stats(0, 10, 99), "approved"),
        (ReviewPolicy(auto_approve_min_positive_share=0.8), _stats(8, 2, 0), "approved"),
        (ReviewPolicy(auto_approve_min_positive_share=0.8), _stats(7, 3, 0), "pending"),
        (ReviewPolicy(auto_approve_min_positive_share=0.5), _stats(0, 0, 0), "pending"),  # no ratings
        (ReviewPolicy(auto_approve_max_pii=0), _stats(1, 0, 0), "approved"),
        (ReviewPolicy(auto_approve_max_pii=0), _stats(1, 0, 1), "pending"),
        # Both set: both must hold.
        (
            ReviewPolicy(auto_approve_min_positive_share=0.5, auto_approve_max_pii=2),
            _stats(5, 5, 3),
            "pending",
        ),
        (
            ReviewPolicy(auto_approve_min_positive_share=0.5, auto_approve_max_pii=2),
            _stats(5, 5, 2),
            "approved",
        ),
    ],
)
def test_review_decision(policy: ReviewPolicy, stats: ExportStats, decision: str) -> None:
    assert review_decision(stats, policy) == decision


def test_policy_reads_its_env_vars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIGHTRUN_REVIEW_AUTO_APPROVE_MIN_POSITIVE_SHARE", "0.9")
    monkeypatch.setenv("BRIGHTRUN_REVIEW_AUTO_APPROVE_MAX_PII", "3")
    policy = ReviewPolicy()
    assert (policy.required, policy.auto_approve_min_positive_share, policy.auto_approve_max_pii) == (
        True,
        0.9,
        3,
    )
    monkeypatch.setenv("BRIGHTRUN_REVIEW_AUTO_APPROVE_MIN_POSITIVE_SHARE", "1.5")
    with pytest.raises(ValueError, match="less than or equal to 1"):
        ReviewPolicy()


def test_without_examples_updates_the_totals() -> None:
    def conv(cid: str) -> dict:
        return {"conversation_metadata": {"conversation_id": cid}, "training_pairs": [{"id": cid}]}

    document = {
        "training_file_metadata": {"total_conversations": 3},
        "conversations": [conv("a"), conv("b"), conv("c")],
    }
    reviewed, kept = without_examples(document, {"b"})
    assert kept == 2 and [
        c["conversation_metadata"]["conversation_id"] for c in reviewed["conversations"]
    ] == ["a", "c"]
    assert reviewed["training_file_metadata"]["total_training_pairs"] == 2
    assert reviewed["training_file_metadata"]["review_excluded"] == ["b"]
    assert len(document["conversations"]) == 3  # the original is left as it was
