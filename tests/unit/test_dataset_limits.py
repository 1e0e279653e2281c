"""Hostile training files (issue 20): a depth bomb, a 2,000-level file, a 200 MB string and
a huge file are each refused by `brightrun prepare` with a located message and exit 2, and
the scan stays in bounded memory (a subprocess under RLIMIT_AS, never a timing)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from brightrun.settings import DatasetLimits, load_settings
from cli.main import app
from tasks.dataset.schema import validate_dataset
from tests.unit.test_dataset_schema import make_conversation, make_file

HEAD = '{"training_file_metadata":{"format_spec":"brightrun-lora-v4"},"conversations":['
MEMORY_CAP = 2 * 1024**3  # address space of the scanning process: far below what the old code took


def depth_bomb(path: Path) -> None:
    path.write_text(HEAD + "[" * 100_000)


def deep_2000(path: Path) -> None:
    deep = '{"a":' * 2000 + "1" + "}" * 2000
    conv = make_conversation("c1", 1)
    conv["training_pairs"][0]["emotional_context"] = "@@"
    path.write_text(json.dumps(make_file([conv])).replace('"@@"', deep))


def huge_string(path: Path) -> None:
    with open(path, "w") as f:
        f.write(HEAD + '{"conversation_metadata":{"conversation_id":"')
        for _ in range(200):
            f.write("x" * 1024**2)  # 200 MB in one string, written without holding it
        f.write('"}}]}')


def huge_file(path: Path) -> None:
    with open(path, "wb") as f:
        f.write(HEAD.encode())
        f.truncate(3 * 1024**3)  # sparse: 3 GB to stat, nothing on disk


HOSTILE: dict[str, tuple[Callable[[Path], None], str]] = {
    "depth_bomb": (depth_bomb, "nested deeper than 64 levels"),
    "deep_2000": (deep_2000, "nested deeper than 64 levels"),
    "huge_string": (huge_string, "a string or token longer than 1000000 characters"),
    "huge_file": (huge_file, "the file is 3221225472 bytes, more than 2147483648"),
}
SETTING = {
    "depth_bomb": "BRIGHTRUN_DATASET_MAX_DEPTH=64",
    "deep_2000": "BRIGHTRUN_DATASET_MAX_DEPTH=64",
    "huge_string": "BRIGHTRUN_DATASET_MAX_STRING_CHARS=1000000",
    "huge_file": "BRIGHTRUN_DATASET_MAX_FILE_BYTES=2147483648",
}

_SCAN_UNDER_CAP = """
import resource, sys
from pathlib import Path
resource.setrlimit(resource.RLIMIT_AS, ({cap}, {cap}))
from tasks.dataset.schema import validate_dataset
result = validate_dataset(Path(sys.argv[1]))
print("\\n".join(result.messages()))
# VmHWM, not ru_maxrss: exec carries the forking parent's high-water mark into ru_maxrss, so
# a child of a large pytest process would report the parent's peak.
hwm = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmHWM"))
print("peak_rss_mb", int(hwm.split()[1]) // 1024)
"""


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_file_is_refused_in_bounded_memory(case: str, tmp_path: Path) -> None:
    make, message = HOSTILE[case]
    path = tmp_path / f"{case}.json"
    make(path)
    proc = subprocess.run(
        [sys.executable, "-c", _SCAN_UNDER_CAP.format(cap=MEMORY_CAP), str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]  # no MemoryError, no RecursionError
    assert message in proc.stdout and SETTING[case] in proc.stdout
    peak = int(proc.stdout.split("peak_rss_mb")[1])
    assert peak < 512, proc.stdout


@pytest.mark.parametrize("case", ["depth_bomb", "deep_2000", "huge_file"])
def test_brightrun_prepare_refuses_it_with_exit_2(case: str, tiny_model: Path, tmp_path: Path) -> None:
    make, message = HOSTILE[case]
    path = tmp_path / f"{case}.json"
    make(path)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["prepare", str(path), "--tokenizer", str(tiny_model), "--out", str(out)]
    )
    assert result.exit_code == 2, result.output
    assert message in result.output and SETTING[case] in result.output
    assert not out.exists()


def test_the_limits_come_from_the_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIGHTRUN_DATASET_MAX_CONVERSATIONS", "1")
    monkeypatch.setenv("BRIGHTRUN_DATASET_MAX_PAIRS", "5")
    limits = load_settings(home=tmp_path).dataset_limits
    assert (limits.max_conversations, limits.max_pairs) == (1, 5)
    path = tmp_path / "two.json"
    path.write_text(json.dumps(make_file([make_conversation("c1", 1), make_conversation("c2", 1)])))
    messages = validate_dataset(path, limits).messages()
    assert any("more than 1 conversations" in m and "after c1" in m for m in messages), messages
    path.write_text(json.dumps(make_file([make_conversation("c1", 6)])))
    messages = validate_dataset(path, limits).messages()
    assert any("more than 5 training pairs" in m for m in messages), messages
    assert validate_dataset(path, DatasetLimits()).ok
