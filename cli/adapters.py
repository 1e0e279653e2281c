"""After training, from the shell: generate, chat, serve, eval, promote, rollback, download,
export (merged) and feedback-stats (issue 14).

ARTIFACT is an artifact id, a job id (its adapter), or `production` (the production adapter;
`--base-model` picks one when several base models have one). The work is in tasks/adapters/;
torch is imported only by the commands that load a model.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from brightrun.errors import InputError
from cli.options import parse_when

if TYPE_CHECKING:
    from brightrun.resources import Resources

ArtifactArg = Annotated[str, typer.Argument(help="Artifact id, job id, or `production`")]
BaseModelOpt = Annotated[
    str | None,
    typer.Option("--base-model", help="Which base model's production adapter; or another copy of the base"),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text")]
EvalsetOpt = Annotated[
    str | None,
    typer.Option(
        "--evalset", help="A registered evaluation set, NAME[@VERSION] (BRIGHTRUN_PROMOTION_EVALSET)"
    ),
]
JudgeOpt = Annotated[
    bool, typer.Option("--judge", help="Also ask the pairwise judge (BRIGHTRUN_JUDGE_*), position-swapped")
]
MaxNewTokensOpt = Annotated[int, typer.Option("--max-new-tokens", min=1, max=32768, help="Reply length cap")]
TemperatureOpt = Annotated[
    float, typer.Option("--temperature", min=0.0, max=5.0, help="0 (default): greedy, deterministic")
]


def _resources() -> Resources:
    from brightrun.resources import Resources

    return Resources.from_settings()


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(value, default=str, indent=2))


def _quiet_libraries(*, required: bool = True) -> None:
    """Library noise off; with `required`, a missing `train` extra is a clear error."""
    import logging
    import os
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore")
    for name in ("transformers", "peft", "bitsandbytes", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:
        if required:
            raise InputError(
                "this command loads a model: install the `train` extra (torch, transformers, peft)"
            ) from None


def _refuse_before_loading(artifact: str, *, base_model: str | None = None, out: Path | None = None) -> None:
    """The refusals that need no model (an unknown artifact, an occupied --out), before torch
    loads: they answer in about a second, not after several of library imports."""
    from brightrun.registry import promotion

    if out is not None and out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"--out {out} exists and is not an empty directory; choose a new --out")
    with _resources() as resources:
        promotion.resolve_artifact(resources.registry, artifact, base_model=base_model)


def _messages(prompt: str, system: str | None) -> list[dict[str, str]]:
    out = [{"role": "system", "content": system}] if system else []
    return [*out, {"role": "user", "content": prompt}]


# ---------------------------------------------------------------- talking to an adapter


def generate(
    artifact: ArtifactArg,
    prompt: Annotated[str, typer.Option("--prompt", help="The user's message")],
    system: Annotated[str | None, typer.Option("--system", help="A system prompt")] = None,
    max_new_tokens: MaxNewTokensOpt = 256,
    temperature: TemperatureOpt = 0.0,
    base_model: BaseModelOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """One reply from base + adapter, with the chat template it was trained with."""
    _refuse_before_loading(artifact, base_model=base_model)
    _quiet_libraries()
    from tasks.adapters import load_for_chat
    from trainer.inference import GenerationOptions

    options = GenerationOptions(max_new_tokens=max_new_tokens, temperature=temperature)
    with _resources() as resources:
        chat = load_for_chat(resources, artifact, base_model=base_model)
        result = chat.generate(_messages(prompt, system), options)
    if as_json:
        _print_json({"artifact_id": chat.name, "text": result.text, "tokens": result.tokens})
    else:
        typer.echo(result.text)


def chat(
    artifact: ArtifactArg,
    system: Annotated[str | None, typer.Option("--system", help="A system prompt")] = None,
    max_new_tokens: MaxNewTokensOpt = 256,
    temperature: TemperatureOpt = 0.0,
    base_model: BaseModelOpt = None,
) -> None:
    """Talk to an adapter in the terminal: replies stream as generated; /reset, /exit."""
    _refuse_before_loading(artifact, base_model=base_model)
    _quiet_libraries()
    from tasks.adapters import load_for_chat
    from trainer.inference import Generation, GenerationOptions

    options = GenerationOptions(max_new_tokens=max_new_tokens, temperature=temperature)
    with _resources() as resources:
        model = load_for_chat(resources, artifact, base_model=base_model)
    typer.echo(f"chatting with {model.name} — /reset clears the history, /exit (or Ctrl-D) quits")
    history: list[dict[str, str]] = _messages("", system)[:-1]
    while True:
        try:
            line = input("you> ")
        except (EOFError, KeyboardInterrupt):
            typer.echo("")
            return
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return
        if text == "/reset":
            history = _messages("", system)[:-1]
            typer.echo("(history cleared)")
            continue
        turn = [*history, {"role": "user", "content": text}]
        sys.stdout.write("assistant> ")
        sys.stdout.flush()
        reply = ""
        pieces = model.stream(turn, options)
        try:
            for piece in pieces:
                if isinstance(piece, Generation):
                    reply = piece.text
                else:
                    sys.stdout.write(piece)
                    sys.stdout.flush()
        except KeyboardInterrupt:
            pieces.close()  # stops the generation and waits for its thread
            sys.stdout.write("\n(reply stopped; it is not kept in the history)\n")
            sys.stdout.flush()
            continue
        sys.stdout.write("\n")
        history = [*turn, {"role": "assistant", "content": reply}]


def serve(
    artifacts: Annotated[
        list[str] | None,
        typer.Argument(help="Artifact ids, job ids or `production`; each served under its served name"),
    ] = None,
    adapter: Annotated[
        list[str] | None,
        typer.Option("--adapter", help="NAME=ARTIFACT: serve ARTIFACT as model NAME (repeatable)"),
    ] = None,
    port: Annotated[int, typer.Option("--port", min=1, max=65535)] = 8000,
    host: Annotated[
        str, typer.Option("--host", help="Loopback by default; any other address needs --api-key")
    ] = "127.0.0.1",
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="BRIGHTRUN_SERVE_API_KEY",
            help="Requests need Authorization: Bearer KEY",
            show_default=False,
        ),
    ] = None,
    max_body_bytes: Annotated[
        int | None, typer.Option("--max-body-bytes", help="Larger bodies get 413 (default 1 MB)")
    ] = None,
    queue_size: Annotated[
        int | None, typer.Option("--queue-size", help="Requests waiting for the model; more get 429 (64)")
    ] = None,
    max_batch: Annotated[
        int | None, typer.Option("--max-batch", help="Requests generated together as one batch (8)")
    ] = None,
    base_model: BaseModelOpt = None,
) -> None:
    """An OpenAI-compatible endpoint: /health, /v1/models, /v1/chat/completions (streaming too).

    Several adapters of one base model share the process; a request picks one by `model`.
    """
    from pydantic import ValidationError

    from cli.serve_openai import ServeSettings, check_bind
    from cli.serve_openai import serve as run_server
    from tasks.adapters.serving import AdapterChoice, load_for_serving, parse_adapter_option

    overrides = {
        k: v
        for k, v in {
            "api_key": api_key,
            "max_body_bytes": max_body_bytes,
            "queue_size": queue_size,
            "max_batch": max_batch,
        }.items()
        if v is not None
    }
    try:
        settings = ServeSettings(**overrides)
    except ValidationError as exc:
        problems = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        raise InputError("bad serve settings (flags or BRIGHTRUN_SERVE_*)", problems) from None
    check_bind(host, settings)  # before any model loads: a refusal costs a second
    choices = [AdapterChoice(ref) for ref in artifacts or []]
    choices += [parse_adapter_option(value) for value in adapter or []]
    _quiet_libraries()
    with _resources() as resources:
        engine = load_for_serving(
            resources,
            choices,
            base_model=base_model,
            queue_size=settings.queue_size,
            max_batch=settings.max_batch,
        )
    for served in engine.served:
        also = f" (also {', '.join(map(repr, served.aliases))})" if served.aliases else ""
        typer.echo(f"serving model {served.name!r}{also}")
    auth = "API key required" if settings.api_key else "no API key"
    typer.echo(f"on http://{host}:{port}/v1 ({auth})")
    run_server(engine, settings, host, port)


# ---------------------------------------------------------------- compare and promote


def eval_command(
    artifact: ArtifactArg,
    against: Annotated[
        str, typer.Option("--against", help="An artifact, `production` (default) or `base`")
    ] = "production",
    eval_set: Annotated[
        Path | None,
        typer.Option("--eval-set", help="Prepared dir, prepared .jsonl or brightrun-lora-v4 .json"),
    ] = None,
    samples: Annotated[int, typer.Option("--samples", min=0, max=20, help="Side-by-side replies")] = 3,
    evaluation_set: EvalsetOpt = None,
    judge: JudgeOpt = False,
    base_model: BaseModelOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Both models on the same held-out conversations: loss, perplexity, wins, sample replies."""
    from tasks.adapters import evaluate, evaluation_json, evaluation_markdown
    from tasks.adapters.judge import required_judge

    _quiet_libraries()
    with _resources() as resources:
        record = evaluate(
            resources,
            artifact,
            against,
            eval_set=eval_set,
            evaluation_set=evaluation_set,
            judge=required_judge(resources.settings, judge),
            base_model=base_model,
            samples=samples,
        )
    if as_json:
        _print_json(evaluation_json(record))
    else:
        typer.echo(evaluation_markdown(record))


