"""The hidden-sentinel test: one of each kind of personal data planted in requests,
responses, notes and JSON values; none may survive in any exported file, the report, the
log or a registry row the export wrote."""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import MetaData, select, update

from tasks.feedback import ExportOptions, export_feedback_window
from tasks.feedback.select import SelectionOptions
from tasks.feedback.shape import ExportShape
from tests.integration.test_export_feedback import FB_T, W1, Logs, make_resources
from tests.unit.test_feedback_pii import SECRETS, SENTINELS

pytestmark = pytest.mark.integration

INPUT_TABLES = ("lexybrain_requests", "lexybrain_responses", "lexybrain_feedback")


def test_no_planted_personal_data_survives_an_export(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    resources = make_resources(tmp_path, f"sqlite:///{tmp_path / 'registry.db'}")
    try:
        logs = Logs(resources.registry)
        at = W1[0] + timedelta(hours=1)
        for i, (kind, sentence) in enumerate(sorted(SENTINELS.items())):
            ids = logs.add(
                at + timedelta(minutes=i),
                prompt=f"Question {i}: {sentence}",
                context={"client": {"memo": sentence}, "tags": [sentence]},
                output={"answer": f"Noted, {sentence}", "items": [{"detail": sentence}]},
            )
            with resources.registry.begin() as conn:
                conn.execute(update(FB_T).where(FB_T.c.id == ids["feedback"]).values(notes=sentence))
            assert kind in SECRETS
        options = ExportOptions(
            selection=SelectionOptions(include_neutral_with_notes=True, pii_spacy_model="none")
        )
        with caplog.at_level(logging.DEBUG):
            result = export_feedback_window(resources, since=W1[0], until=W1[1], options=options)
        assert result.status == "exported" and result.examples == len(SENTINELS)
        exported = [p.read_text(errors="replace") for p in (tmp_path / "storage").rglob("*") if p.is_file()]
        assert exported, "the export wrote no file"
        with resources.registry.connect() as conn:
            meta = MetaData()
            meta.reflect(conn)
            rows = [
                repr(list(conn.execute(select(table))))
                for name, table in meta.tables.items()
                if name not in INPUT_TABLES
            ]
        places = {
            "exported files": "\n".join(exported),
            "report": result.report,
            "summary": repr(result.summary()),
            "log": caplog.text,
            "registry rows": "\n".join(rows),
        }
        leaks = [
            (kind, where)
            for kind, secret in SECRETS.items()
            for where, text in places.items()
            if secret in text
        ]
        assert not leaks
        # The report counts every kind (prompt, context and output each held one).
        for kind in SENTINELS:
            assert result.stats.scrubbed[kind] >= 3, (kind, dict(result.stats.scrubbed))
            assert f"| {kind} |" in result.report
    finally:
        resources.close()


def test_no_planted_personal_data_survives_in_a_conversations_history(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Chat shape: every kind planted in an earlier turn (prompt, free-text answer, the
    context's system prompt), which later turns carry as history; the earlier turns are
    rated down, so they reach the file only as history."""
    resources = make_resources(tmp_path, f"sqlite:///{tmp_path / 'registry.db'}")
    try:
        logs = Logs(resources.registry)
        at = W1[0] + timedelta(hours=1)
        for i, (kind, sentence) in enumerate(sorted(SENTINELS.items())):
            context = {"session_id": f"s-{i}", "system_prompt": f"You help a client. Note: {sentence}"}
            logs.add(
                at + timedelta(minutes=i),
                prompt=f"Earlier: {sentence}",
                context=context,
                output={"reply": f"Noted, {sentence}"},
                rating="negative",
            )
            logs.add(
                at + timedelta(minutes=i, seconds=30),
                prompt=f"And what now for plan {i}?",
                context=context,
                output={"reply": "Let us plan the next step."},
            )
            assert kind in SECRETS
        options = ExportOptions(
            selection=SelectionOptions(pii_spacy_model="none"),
            shape=ExportShape(
                conversation_keys=["session_id"], output_text_field="reply", system_prompt_key="system_prompt"
            ),
        )
        with caplog.at_level(logging.DEBUG):
            result = export_feedback_window(resources, since=W1[0], until=W1[1], options=options)
        assert result.status == "exported" and result.examples == len(SENTINELS)
        (training_file,) = (tmp_path / "storage").rglob("feedback-*.json")
        conversations = json.loads(training_file.read_text())["conversations"]
        assert all(len(c["training_pairs"][1]["conversation_history"]) == 2 for c in conversations)
        exported = [p.read_text(errors="replace") for p in (tmp_path / "storage").rglob("*") if p.is_file()]
        places = {"exported files": "\n".join(exported), "report": result.report, "log": caplog.text}
        leaks = [
            (kind, where)
            for kind, secret in SECRETS.items()
            for where, text in places.items()
            if secret in text
        ]
        assert not leaks
        for kind in SENTINELS:
            assert result.stats.scrubbed[kind] >= 3, (kind, dict(result.stats.scrubbed))
    finally:
        resources.close()
