"""The TypeScript the README gives the app picks the same arm as `brightrun.ab.pick_served_name`
(run with Node after its type annotations are stripped; skipped without Node)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from brightrun.ab import pick_served_name

README = Path(__file__).resolve().parents[2] / "README.md"


def _readme_typescript() -> str:
    text = README.read_text()
    section = text[text.index("## A/B tests") :]
    return section[section.index("```ts\n") + 6 : section.index("```", section.index("```ts\n") + 6)]


def test_the_readmes_typescript_matches_python(tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node not installed")
    source = _readme_typescript()
    js = re.sub(r"^type Route = .*$", "", source, flags=re.M)
    js = re.sub(r": (string|number|Route\[\])", "", js)
    routes = [
        {"served_name": "coach-v2-1a2b3c4d", "share_percent": 10},
        {"served_name": "coach-v1-9f8e7d6c", "share_percent": 90},
    ]
    users = [str(uuid.UUID(int=i * 7919 + 5)) for i in range(500)] + ["user@example.com", "ünïcode"]
    script = tmp_path / "pick.mjs"
    script.write_text(
        js + f"\nconst routes = {json.dumps(routes)};\n"
        f"console.log(JSON.stringify({json.dumps(users)}.map((u) => pickModel(u, routes))));\n"
    )
    out = subprocess.run([node, str(script)], capture_output=True, text=True, timeout=60, check=True).stdout
    shares = [(r["served_name"], r["share_percent"]) for r in routes]
    assert json.loads(out) == [pick_served_name(u, shares) for u in users]
