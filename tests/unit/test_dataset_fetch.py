"""What the dataset stage calls a source, and what it shows of one: never a URL's query."""

from __future__ import annotations

from pathlib import Path

import pytest

from brightrun.errors import InputError
from brightrun.storage import open_storage
from tasks.dataset.fetch import display_name, fetch_source, shown


@pytest.mark.parametrize(
    ("dataset", "name"),
    [
        ("data/brightrun-sample.json", "brightrun-sample.json"),
        ("/abs/path/file.json", "file.json"),
        ("file:///abs/path/file.json", "file.json"),
        ("s3://bucket/incoming/my%20data.json", "my data.json"),
        ("https://h.example/a/b/train.json?X-Amz-Signature=secret&X-Amz-Credential=k", "train.json"),
        ("https://h.example/download?token=secret", "download"),
    ],
)
def test_display_name_is_the_file_name_without_query(dataset: str, name: str) -> None:
    assert display_name(dataset) == name
    assert "secret" not in shown(dataset)


def test_unknown_scheme_is_an_input_error_without_the_query(tmp_path: Path) -> None:
    with pytest.raises(InputError) as info:
        fetch_source("ftp://h/y.json?sig=secret", tmp_path, lambda url: open_storage(url))
    assert "ftp://h/y.json" in str(info.value) and "secret" not in str(info.value)


def test_local_source_is_hashed_and_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "d.json").write_bytes(b"{}")
    monkeypatch.chdir(tmp_path)
    source = fetch_source("d.json", tmp_path / "cache", lambda url: open_storage(url))
    assert source.path == tmp_path / "d.json" and source.size == 2 and source.display_name == "d.json"
    assert source.sha256 == "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
    assert not (tmp_path / "cache").exists()  # a local file is used in place
