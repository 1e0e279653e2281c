"""Files the pipeline downloads or stores get the user's umask, not mkstemp's 0600."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from brightrun.storage import LocalStorage


@pytest.fixture
def umask_027() -> Iterator[None]:
    old = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(old)


def test_downloaded_and_stored_files_follow_the_umask(tmp_path: Path, umask_027: None) -> None:
    storage = LocalStorage(tmp_path / "store")
    storage.put_bytes("jobs/j/adapter/adapter_model.safetensors", b"weights")
    stored = tmp_path / "store" / "jobs/j/adapter/adapter_model.safetensors"
    dest = tmp_path / "out" / "adapter_model.safetensors"
    storage.get_file("jobs/j/adapter/adapter_model.safetensors", dest)
    assert stat.S_IMODE(stored.stat().st_mode) == 0o640
    assert stat.S_IMODE(dest.stat().st_mode) == 0o640
