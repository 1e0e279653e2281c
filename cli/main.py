"""`brightrun`: one CLI for the whole product.

Each area registers its commands from its own module in this package,
so the command modules stay small and import heavy dependencies lazily.
"""

from __future__ import annotations

import os
import sys

import typer

from brightrun.errors import BrightrunError
from cli import ab, adapters, dataset, deploy, evalset, export, registry, review, runpod, training

app = typer.Typer(
    name="brightrun",
    help="BrightRun LoRA pipeline: conversation datasets to registered LoRA adapters.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

for module in (dataset, training, registry, runpod, export, adapters, deploy, ab, evalset, review):
    module.register(app)


def main() -> None:
    # The embedded Prefect API is a throwaway SQLite server with no network to report to; its
    # analytics heartbeat only logs 'database is locked' there.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    try:
        app()
    except BrightrunError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
