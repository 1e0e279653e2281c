"""The dataset stage's preference door: duplicates dropped (the first kept, each one named),
a missing reply located by line, the report for the UI, and the flow's parameter check that
lets a dpo/kto job take a JSONL preference file (and only then)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from brightrun.errors import InputError
from flows.params import check_dataset
from tasks.dataset.preferences import PreferenceReport, deduplicate, read_preferences
from tasks.dataset.stage_preferences import preference_report_markdown

PROMPT = [{"role": "user", "content": "I lost my job."}]
CHOSEN = [{"role": "assistant", "content": "I am sorry. Let us look at this week."}]
REJECTED = [{"role": "assistant", "content": "Get over it."}]


def _write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_duplicates_are_dropped_and_named(tmp_path: Path) -> None:
    pair = {"prompt": PROMPT, "chosen": CHOSEN, "rejected": REJECTED}
    other = {**pair, "rejected": [{"role": "assistant", "content": "Whatever."}]}
    path = _write(tmp_path / "pairs.jsonl", [pair, other, {**pair, "id": "again"}])
    kept, duplicates = deduplicate(read_preferences(path, "dpo"))
    assert [r.where for r in kept] == ["pairs.jsonl:1", "pairs.jsonl:2"]
    assert duplicates == ["pairs.jsonl:3: same record as pairs.jsonl:1"]


def test_kto_thumbs_differing_only_by_label_are_both_kept(tmp_path: Path) -> None:
    up = {"prompt": PROMPT, "completion": CHOSEN, "label": True}
    path = _write(tmp_path / "thumbs.jsonl", [up, {**up, "label": False}, up])
    kept, duplicates = deduplicate(read_preferences(path, "kto"))
    assert [r.label for r in kept] == [True, False] and len(duplicates) == 1


def test_missing_chosen_is_located_under_the_users_name(tmp_path: Path) -> None:
    path = _write(tmp_path / "abc123.json", [{"prompt": PROMPT, "rejected": REJECTED}])
    with pytest.raises(InputError) as caught:
        read_preferences(path, "dpo", source_name="thumbs.preferences.jsonl")
    assert caught.value.problems == [
        "thumbs.preferences.jsonl:1: chosen: expected a non-empty list of messages"
    ]


def test_report_names_duplicates_and_the_held_out_split() -> None:
    report = PreferenceReport(
        objective="kto",
        records=10,
        train=8,
        validation=2,
        desirable=6,
        undesirable=4,
        duplicates=["t.jsonl:4: same record as t.jsonl:1"],
    )
    md = preference_report_markdown("t.jsonl", report)
    assert "| duplicates dropped | 1 |" in md and "- t.jsonl:4: same record as t.jsonl:1" in md
    assert "| validation (held out for preference accuracy) | 2 |" in md
    assert "| thumbs down | 4 |" in md


def test_a_preference_jsonl_is_a_dataset_only_for_dpo_and_kto(tmp_path: Path) -> None:
    path = _write(tmp_path / "thumbs.jsonl", [{"prompt": PROMPT, "completion": CHOSEN, "label": True}])
    assert check_dataset(str(path), None, "kto") == []
    assert check_dataset(str(path), None, "dpo") == []
    (problem,) = check_dataset(str(path), None)
    assert "is JSON Lines" in problem
    assert "does not exist" in check_dataset(str(tmp_path / "missing.jsonl"), None, "dpo")[0]


def test_a_preference_mixture_is_refused_before_anything_starts(brightrun_home: Path, tmp_path: Path) -> None:
    from brightrun.settings import load_settings
    from flows.params import resolve_train_request

    path = _write(tmp_path / "thumbs.jsonl", [{"prompt": PROMPT, "completion": CHOSEN, "label": True}])
    with pytest.raises(InputError) as info:
        resolve_train_request(
            {
                "datasets": [{"source": str(path), "weight": 1}],
                "base_model": str(tmp_path / "no-model"),
                "training": {"objective": "kto"},
            },
            load_settings(),
        )
    assert any("a weighted mixture is for sft only" in p for p in info.value.problems)


def test_estimate_of_a_preference_job_is_refused_clearly(
    brightrun_home: Path, tiny_model: Path, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    path = _write(tmp_path / "thumbs.jsonl", [{"prompt": PROMPT, "completion": CHOSEN, "label": True}])
    args = ["train", str(path), "--base-model", str(tiny_model), "--objective", "kto", "--estimate"]
    result = CliRunner().invoke(app, args)
    # In process the error comes out of the command; cli.main:main turns it into exit 2.
    assert isinstance(result.exception, InputError) and result.exception.exit_code == 2
    assert "--estimate: training.objective kto is not estimated" in str(result.exception)