def promote(
    artifact: ArtifactArg,
    to: Annotated[str, typer.Option("--to", help="testing or production")],
    force: Annotated[bool, typer.Option("--force", help="Skip the loss gate (needs --reason)")] = False,
    reason: Annotated[str | None, typer.Option("--reason", help="Recorded with the promotion")] = None,
    eval_set: Annotated[
        Path | None, typer.Option("--eval-set", help="Evaluate on this set instead of the candidate's split")
    ] = None,
    webhook_url: Annotated[str | None, typer.Option("--webhook-url", help="POST each change here")] = None,
    evaluation_set: EvalsetOpt = None,
    judge: JudgeOpt = False,
    base_model: BaseModelOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Move an adapter to testing or production (one production adapter per base model).

    Production is refused when the candidate's validation loss is worse than the current
    production adapter's on the same held-out set (evaluated first when not yet recorded).
    """
    from tasks.adapters import promote as do_promote
    from tasks.adapters.judge import required_judge

    if to not in ("testing", "production"):
        raise InputError(f"--to must be testing or production, not {to!r}")
    if force and not (reason or "").strip():  # before any lookup: the answer is the same
        raise InputError("--force needs --reason TEXT: the reason is recorded with the promotion")
    _quiet_libraries(required=False)
    with _resources() as resources:
        result, record = do_promote(
            resources,
            artifact,
            to,
            force=force,
            reason=reason,
            base_model=base_model,
            eval_set=eval_set,
            evaluation_set=evaluation_set,
            judge=required_judge(resources.settings, judge),
            webhook_url=webhook_url,
        )
    if as_json:
        _print_json(_lifecycle_json(result, record))
        return
    if record is not None:
        typer.echo(
            f"evaluated on {record.conversations} conversations: candidate loss {record.candidate.loss:.4f}, "
            f"production {record.against.loss:.4f}"
        )
    for change in result.changes:
        typer.echo(f"{change.artifact.id}: {change.previous_status} → {change.artifact.deployment_status}")
    typer.echo(result.message)


def rollback(
    base_model: BaseModelOpt = None,
    reason: Annotated[str | None, typer.Option("--reason", help="Recorded with the rollback")] = None,
    webhook_url: Annotated[str | None, typer.Option("--webhook-url", help="POST each change here")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Archive the production adapter and restore the one that was production before it."""
    from tasks.adapters import rollback as do_rollback

    with _resources() as resources:
        result = do_rollback(resources, base_model, reason=reason, webhook_url=webhook_url)
    if as_json:
        _print_json(_lifecycle_json(result, None))
        return
    for change in result.changes:
        typer.echo(f"{change.artifact.id}: {change.previous_status} → {change.artifact.deployment_status}")
    typer.echo(result.message)


def _lifecycle_json(result: Any, record: Any) -> dict[str, Any]:
    return {
        "artifact_id": result.artifact.id,
        "deployment_status": result.artifact.deployment_status,
        "deployed_at": result.artifact.deployed_at,
        "changes": [
            {
                "artifact_id": c.artifact.id,
                "from": c.previous_status,
                "to": c.artifact.deployment_status,
                "event": c.event,
            }
            for c in result.changes
        ],
        "evaluation": record.model_dump(mode="json", exclude={"per_conversation"}) if record else None,
        "message": result.message,
    }


# ---------------------------------------------------------------- files


def download(
    artifact: ArtifactArg,
    out: Annotated[Path | None, typer.Option("--out", help="A new or empty directory")] = None,
    url: Annotated[bool, typer.Option("--url", help="Print time-limited signed URLs instead (S3)")] = False,
    expires: Annotated[int, typer.Option("--expires", help="Seconds the URLs stay valid")] = 3600,
    base_model: BaseModelOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The adapter's files, verified against its manifest (or signed URLs to them on S3)."""
    from brightrun.registry.promotion import resolve_artifact
    from tasks.adapters import download_adapter, presigned_urls

    if (out is None) == (not url):
        raise InputError("give either --out DIR or --url")
    if out is not None and out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"--out {out} exists and is not an empty directory; choose a new --out")
    with _resources() as resources:
        found = resolve_artifact(resources.registry, artifact, base_model=base_model)
        if url:
            urls = presigned_urls(resources, found, expires)
            if as_json:
                _print_json({"artifact_id": found.id, "expires_in": expires, "files": urls})
            else:
                for rel, link in urls.items():
                    typer.echo(f"{rel}\t{link}")
            return
        assert out is not None
        manifest = download_adapter(resources, found, out)
    if as_json:
        _print_json({"artifact_id": found.id, "out": str(out), "files": sorted(manifest.files)})
    else:
        typer.echo(f"{len(manifest.files)} files of {found.id} verified and written to {out}")


def export(
    artifact: ArtifactArg,
    out: Annotated[Path, typer.Option("--out", help="A new or empty directory")],
    format: Annotated[str, typer.Option("--format", help="merged: adapter merged into the base")] = "merged",
    dtype: Annotated[
        str, typer.Option("--dtype", help="auto (the base checkpoint's), float32, bfloat16, float16")
    ] = "auto",
    register: Annotated[
        bool, typer.Option("--register/--no-register", help="Upload and register as a merged_model")
    ] = True,
) -> None:
    """The adapter merged into its full-precision base: safetensors + tokenizer + chat template."""
    if format != "merged":
        raise InputError(f"--format {format!r}: only `merged` is supported")
    if dtype not in ("auto", "float32", "bfloat16", "float16"):
        raise InputError(f"--dtype {dtype!r}: use auto, float32, bfloat16 or float16")
    _refuse_before_loading(artifact, out=out)
    from tasks.adapters import export_merged

    _quiet_libraries()
    with _resources() as resources:
        path, registered = export_merged(resources, artifact, out, dtype=dtype, register=register)
    typer.echo(f"merged model written to {path}")
    if registered is not None:
        typer.echo(f"registered merged_model {registered.id} at {registered.storage_path}")


# ---------------------------------------------------------------- A/B by model version


def _stats_row(s: Any) -> dict[str, Any]:
    low_high = s.interval()
    return {
        "model_version": s.model_version,
        "artifact_id": s.artifact_id,
        "rated_responses": s.rated_responses,
        "ratings": s.ratings,
        "positive": s.positive,
        "negative": s.negative,
        "neutral": s.neutral,
        "positive_rate": s.positive_rate,
        "ci95_low": low_high[0] if low_high else None,
        "ci95_high": low_high[1] if low_high else None,
        # issue 24: the adapter's status, and how many users asked the rated responses
        "deployment_status": s.deployment_status,
        "users": s.users,
    }


def _stats_line(label: str, r: dict[str, Any]) -> str:
    rate = f"{r['positive_rate']:.1%}" if r["positive_rate"] is not None else "-"
    ci = f"{r['ci95_low']:.1%}–{r['ci95_high']:.1%}" if r["ci95_low"] is not None else "-"
    return (
        f"{label:<40} {r['rated_responses']:>6} {r['ratings']:>7} "
        f"{r['positive']:>5} {r['negative']:>5} {r['neutral']:>5} {rate:>9}  {ci:<13} "
        f"{r['users']:>6}  {r['deployment_status'] or ''}"
    ).rstrip()


def feedback_stats(
    since: Annotated[str | None, typer.Option("--since", help="ISO 8601, inclusive")] = None,
    until: Annotated[str | None, typer.Option("--until", help="ISO 8601, exclusive")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Users' ratings per adapter (`lexybrain_responses.model_version` joined to served names):
    rated responses, positive rate, 95% Wilson interval, users, the adapter's status. Versions
    that name no adapter are reported on one "unknown model_version" line, never dropped."""
    from brightrun.registry.ab_stats import thumbs_by_served_name
    from brightrun.registry.ab_stats import unknown_total as unknown_versions

    start, end = parse_when(since, "--since"), parse_when(until, "--until")
    with _resources() as resources:
        stats = thumbs_by_served_name(resources.registry, since=start, until=end)
    if as_json:
        # Every version, known or not (artifact_id null), so a script sees all of them.
        _print_json([_stats_row(s) for s in stats])
        return
    if not stats:
        typer.echo("no rated responses in this window")
        return
    typer.echo(
        f"{'adapter (served name)':<40} {'rated':>6} {'ratings':>7} {'+':>5} {'-':>5} {'=':>5} "
        f"{'positive':>9}  {'95% CI':<13} {'users':>6}  status"
    )
    for s in stats:
        if s.artifact_id is not None:
            typer.echo(_stats_line(str(s.model_version), _stats_row(s)))
    unknown = unknown_versions(stats)
    if unknown is not None:
        typer.echo(_stats_line("unknown model_version", _stats_row(unknown)))
        names = sorted(str(s.model_version or "(none)") for s in stats if s.artifact_id is None)
        typer.echo(f"  (no registered adapter is served as: {', '.join(names)})")


def register(app: typer.Typer) -> None:
    """Add this area's commands to the `brightrun` app."""
    app.command("generate")(generate)
    app.command("chat")(chat)
    app.command("serve")(serve)
    app.command("eval")(eval_command)
    app.command("promote")(promote)
    app.command("rollback")(rollback)
    app.command("download")(download)
    app.command("export")(export)
    app.command("feedback-stats")(feedback_stats)
