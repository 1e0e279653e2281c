"""Scaffolding balance: counts, the arc cap and the stratified split (tasks/dataset/balance.py),
and the prepared dataset that follows them."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from brightrun import prepared
from brightrun.errors import InputError
from brightrun.spec import PreprocessingSettings
from tasks.dataset import PrepareOptions, prepare_dataset
from tasks.dataset.balance import (
    ConversationTags,
    arc_cap_keep,
    cap_arcs,
    count_scaffolding,
    plan_balance,
    stratified_split,
)
from tasks.dataset.report import render_report_markdown, render_summary
from tests.unit.test_dataset_schema import make_conversation, make_file, write

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "brightrun-sample.json"


def tags(arcs: dict[str, int], persona: str = "p", topic: str = "t") -> list[ConversationTags]:
    return [ConversationTags(f"{arc}-{i}", persona, arc, topic) for arc, n in arcs.items() for i in range(n)]


def with_arc(
    conv: dict[str, Any], arc: str | None, persona: str = "anxious", topic: str = "debt"
) -> dict[str, Any]:
    conv["conversation_metadata"]["scaffolding"] = {
        "persona_key": persona,
        "emotional_arc_key": arc,
        "training_topic_key": topic,
    }
    return conv


def test_counts_by_persona_arc_and_topic() -> None:
    t = [
        ConversationTags("a", "anxious", "panic_to_plan", "debt"),
        ConversationTags("b", "anxious", "grief_to_stability", "debt"),
        ConversationTags("c", None, "panic_to_plan", None),
    ]
    counts = count_scaffolding(t)
    assert counts.persona == {"anxious": 2, "(none)": 1}
    assert counts.emotional_arc == {"panic_to_plan": 2, "grief_to_stability": 1}
    assert counts.topic == {"debt": 2, "(none)": 1}


def test_arc_cap_keep_solves_the_share_after_dropping() -> None:
    # 60 / 20 / 20 at a 40 % cap: keeping c of the big arc needs c <= 0.4 * (40 + c), so c = 26.
    assert arc_cap_keep({"big": 60, "a": 20, "b": 20}, 0, 0.4) == 26
    assert arc_cap_keep({"big": 60, "a": 20, "b": 20}, 0, 1.0) == 60
    # Two arcs can never each be at most 40 % of a set made only of them.
    assert arc_cap_keep({"a": 5, "b": 5}, 0, 0.4) == 0
    # Conversations without an arc count in the total, so they make room.
    assert arc_cap_keep({"a": 5, "b": 5}, 10, 0.4) == 5


def test_cap_is_seeded_and_holds_the_share() -> None:
    train = tags({"big": 60, "a": 20, "b": 20})
    dropped, counts = cap_arcs(train, 0.4, seed=42)
    assert counts == {"big": 34} and len(dropped) == 34
    kept = Counter(t.arc for t in train if t.conversation_id not in dropped)
    assert max(kept.values()) / sum(kept.values()) <= 0.4
    assert cap_arcs(train, 0.4, seed=42)[0] == dropped  # deterministic
    assert cap_arcs(train, 0.4, seed=7)[0] != dropped  # and seeded


def test_cap_that_leaves_nothing_is_refused() -> None:
    with pytest.raises(InputError, match=r"max_arc_share=0.2 cannot hold.*at least 0.333"):
        cap_arcs(tags({"a": 4, "b": 4, "c": 4}), 0.2, seed=42)


@pytest.mark.parametrize("share", [0, -0.1, 1.5])
def test_share_outside_zero_one_is_refused(share: float) -> None:
    with pytest.raises(ValidationError, match="max_arc_share"):
        PreprocessingSettings(max_arc_share=share)


def test_stratified_split_holds_out_each_arc_in_proportion() -> None:
    t = tags({"a": 40, "b": 20, "c": 10})
    splits, note = stratified_split(t, 0.2, seed=42)
    assert splits is not None and "3 arcs" in note
    held = Counter(cid.split("-")[0] for cid, s in splits.items() if s == "validation")
    assert held == {"a": 8, "b": 4, "c": 2}
    assert splits == stratified_split(t, 0.2, seed=42)[0]
    assert splits != stratified_split(t, 0.2, seed=7)[0]


def test_stratified_split_keeps_one_of_each_arc_in_training() -> None:
    splits, _ = stratified_split(tags({"a": 2, "b": 2}), 0.9, seed=1)
    assert splits is not None
    assert Counter(s for s in splits.values()) == {"validation": 2, "train": 2}
    assert {cid.split("-")[0] for cid, s in splits.items() if s == "train"} == {"a", "b"}


@pytest.mark.parametrize(
    ("t", "why"),
    [
        (tags({"a": 5, "b": 1}), "fewer than 2 conversations: b"),
        (
            [*tags({"a": 5}), ConversationTags("x", None, None, None)],
            "1 conversation(s) have no emotional_arc_key",
        ),
        (tags({"a": 5, "b": 5}), "validation_fraction is 0"),
        (tags({"a": 10}), "a single emotional arc"),
    ],
)
def test_stratified_split_falls_back_and_says_why(t: list[ConversationTags], why: str) -> None:
    fraction = 0.0 if why.startswith("validation_fraction") else 0.2
    splits, note = stratified_split(t, fraction, seed=42)
    assert splits is None and why in note


def test_cap_never_touches_validation() -> None:
    t = tags({"big": 60, "a": 20, "b": 20})
    plan = plan_balance(t, 0.2, seed=42, max_arc_share=0.4)
    assert plan.splits is not None
    validation = {c for c, s in plan.splits.items() if s == "validation"}
    assert not validation & plan.dropped
    assert plan.report.validation_by_arc == {"big": 12, "a": 4, "b": 4}
    assert plan.report.train_by_arc["big"] <= 0.4 * sum(plan.report.train_by_arc.values())


def balanced_file(tmp_path: Path) -> Path:
    arcs = ["panic_to_plan"] * 12 + ["grief_to_stability"] * 4 + ["shame_to_acceptance"] * 4
    conversations = [
        with_arc(make_conversation(f"c{i:02d}", 2), arc, persona=f"p{i % 2}") for i, arc in enumerate(arcs)
    ]
    return write(tmp_path, make_file(conversations))


def test_prepared_dataset_follows_the_plan(tiny_model: Path, tmp_path: Path) -> None:
    src = balanced_file(tmp_path)
    out = tmp_path / "out"
    options = PrepareOptions(validation_fraction=0.25, seed=3, max_arc_share=0.4)
    report = prepare_dataset(src, tiny_model, out, options)
    b = report.balance
    assert b.stratified
    assert b.validation_by_arc == {"panic_to_plan": 3, "grief_to_stability": 1, "shame_to_acceptance": 1}
    # Train 9 / 3 / 3: panic keeps c with c <= 0.4 * (6 + c), so 4; 5 dropped.
    assert b.dropped_by_arc == {"panic_to_plan": 5}
    assert b.train_by_arc == {"panic_to_plan": 4, "grief_to_stability": 3, "shame_to_acceptance": 3}
    assert b.counts.persona == {"p0": 10, "p1": 10}
    assert report.kept_targets == 2 * 15  # the 5 dropped conversations' targets are not counted
    files = {
        split: {e.conversation_id for e in prepared.iter_examples(out / name)}
        for split, name in (("train", prepared.TRAIN), ("validation", prepared.VALIDATION))
    }
    splits = prepared.read_splits(out)
    assert set(splits.train) == files["train"] and len(files["train"]) == 10
    assert set(splits.validation) == files["validation"] and len(files["validation"]) == 5
    md = render_report_markdown(report)
    assert "## Scaffolding balance" in md and "| panic_to_plan | 12 | 4 | 3 | 5 |" in md
    assert "arc cap 0.4: dropped panic_to_plan 5" in render_summary(report, out)
    # Same seed, same files.
    again = prepare_dataset(src, tiny_model, tmp_path / "again", options)
    assert prepared.read_splits(tmp_path / "again") == splits and again.balance == b


def test_sample_falls_back_to_the_hash_split(tiny_model: Path, tmp_path: Path) -> None:
    report = prepare_dataset(SAMPLE, tiny_model, tmp_path / "out", PrepareOptions())
    assert not report.balance.stratified
    assert "fewer than 2 conversations" in report.balance.stratify_note
    assert report.balance.counts.emotional_arc["grief_to_stability"] == 4
    assert "today's hash rule" in render_report_markdown(report)


def test_cli_prepare_refuses_a_cap_that_leaves_nothing(tiny_model: Path, tmp_path: Path) -> None:
    from cli.main import app

    src = balanced_file(tmp_path)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        ["prepare", str(src), "--tokenizer", str(tiny_model), "--out", str(out), "--max-arc-share", "0.2"],
    )
    assert result.exit_code == 2, result.output
    assert "max_arc_share=0.2 cannot hold" in result.output
    assert not out.exists() and not list(tmp_path.glob(".out.partial-*"))
    bad = CliRunner().invoke(
        app, ["prepare", str(src), "--tokenizer", str(tiny_model), "--out", str(out), "--max-arc-share", "0"]
    )
    assert bad.exit_code == 2 and "max-arc-share" in bad.output
    ok = CliRunner().invoke(
        app,
        ["prepare", str(src), "--tokenizer", str(tiny_model), "--out", str(out), "--max-arc-share", "0.5"],
    )
    assert ok.exit_code == 0, ok.output
    assert "split stratified by arc" in ok.output
    assert json.loads((out / prepared.REPORT).read_text())["balance"]["stratified"] is True
