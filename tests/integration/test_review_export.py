# ruff: noqa: F811 - the fixtures are imported from test_export_feedback
"""Review before training in the registry and the export (issue 19), on SQLite and Postgres:
exports land pending unless the policy approves them, only approved files retrain, and a
reviewer's correction becomes the SFT target and a DPO pair the preference trainer reads."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from brightrun.errors import InputError
from brightrun.registry import repository as repo
from brightrun.registry import review as reviews
from brightrun.registry.models import FeedbackCorrection
from brightrun.resources import Resources
from tasks.dataset.preferences import read_preferences
from tasks.feedback import ExportOptions, export_feedback_window
from tasks.feedback.retrain import retrain_datasets
from tasks.feedback.review import ReviewForm, ReviewPolicy, apply_review
from tests.integration.test_export_feedback import T0, W1, W2, Logs, engine, resources, storage  # noqa: F401

pytestmark = pytest.mark.integration

W3 = (W2[1], W2[1] + timedelta(days=1))
ORIGINAL = {"top": ["socks"], "n": 1}
CORRECTED = {"top": ["mugs", "tea towels"], "n": 2}


def _sources(engine: Engine) -> list[str]:
    return [d["source"] for d in retrain_datasets(repo.list_training_files(engine, limit=None), [], 0.5)]


def test_pending_exports_never_retrain_until_approved(resources: Resources, engine: Engine) -> None:
    logs = Logs(engine)
    logs.add(T0 + timedelta(hours=1), prompt="Best seller?")
    logs.add(T0 + timedelta(hours=2), prompt="Worst seller?", rating="negative")
    first = export_feedback_window(resources, since=W1[0], until=W1[1])
    assert first.status == "exported" and first.review_status == "pending"
    tf = repo.get_training_file(engine, first.training_file_id)
    assert tf.review_status == "pending" and tf.reviewed_by is None
    assert tf.json_file_path not in _sources(engine)

    decided = reviews.decide_review(engine, tf.id, "approved", reviewer="alice")
    assert (decided.review_status, decided.reviewed_by) == ("approved", "alice") and decided.reviewed_at
    assert tf.json_file_path in _sources(engine)
    with pytest.raises(reviews.ReviewRefused, match="already approved"):
        reviews.decide_review(engine, tf.id, "approved", reviewer="bob")

    # A policy met by the window's figures approves on export: half the ratings positive.
    logs.add(W2[0] + timedelta(hours=1), prompt="Top colour?")
    logs.add(W2[0] + timedelta(hours=2), prompt="Top size?", rating="negative")
    policy = ReviewPolicy(auto_approve_min_positive_share=0.5)
    second = export_feedback_window(resources, since=W2[0], until=W2[1], options=ExportOptions(review=policy))
    assert second.review_status == "approved"
    assert repo.get_training_file(engine, second.training_file_id).review_status == "approved"

    logs.add(W3[0] + timedelta(hours=1), prompt="Top shape?", rating="negative")
    logs.add(W3[0] + timedelta(hours=2), prompt="Top shop?")
    third = export_feedback_window(
        resources,
        since=W3[0],
        until=W3[1],
        options=ExportOptions(review=ReviewPolicy(auto_approve_min_positive_share=0.6)),
    )
    assert third.review_status == "pending"
    rejected = reviews.decide_review(
        engine, third.training_file_id, "rejected", reviewer="bob", reason="too few"
    )
    assert rejected.review_reason == "too few"
    with pytest.raises(reviews.ReviewRefused, match="rejected export stays rejected"):
        reviews.decide_review(engine, third.training_file_id, "approved", reviewer="alice")
    assert rejected.json_file_path not in _sources(engine)


def test_correction_is_the_sft_target_and_a_dpo_pair_the_trainer_reads(
    resources: Resources, engine: Engine, tmp_path: Path
) -> None:
    logs = Logs(engine)
    bad = logs.add(T0 + timedelta(hours=1), prompt="What sells in May?", output=ORIGINAL, rating="negative")
    logs.add(T0 + timedelta(hours=2), prompt="Other question?")
    first = export_feedback_window(resources, since=W1[0], until=W1[1])
    assert first.status == "exported" and first.stats.corrections == 0

    # The reviewer corrects the thumbs-down answer after its window was exported.
    with pytest.raises(InputError, match="must be JSON"):
        reviews.add_correction(engine, str(bad["response"]), "mugs, obviously", reviewer="carol")
    with pytest.raises(InputError, match="not in lexybrain_responses"):
        reviews.add_correction(engine, "00000000-0000-0000-0000-000000000001", "{}", reviewer="carol")
    correction = reviews.add_correction(engine, str(bad["response"]), json.dumps(CORRECTED), reviewer="carol")

    second = export_feedback_window(resources, since=W2[0], until=W2[1])  # no ratings of its own
    assert second.status == "exported", second.message
    assert second.stats.corrections == 1 and second.stats.selected == 1
    document = json.loads(Path(second.training_file_uri).read_text())
    (pair,) = document["conversations"][0]["training_pairs"]
    assert json.loads(pair["target_response"]) == CORRECTED
    assert (
        pair["provenance"]["corrected_by"] == "carol" and pair["provenance"]["original_rating"] == "negative"
    )

    # The export's preference file is read as it is by the preference trainer's loader.
    preferences = Path(second.files["preferences"])
    (record,) = read_preferences(preferences, "dpo")
    assert json.loads(record.chosen) == CORRECTED and json.loads(record.rejected) == ORIGINAL
    assert record.prompt[-1] == {"role": "user", "content": "What sells in May?"}

    with engine.connect() as conn:
        exported_in = conn.execute(
            select(FeedbackCorrection.__table__.c.exported_in).where(
                FeedbackCorrection.__table__.c.id == correction.id
            )
        ).scalar_one()
    assert exported_in == second.training_file_id
    # Carried once: the next export has nothing to carry.
    third = export_feedback_window(resources, since=W3[0], until=W3[1])
    assert third.status == "empty" and third.stats.corrections == 0


def test_approve_with_exclusions_trains_a_reviewed_copy(resources: Resources, engine: Engine) -> None:
    logs = Logs(engine)
    kept = logs.add(T0 + timedelta(hours=1), prompt="Keep me?")
    dropped = logs.add(T0 + timedelta(hours=2), prompt="Drop me?")
    result = export_feedback_window(resources, since=W1[0], until=W1[1])
    with pytest.raises(InputError, match="not in it"):
        apply_review(
            resources,
            result.training_file_id,
            ReviewForm(decision="approve_with_exclusions", reviewer="dan", exclude_example_ids=["fb-nope"]),
        )
    assert repo.get_training_file(engine, result.training_file_id).review_status == "pending"
    form = ReviewForm(
        decision="approve_with_exclusions", reviewer="dan", exclude_example_ids=[f"fb-{dropped['response']}"]
    )
    copy = apply_review(resources, result.training_file_id, form)
    assert copy.review_status == "approved" and copy.examples == 1 and copy.reviewed_by == "dan"
    original = repo.get_training_file(engine, result.training_file_id)
    assert original.review_status == "rejected" and copy.id in (original.review_reason or "")
    body = json.loads(Path(copy.json_file_path).read_text())
    ids = [c["conversation_metadata"]["conversation_id"] for c in body["conversations"]]
    assert ids == [f"fb-{kept['response']}"]
    assert _sources(engine) == [copy.json_file_path]


def test_preference_pairs_are_found_across_windows_once(resources: Resources, engine: Engine) -> None:
    logs = Logs(engine)
    a_bad = logs.add(T0 + timedelta(hours=1), prompt="Prompt A?", output={"a": "bad"}, rating="negative")
    b_good = logs.add(T0 + timedelta(hours=2), prompt="Prompt B?", output={"b": "good"})
    logs.add(T0 + timedelta(hours=3), prompt="Filler?")
    first = export_feedback_window(resources, since=W1[0], until=W1[1])
    assert first.stats.preference_pairs == 0  # nothing to pair within the window

    a_good = logs.add(W2[0] + timedelta(hours=1), prompt="Prompt A?", output={"a": "good"})
    b_bad = logs.add(W2[0] + timedelta(hours=2), prompt="Prompt B?", output={"b": "bad"}, rating="negative")
    second = export_feedback_window(resources, since=W2[0], until=W2[1])
    assert second.stats.preference_pairs == 2, second.message
    records = read_preferences(Path(second.files["preferences"]), "dpo")
    by_prompt = {r.prompt[-1]["content"]: (json.loads(r.chosen), json.loads(r.rejected)) for r in records}
    # A: this window's thumbs-up over the earlier thumbs-down; B: the earlier thumbs-up over this one's.
    assert by_prompt == {
        "Prompt A?": ({"a": "good"}, {"a": "bad"}),
        "Prompt B?": ({"b": "good"}, {"b": "bad"}),
    }
    assert {
        json.loads(line)["id"] for line in Path(second.files["preferences"]).read_text().splitlines()
    } == {
        f"pref-{a_bad['response']}",
        f"pref-{b_bad['response']}",
    }
    assert b_good and a_good

    # A third thumbs-up on A pairs nothing again: A's thumbs-down was paired by the second export.
    logs.add(W3[0] + timedelta(hours=1), prompt="Prompt A?", output={"a": "also good"})
    third = export_feedback_window(resources, since=W3[0], until=W3[1])
    assert third.status == "exported" and third.stats.preference_pairs == 0
