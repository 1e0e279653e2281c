"""Print the trainer image's requirements: pyproject.toml's dependencies and `train` extra,
less what only the orchestrator uses (DESIGN.md §1: the trainer runs without Prefect).

    python infra/trainer_requirements.py > requirements.txt   (infra/Dockerfile.trainer runs it)

The ranges stay pyproject.toml's, so the image and the project never disagree on a version.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"

# Distributions the trainer side never imports: the orchestrator, the registry, the CLI,
# the dataset stage's streaming parser, the RunPod SDK (our own client speaks GraphQL).
ORCHESTRATOR_ONLY = frozenset(
    {"prefect", "fastapi", "sqlalchemy", "alembic", "psycopg", "runpod", "typer", "rich", "ijson"}
)


def distribution(requirement: str) -> str:
    """`psycopg[binary]>=3.1,<4` -> `psycopg`."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if not match:
        raise ValueError(f"not a requirement: {requirement!r}")
    return match.group(1).lower().replace("_", "-")


def trainer_requirements(pyproject: Path = PYPROJECT) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["train"]]
    return [r for r in wanted if distribution(r) not in ORCHESTRATOR_ONLY]


def main() -> int:
    sys.stdout.write("".join(f"{r}\n" for r in trainer_requirements()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
