"""Evaluation sets on a real Postgres registry: the backend tests of tests/unit/test_evalsets.py
again, with `resources` (and the CLI, through BRIGHTRUN_DATABASE_URL) on Postgres."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from brightrun.registry import upgrade
from brightrun.resources import Resources
from tests.unit.test_evalsets import (  # noqa: F401
    test_create_list_show_and_refuse_a_duplicate,
    test_registration_is_all_or_nothing,
    test_reviewed_logs_are_held_out_whole_beside_the_curated_pick,
    test_the_dataset_stage_refuses_a_training_file_holding_an_exam_conversation,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def resources(
    brightrun_home: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Resources]:
    upgrade(postgres_url)
    monkeypatch.setenv("BRIGHTRUN_DATABASE_URL", postgres_url)
    with Resources.from_settings() as res:
        yield res


def test_the_exam_tables_have_row_level_security(resources: Resources) -> None:
    with resources.registry.connect() as conn:
        rls = dict(
            conn.execute(
                sa.text(
                    "SELECT relname, relrowsecurity FROM pg_class WHERE relname IN "
                    "('evaluation_sets', 'evaluation_set_conversations')"
                )
            ).all()
        )
    assert rls == {"evaluation_sets": True, "evaluation_set_conversations": True}
