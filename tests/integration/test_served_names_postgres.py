"""Served names on a real Postgres server: the same tests as on SQLite (tests/unit/test_served_names.py)."""

from __future__ import annotations

import pytest

# The Postgres `engine` (migrated to head) of the registry's own Postgres tests.
from tests.integration.test_registry_postgres import engine  # noqa: F401

# The backend-independent tests, run again here with that `engine`.
from tests.unit.test_served_names import (  # noqa: F401
    test_a_served_name_is_accepted_wherever_an_artifact_id_is,
    test_every_registered_adapter_gets_a_stable_unique_served_name,
    test_ratings_join_to_adapters_and_unknown_versions_are_reported,
    test_the_migration_backfills_existing_rows,
    test_the_registry_refuses_a_duplicate_served_name,
)

pytestmark = pytest.mark.integration
