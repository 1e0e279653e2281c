"""The promotion gate on a registered evaluation set (issue 25): only an evaluation of the
candidate against production on that very set (NAME@VERSION) counts, and
BRIGHTRUN_PROMOTION_EVALSET makes it the default. No model is loaded: evaluations are
recorded as `evaluate` records them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from brightrun.errors import InputError
from brightrun.registry import evalsets
from brightrun.registry import promotion as pm
from brightrun.registry import repository as repo
from brightrun.registry.evalsets import ConversationFingerprint
from brightrun.resources import Resources
from tasks.adapters.lifecycle import promote
from tests.unit.test_adapters_promotion import BASE, adapter


def evaluated_on(engine: object, candidate: pm.AdapterRow, against: pm.AdapterRow, c: float, a: float,
                 evaluation_set: str | None) -> None:  # fmt: skip
    pm.record_evaluation(
        engine,  # type: ignore[arg-type]
        pm.EvaluationRecord(
            candidate=pm.ModelScore(artifact_id=candidate.id, label="c", loss=c, perplexity=2.0, tokens=100),
            against=pm.ModelScore(artifact_id=against.id, label="a", loss=a, perplexity=2.0, tokens=100),
            base_model=BASE,
            eval_set=f"evaluation set {evaluation_set}" if evaluation_set else "validation split",
            eval_set_sha256="ab" * 32,
            evaluation_set=evaluation_set,
            conversations=4,
        ),
    )


def register_exam(engine: object, name: str = "exam") -> evalsets.EvaluationSetRow:
    return evalsets.register(
        engine,  # type: ignore[arg-type]
        name=name,
        sha256=f"{len(evalsets.list_sets(engine)):064d}",  # type: ignore[arg-type]
        storage_key="evalsets/x.json",
        storage_url="/nowhere",
        conversations=[ConversationFingerprint("c1", "1" * 64)],
        source_description="test",
        created_by="test",
    )


@pytest.fixture
def resources(brightrun_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Resources]:
    monkeypatch.setenv("BRIGHTRUN_PROMOTION_EVALSET", "exam")
    with Resources.from_settings() as res:
        yield res


def test_only_an_evaluation_on_the_registered_set_opens_the_gate(resources: Resources) -> None:
    engine = resources.registry
    register_exam(engine)
    production, candidate = adapter(engine), adapter(engine)
    pm.promote(engine, production.id, "production")
    # Better on its own validation split, which flatters it: not the exam, so it does not count.
    evaluated_on(engine, candidate, production, 0.5, 1.0, None)
    with pytest.raises(pm.PromotionRefused, match="no evaluation of"):
        promote(resources, candidate.id, "production", evaluate_first=False)  # exam from the setting
    evaluated_on(engine, candidate, production, 1.2, 1.0, "exam@1")
    with pytest.raises(pm.PromotionRefused, match=r"worse than 1.0000 .* \(evaluation set exam@1\)"):
        promote(resources, candidate.id, "production", evaluate_first=False)
    # A newer validation-split record does not hide the exam's verdict.
    evaluated_on(engine, candidate, production, 0.1, 1.0, None)
    with pytest.raises(pm.PromotionRefused, match="worse than"):
        promote(resources, candidate.id, "production", evaluate_first=False)
    evaluated_on(engine, candidate, production, 0.9, 1.0, "exam@1")
    result, _ = promote(resources, candidate.id, "production", evaluate_first=False)
    assert result.artifact.deployment_status == "production"
    event = repo.list_events(engine, candidate.training_job_id, type=pm.PROMOTED)[-1]
    assert event.payload["evaluation"]["evaluation_set"] == "exam@1"
    assert event.payload["evaluation"]["candidate_loss"] == 0.9


def test_a_bare_name_means_its_newest_version_and_an_unknown_set_is_an_input_error(
    resources: Resources,
) -> None:
    engine = resources.registry
    register_exam(engine)
    production, candidate = adapter(engine), adapter(engine)
    pm.promote(engine, production.id, "production")
    evaluated_on(engine, candidate, production, 0.9, 1.0, "exam@1")
    register_exam(engine)  # exam@2: the exam changed, the old verdict no longer counts
    with pytest.raises(pm.PromotionRefused, match="no evaluation of"):
        promote(resources, candidate.id, "production", evaluate_first=False)
    result, _ = promote(resources, candidate.id, "production", evaluation_set="exam@1", evaluate_first=False)
    assert result.artifact.deployment_status == "production"
    with pytest.raises(InputError, match="no evaluation set is named 'final'"):
        promote(resources, candidate.id, "production", evaluation_set="final", evaluate_first=False)
    with pytest.raises(InputError, match="not both"):
        promote(resources, candidate.id, "production", evaluation_set="exam", eval_set=Path("x.json"))
