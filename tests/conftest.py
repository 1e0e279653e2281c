"""Shared fixtures. Each real server lives in its own plugin module under tests/fixtures/."""

from __future__ import annotations

import os

# Prefect's test harness heartbeat otherwise logs 'database is locked' on its SQLite.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Library code logs outside flow runs in unit tests; Prefect would warn on every line.
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

pytest_plugins = [
    "tests.fixtures.common",
    "tests.fixtures.seaweed",
    "tests.fixtures.postgres",
    "tests.fixtures.supabase",
    "tests.fixtures.fake_runpod",
    "tests.fixtures.prefect",
    "tests.fixtures.training",
    "tests.fixtures.docker_api",
    "tests.fixtures.http",
]
