"""`brightrun review ...`: people review what the pipeline made. This module defines the
`review` group, its `score` command (issue 25), and the review of feedback exports before
they train (issue 19): `list`, `show`, `approve`, `reject`, `correct`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from brightrun.errors import InputError

review_app = typer.Typer(help="People review what the pipeline made.", no_args_is_help=True)


def _read_scores(path: Path) -> tuple[list[float], list[dict[str, Any]]]:
    """`[{"prompt": ..., "reply": ..., "score": 0..1}, ...]`: one entry per sample reply."""
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"--file {path}: cannot read it ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise InputError(f"--file {path}: not valid JSON ({exc})") from None
    if not isinstance(entries, list) or not entries:
        raise InputError(f"--file {path}: expected a non-empty list of {{prompt, reply, score}} objects")
    problems = [
        f"entry {i + 1}: needs a numeric score"
        for i, e in enumerate(entries)
        if not isinstance(e, dict)
        or isinstance(e.get("score"), bool)
        or not isinstance(e.get("score"), int | float)
    ]
    if problems:
        raise InputError(f"--file {path}: {len(problems)} problem(s)", problems)
    return [float(e["score"]) for e in entries], entries


@review_app.command("score")
def score(
    artifact: Annotated[str, typer.Argument(help="Artifact id, served name, job id, or `production`")],
    value: Annotated[float | None, typer.Option("--score", help="One overall score, 0 to 1")] = None,
    file: Annotated[
        Path | None, typer.Option("--file", help="JSON list of {prompt, reply, score} per sample reply")
    ] = None,
    by: Annotated[str | None, typer.Option("--by", help="Who scored (default: $USER)")] = None,
    base_model: Annotated[str | None, typer.Option("--base-model", help="With `production`")] = None,
) -> None:
    """Record people's score of an adapter's replies as its human_eval_score (the mean, 0-1)."""
    from brightrun.registry.human_scores import record_human_score
    from brightrun.registry.promotion import resolve_artifact
    from brightrun.resources import Resources

    if (value is None) == (file is None):
        raise InputError("give either --score 0..1 or --file scores.json")
    scores, details = ([value], []) if value is not None else _read_scores(file)  # type: ignore[arg-type]
    who = by or os.environ.get("USER") or ""
    with Resources.from_settings() as resources:
        found = resolve_artifact(resources.registry, artifact, base_model=base_model)
        row, mean = record_human_score(
            resources.registry, found.id, scores, scored_by=who, details=details,
            where=f"--file {file}" if file else "--score",
        )  # fmt: skip
    typer.echo(f"{row.id}: human_eval_score {mean:.3f} from {len(scores)} score(s) by {who}")


# ---------------------------------------------------------------- review before training (issue 19)


def reviewer_name(given: str | None) -> str:
    """--reviewer, else $BRIGHTRUN_REVIEWER, else the OS user."""
    import getpass

    name = (given or os.environ.get("BRIGHTRUN_REVIEWER") or "").strip()
    if not name:
        try:
            name = getpass.getuser()
        except (KeyError, OSError):
            name = ""
    if not name:
        raise InputError("who is reviewing? give --reviewer NAME or set BRIGHTRUN_REVIEWER")
    return name


ReviewerOption = Annotated[
    str | None,
    typer.Option("--reviewer", help="Who reviews (default: $BRIGHTRUN_REVIEWER, else the OS user)"),
]
FileArgument = Annotated[str, typer.Argument(help="Training file id (or a unique prefix, 4+ characters)")]


def _line(tf: Any) -> str:
    window = (
        f"{tf.window_start:%Y-%m-%d %H:%M} → {tf.window_end:%Y-%m-%d %H:%M}"
        if tf.window_start and tf.window_end
        else "(no window)"
    )
    who = f"  by {tf.reviewed_by}" if tf.reviewed_by else ""
    return f"{tf.id[:8]}  {tf.review_status or 'approved':<8}  {tf.examples or 0:>6} ex  {window}{who}"


@review_app.command("list")
def list_command(
    status: Annotated[str, typer.Option(help="pending, approved, rejected, or all")] = "pending",
    limit: Annotated[int, typer.Option(min=1, help="At most this many, newest first")] = 50,
) -> None:
    """Feedback exports by review status (pending by default): only approved ones train."""
    from brightrun.registry.review import list_for_review
    from brightrun.resources import Resources

    with Resources.from_settings() as resources:
        files = list_for_review(resources.registry, None if status == "all" else status, limit)
    if not files:
        typer.echo(f"no {'' if status == 'all' else status + ' '}feedback exports")
        return
    for tf in files:
        typer.echo(_line(tf))


@review_app.command("show")
def show_command(
    file: FileArgument,
    rows: Annotated[int, typer.Option(min=0, help="Sample examples to print")] = 10,
) -> None:
    """A feedback export's figures, its review, and a sample of its examples."""
    from brightrun.registry import repository as repo
    from brightrun.registry.review import resolve_training_file_id
    from brightrun.resources import Resources
    from tasks.feedback.exclusions import storage_key

    with Resources.from_settings() as resources:
        tf = repo.get_training_file(resources.registry, resolve_training_file_id(resources.registry, file))
        meta = tf.metadata or {}
        typer.echo(_line(tf))
        typer.echo(f"file: {tf.json_file_path}")
        for key in ("rows_read", "selected", "corrections", "preference_pairs", "scrubbed", "skipped"):
            if key in meta:
                typer.echo(f"{key}: {meta[key]}")
        if tf.review_reason:
            typer.echo(f"reason: {tf.review_reason}")
        if tf.review_excluded:
            typer.echo(f"excluded: {', '.join(tf.review_excluded)}")
        chat = (meta.get("files") or {}).get("chat")
        if rows and chat:
            lines = resources.storage.get_bytes(storage_key(resources.storage, chat)).decode().splitlines()
            for line in lines[:rows]:
                record = json.loads(line)
                turns = {m["role"]: m["content"] for m in record["messages"]}
                typer.echo(f"\n[{record['id']}] user: {turns.get('user', '')[:300]}")
                typer.echo(f"  answer: {turns.get('assistant', '')[:300]}")


