"""`brightrun evalset create | list | show`: the fixed exam, registered (issue 25)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from brightrun.errors import InputError

evalset_app = typer.Typer(
    help="Evaluation sets: held-out conversations every adapter is scored on, never trained on.",
    no_args_is_help=True,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text")]


def _resources() -> Any:
    from brightrun.resources import Resources

    return Resources.from_settings()


def _as_json(row: Any) -> dict[str, Any]:
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in dataclasses.asdict(row).items()}


@evalset_app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="The set's name (e.g. exam); each create adds a version")],
    curated: Annotated[
        Path | None, typer.Option("--from", help="The curated brightrun-lora-v4 training file")
    ] = None,
    take: Annotated[
        int | None, typer.Option("--take", min=1, help="How many of its conversations, chosen at random")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random choice")] = 0,
    conversation: Annotated[
        list[str] | None,
        typer.Option("--conversation", help="A conversation id of --from to hold out (repeatable)"),
    ] = None,
    logs: Annotated[
        list[Path] | None,
        typer.Option("--logs", help="A brightrun-lora-v4 file of reviewed log conversations, all held out"),
    ] = None,
    rest: Annotated[
        Path | None, typer.Option("--rest", help="Write --from without the held-out conversations here")
    ] = None,
    created_by: Annotated[str | None, typer.Option("--created-by", help="Who made it (recorded)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Register the next version of NAME: conversations held out of every training."""
    from tasks.evalsets import Selection, create_evaluation_set

    ids = tuple(conversation or ())
    if curated is not None and (take is None) == (not ids):
        raise InputError("with --from, give either --take N or --conversation ID (not both)")
    if curated is None and (take is not None or ids):
        raise InputError("--take and --conversation choose from --from FILE; give it")
    with _resources() as resources:
        row = create_evaluation_set(
            resources,
            name=name,
            curated=curated,
            selection=Selection(take=take, seed=seed, conversation_ids=ids),
            logs=list(logs or ()),
            created_by=created_by,
            rest_out=rest,
        )
    if as_json:
        typer.echo(json.dumps(_as_json(row), indent=2))
        return
    typer.echo(
        f"evaluation set {row.label} registered: {row.conversation_count} conversations, "
        f"sha256 {row.sha256[:12]}, stored at {row.storage_url.rstrip('/')}/{row.storage_key}"
    )
    if rest is not None:
        typer.echo(f"{curated} without them written to {rest}: train on that file")
    typer.echo(f"score adapters on it: brightrun eval ARTIFACT --evalset {row.ref}")


@evalset_app.command("list")
def list_command(as_json: JsonOpt = False) -> None:
    """Every registered evaluation set, by name and version."""
    from brightrun.registry import evalsets

    with _resources() as resources:
        rows = evalsets.list_sets(resources.registry)
    if as_json:
        typer.echo(json.dumps([_as_json(r) for r in rows], indent=2))
        return
    if not rows:
        typer.echo("no evaluation sets yet: `brightrun evalset create NAME --from FILE --take N`")
        return
    typer.echo(f"{'name@version':<32} {'conversations':>13}  {'sha256':<12}  created")
    for r in rows:
        typer.echo(f"{r.ref:<32} {r.conversation_count:>13}  {r.sha256[:12]}  {r.created_at:%Y-%m-%d %H:%M}")


@evalset_app.command("show")
def show(
    ref: Annotated[str, typer.Argument(help="NAME (its newest version) or NAME@VERSION")],
    as_json: JsonOpt = False,
) -> None:
    """One set: where it came from, who made it, its conversations."""
    from brightrun.registry import evalsets

    with _resources() as resources:
        row = evalsets.get(resources.registry, ref)
        conversations = evalsets.conversations_of(resources.registry, row.id)
    if as_json:
        payload = _as_json(row)
        payload["conversations"] = [dataclasses.asdict(c) for c in conversations]
        typer.echo(json.dumps(payload, indent=2))
        return
    typer.echo(f"evaluation set {row.label}")
    typer.echo(f"  sha256        {row.sha256}")
    typer.echo(f"  stored at     {row.storage_url.rstrip('/')}/{row.storage_key}")
    typer.echo(f"  from          {row.source_description}")
    typer.echo(f"  created       {row.created_at.isoformat()} by {row.created_by or '(not recorded)'}")
    typer.echo(f"  conversations {row.conversation_count}")
    for c in conversations:
        typer.echo(f"    {c.conversation_id}  {c.fingerprint[:12]}")


def register(app: typer.Typer) -> None:
    """Add this area's commands to the `brightrun` app."""
    app.add_typer(evalset_app, name="evalset")
