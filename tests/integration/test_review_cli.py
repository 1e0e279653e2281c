"""`brightrun review list | show | approve | reject | correct` on the embedded default (issue 19)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from brightrun.errors import BrightrunError
from brightrun.registry import open_registry_url
from brightrun.registry import repository as repo
from cli.main import app
from tests.integration.test_export_feedback import T0, Logs

pytestmark = pytest.mark.integration


class Ran:
    """A command's outcome as `cli.main.main` reports it (a BrightrunError: its exit code, its message)."""

    def __init__(self, *args: str) -> None:
        result = CliRunner().invoke(app, list(args))
        error = result.exception if isinstance(result.exception, BrightrunError) else None
        self.exit_code = error.exit_code if error is not None else result.exit_code
        self.output = result.output + (f"error: {error}" if error is not None else "")


def test_review_commands(brightrun_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = open_registry_url(f"sqlite:///{brightrun_home / 'registry.db'}", auto_upgrade=True)
    logs = Logs(engine)
    first = logs.add(T0 + timedelta(hours=1), prompt="First?")
    logs.add(T0 + timedelta(days=1, hours=1), prompt="Second?")
    for until in ("2026-03-02T00:00:00Z", "2026-03-03T00:00:00Z"):
        done = Ran("export-feedback", "--until", until)
        assert "awaits review: brightrun review show" in done.output
        assert done.exit_code == 0, done.output
    older, newer = sorted(repo.list_training_files(engine), key=lambda f: f.window_end)

    listed = Ran("review", "list")
    assert listed.exit_code == 0 and listed.output.count("pending") == 2 and older.id[:8] in listed.output
    shown = Ran("review", "show", older.id[:8])
    assert shown.exit_code == 0, shown.output
    assert f"[fb-{first['response']}] user: First?" in shown.output

    monkeypatch.setenv("BRIGHTRUN_REVIEWER", "erin")
    approved = Ran("review", "approve", older.id[:8])
    assert approved.exit_code == 0, approved.output
    assert repo.get_training_file(engine, older.id).reviewed_by == "erin"

    no_reason = Ran("review", "reject", newer.id)
    assert no_reason.exit_code == 2 and "--reason" in no_reason.output
    rejected = Ran("review", "reject", newer.id, "--reason", "off topic", "--reviewer", "fay")
    assert rejected.exit_code == 0, rejected.output
    again = Ran("review", "approve", newer.id)
    assert again.exit_code == 2 and "rejected export stays rejected" in again.output
    assert repo.get_training_file(engine, newer.id).review_status == "rejected"
    assert Ran("review", "list", "--status", "all").output.count("\n") == 2
    unknown = Ran("review", "show", "ffffffff")
    assert unknown.exit_code == 2 and "ffffffff" in unknown.output

    answer = tmp_path / "answer.json"
    answer.write_text(json.dumps({"top": ["tea"], "n": 1}))
    corrected = Ran("review", "correct", str(first["response"]), "--file", str(answer))
    assert corrected.exit_code == 0, corrected.output
    assert "by erin" in corrected.output
    both = Ran("review", "correct", str(first["response"]), "--text", "{}", "--file", str(answer))
    assert both.exit_code == 2 and "either with --text" in both.output
    missing = Ran("review", "correct", "not-a-uuid", "--text", "{}")
    assert missing.exit_code == 2 and "not a valid response id" in missing.output
    engine.dispose()