@review_app.command("approve")
def approve_command(
    file: FileArgument,
    exclude: Annotated[
        list[str] | None, typer.Option("--exclude", help="An example id to leave out (repeat for more)")
    ] = None,
    reason: Annotated[str, typer.Option(help="A note kept with the decision")] = "",
    reviewer: ReviewerOption = None,
) -> None:
    """Approve a pending export for training (with --exclude: a reviewed copy without those examples)."""
    from brightrun.registry.review import resolve_training_file_id
    from brightrun.resources import Resources
    from tasks.feedback.review import ReviewForm, apply_review

    who = reviewer_name(reviewer)
    form = ReviewForm(
        decision="approve_with_exclusions" if exclude else "approve",
        reviewer=who,
        reason=reason,
        exclude_example_ids=exclude or [],
    )
    with Resources.from_settings() as resources:
        decided = apply_review(resources, resolve_training_file_id(resources.registry, file), form)
    extra = f" (a reviewed copy without {len(exclude)} example(s))" if exclude else ""
    typer.echo(f"{decided.id}: approved by {who}{extra}; the next retrain trains on it")


@review_app.command("reject")
def reject_command(
    file: FileArgument,
    reason: Annotated[str, typer.Option(help="What is wrong with the file (required)")] = "",
    reviewer: ReviewerOption = None,
) -> None:
    """Reject an export: it never trains."""
    from brightrun.registry.review import resolve_training_file_id
    from brightrun.resources import Resources
    from tasks.feedback.review import ReviewForm, apply_review

    if not reason.strip():
        raise InputError("reject needs --reason: say what is wrong with the file")
    who = reviewer_name(reviewer)
    with Resources.from_settings() as resources:
        decided = apply_review(
            resources,
            resolve_training_file_id(resources.registry, file),
            ReviewForm(decision="reject", reviewer=who, reason=reason),
        )
    typer.echo(f"{decided.id}: rejected by {who}: {reason.strip()}")


@review_app.command("correct")
def correct_command(
    response_id: Annotated[str, typer.Argument(help="The rated response (lexybrain_responses.id)")],
    text: Annotated[str | None, typer.Option("--text", help="The corrected answer")] = None,
    file: Annotated[Path | None, typer.Option("--file", help="A file holding the corrected answer")] = None,
    reviewer: ReviewerOption = None,
) -> None:
    """Write the answer a rated response should have given: the next export trains on it and
    pairs it (chosen) with the original (rejected) for preference training."""
    from brightrun.registry.review import add_correction
    from brightrun.resources import Resources

    if (text is None) == (file is None):
        raise InputError("give the corrected answer either with --text TEXT or with --file PATH")
    if file is not None:
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"--file {file}: cannot read it ({exc})") from None
    who = reviewer_name(reviewer)
    with Resources.from_settings() as resources:
        correction = add_correction(resources.registry, response_id, text or "", reviewer=who)
    typer.echo(
        f"correction {correction.id[:8]} of response {correction.response_id} by {who}: "
        "the next export trains on it"
    )


def register(app: typer.Typer) -> None:
    """Add this area's commands to the `brightrun` app."""
    app.add_typer(review_app, name="review")
