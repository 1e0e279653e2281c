"""`brightrun export-feedback` on the embedded default (SQLite registry, local storage)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import insert
from typer.testing import CliRunner

from brightrun.errors import InputError
from brightrun.registry import open_registry_url
from brightrun.registry import repository as repo
from brightrun.registry.models import LexybrainFeedback, LexybrainRequest, LexybrainResponse
from cli.main import app

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def test_cli_dry_run_then_export(brightrun_home: Path) -> None:
    engine = open_registry_url(f"sqlite:///{brightrun_home / 'registry.db'}", auto_upgrade=True)
    with engine.begin() as conn:
        q, r = uuid.uuid4(), uuid.uuid4()
        conn.execute(insert(LexybrainRequest.__table__).values(id=q, prompt="Top tags?", requested_at=T0))
        conn.execute(
            insert(LexybrainResponse.__table__).values(
                id=r, request_id=q, output={"tags": ["a"]}, success=True
            )
        )
        conn.execute(
            insert(LexybrainFeedback.__table__).values(
                id=uuid.uuid4(), response_id=r, feedback="positive", created_at=T0 + timedelta(hours=1)
            )
        )
    runner = CliRunner()
    args = ["export-feedback", "--since", "2026-03-01", "--until", "2026-03-02T00:00:00Z"]
    dry = runner.invoke(app, [*args, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "dry run: 1 example(s) would be exported" in dry.output
    # Wrote nothing: no row, no watermark, no object, no dedup cache.
    assert repo.list_training_files(engine) == [] and repo.get_watermark(engine) is None
    assert not (brightrun_home / "storage").exists() and not (brightrun_home / "cache").exists()
    assert not list(brightrun_home.glob("*export_feedback.lock"))

    real = runner.invoke(app, args)
    assert real.exit_code == 0, real.output
    assert "exported 1 example(s)" in real.output and "| rows read | 1 |" in real.output
    files = repo.list_training_files(engine)
    assert len(files) == 1 and files[0].source == "feedback_export"
    assert Path(files[0].json_file_path or "").is_relative_to(brightrun_home)

    bad = runner.invoke(app, ["export-feedback", "--since", "yesterday"])
    assert bad.exit_code != 0
    engine.dispose()


def test_cli_dry_run_on_a_fresh_home_creates_nothing(brightrun_home: Path) -> None:
    result = CliRunner().invoke(app, ["export-feedback", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "no registry yet" in result.output
    assert not brightrun_home.exists()


def test_cli_exports_free_text_chat_turns_and_refuses_a_bad_shape(
    brightrun_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = open_registry_url(f"sqlite:///{brightrun_home / 'registry.db'}", auto_upgrade=True)
    with engine.begin() as conn:
        for minute, (prompt, reply) in enumerate(
            [("Hi", "Hello, how can I help?"), ("Budget?", "Start small.")]
        ):
            q, r = uuid.uuid4(), uuid.uuid4()
            conn.execute(
                insert(LexybrainRequest.__table__).values(
                    id=q, prompt=prompt, context={"chat": "c1"}, requested_at=T0 + timedelta(minutes=minute)
                )
            )
            conn.execute(
                insert(LexybrainResponse.__table__).values(
                    id=r, request_id=q, output={"text": reply}, success=True
                )
            )
            conn.execute(
                insert(LexybrainFeedback.__table__).values(
                    id=uuid.uuid4(), response_id=r, feedback="positive", created_at=T0 + timedelta(hours=1)
                )
            )
    engine.dispose()
    runner = CliRunner()
    args = ["export-feedback", "--since", "2026-03-01", "--until", "2026-03-02T00:00:00Z", "--dry-run"]
    # The settings say free text in `text`; the flag groups by the `chat` key.
    monkeypatch.setenv("BRIGHTRUN_EXPORT_OUTPUT_TEXT_FIELD", "text")
    chat = runner.invoke(app, [*args, "--conversation-keys", "chat"])
    assert chat.exit_code == 0, chat.output
    assert "dry run: 1 example(s) would be exported" in chat.output  # one conversation of two turns
    bad = runner.invoke(app, [*args, "--conversation-keys", "chat id"])
    # `brightrun` (cli.main.main) exits with an InputError's code, 2.
    assert isinstance(bad.exception, InputError) and bad.exception.exit_code == 2, bad.output
    assert "conversation_keys: 'chat id' is not a context key name" in str(bad.exception)
