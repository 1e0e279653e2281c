"""`brightrun review score` (issue 25): people's scores become `model_artifacts.human_eval_score`,
with who and when recorded as an event; bad scores change nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from brightrun.registry import promotion as pm
from brightrun.registry import repository as repo
from brightrun.registry.human_scores import SCORED
from brightrun.resources import Resources
from tests.unit.test_adapters_promotion import adapter
from tests.unit.test_evalsets import cli


@pytest.fixture
def resources(brightrun_home: Path) -> Iterator[Resources]:
    with Resources.from_settings() as res:
        yield res


def stored_score(resources: Resources, artifact_id: str) -> float | None:
    with resources.registry.connect() as conn:
        return conn.execute(
            select(pm.artifacts_t.c.human_eval_score).where(pm.artifacts_t.c.id == pm._id(artifact_id))
        ).scalar_one()


def test_scores_are_written_with_who_and_when(resources: Resources, tmp_path: Path) -> None:
    art = adapter(resources.registry)
    code, out = cli("review", "score", art.id, "--score", "0.8", "--by", "maria")
    assert code == 0, out
    assert stored_score(resources, art.id) == pytest.approx(0.8)
    scores = tmp_path / "scores.json"
    scores.write_text(json.dumps([
        {"prompt": "I feel behind", "reply": "Let's look together.", "score": 1},
        {"prompt": "Should I buy crypto?", "reply": "Yes, all in.", "score": 0.0},
        {"prompt": "Budget help", "reply": "Start with one category.", "score": 0.5},
    ]))  # fmt: skip
    code, out = cli("review", "score", art.served_name or art.id, "--file", str(scores), "--by", "li")
    assert code == 0, out
    assert stored_score(resources, art.id) == pytest.approx(0.5)
    events = repo.list_events(resources.registry, art.training_job_id, type=SCORED)
    assert [e.payload["scored_by"] for e in events] == ["maria", "li"]
    assert events[-1].payload["scores"] == [1.0, 0.0, 0.5] and events[-1].payload["scored_at"]
    assert events[-1].payload["replies"][1]["reply"] == "Yes, all in."


def test_bad_scores_are_refused_and_change_nothing(resources: Resources, tmp_path: Path) -> None:
    art = adapter(resources.registry)
    code, out = cli("review", "score", art.id, "--score", "1.5", "--by", "maria")
    assert code == 2 and "between 0 and 1" in out
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"score": 0.5}, {"score": "good"}]))
    code, out = cli("review", "score", art.id, "--file", str(bad), "--by", "maria")
    assert code == 2 and "entry 2: needs a numeric score" in out
    code, out = cli("review", "score", art.id, "--by", "maria")
    assert code == 2 and "--score 0..1 or --file" in out
    code, out = cli("review", "score", "no-such-adapter", "--score", "0.5", "--by", "maria")
    assert code == 2
    assert stored_score(resources, art.id) is None
    assert repo.list_events(resources.registry, art.training_job_id, type=SCORED) == []
