"""`brightrun export-feedback`: rated inference logs into a new training file, now.

Runs the same export as the scheduled `export_feedback` flow (and takes the same database
lock, so it never races a scheduled run), without starting a training.
"""

from __future__ import annotations

from typing import Annotated

import typer

from brightrun.errors import InputError
from cli.options import parse_when


def export_feedback_command(
    since: Annotated[
        str | None, typer.Option(help="Window start, ISO 8601 (default: where the last export stopped)")
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="Window end, exclusive, ISO 8601 (default: now minus the settle delay)")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Select and report; write nothing (no file, row or watermark)")
    ] = False,
    settle_minutes: Annotated[float, typer.Option(min=0, help="Settle delay for the default end")] = 15.0,
    include_neutral_with_notes: Annotated[
        bool, typer.Option(help="Also export responses rated neutral with notes")
    ] = False,
    wait: Annotated[float, typer.Option(min=0, help="Seconds to wait for a running export")] = 0.0,
    conversation_keys: Annotated[
        str | None,
        typer.Option(
            help="Request-context keys holding a conversation/session id, comma-separated, or none "
            "(default: BRIGHTRUN_EXPORT_CONVERSATION_KEYS)"
        ),
    ] = None,
    output_text_field: Annotated[
        str | None,
        typer.Option(
            help="Output field holding a free-text answer, or json for JSON insights "
            "(default: BRIGHTRUN_EXPORT_OUTPUT_TEXT_FIELD)"
        ),
    ] = None,
    system_prompt_key: Annotated[
        str | None,
        typer.Option(
            help="Request-context key holding the request's system prompt, or none "
            "(default: BRIGHTRUN_EXPORT_SYSTEM_PROMPT_KEY)"
        ),
    ] = None,
) -> None:
    """Export feedback-rated inference logs into a brightrun-lora-v4 training file."""
    from brightrun.resources import Resources
    from tasks.feedback import ExportOptions, SelectionOptions, export_feedback_window
    from tasks.feedback.shape import shape_with_overrides

    start, end = parse_when(since, "--since"), parse_when(until, "--until")
    if start is not None and end is not None and end <= start:
        raise InputError(f"--until {until} must be after --since {since}")
    options = ExportOptions(
        selection=SelectionOptions(include_neutral_with_notes=include_neutral_with_notes),
        settle_delay_s=settle_minutes * 60,
        lock_wait_s=wait,
    )
    with Resources.from_settings() as resources:
        shape = shape_with_overrides(
            resources.settings,
            conversation_keys=conversation_keys,
            output_text_field=output_text_field,
            system_prompt_key=system_prompt_key,
            where="export-feedback",
        )
        options = options.model_copy(update={"shape": shape})
        result = export_feedback_window(resources, since=start, until=end, options=options, dry_run=dry_run)
    typer.echo(result.report)
    typer.echo(result.message)
    if result.review_status == "pending" and result.training_file_id:
        # Issue 19: nothing trains on it until someone approves it.
        typer.echo(
            f"training file {result.training_file_id} awaits review: "
            f"brightrun review show {result.training_file_id[:8]}, then approve or reject it"
        )


def register(app: typer.Typer) -> None:
    """Add this area's commands to the `brightrun` app."""
    app.command("export-feedback")(export_feedback_command)
