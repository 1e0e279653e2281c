"""The settings object: env prefix, config file, defaults, secrets that never print."""

from __future__ import annotations

from pathlib import Path

import pytest

from brightrun.settings import ComputeBackend, load_settings


def test_embedded_defaults(brightrun_home: Path) -> None:
    s = load_settings()
    assert s.home == brightrun_home
    assert s.resolved_storage_url == str(brightrun_home / "storage")
    assert s.resolved_database_url == f"sqlite:///{brightrun_home / 'registry.db'}"
    assert s.compute is ComputeBackend.local
    assert s.cache_dir == brightrun_home / "cache"


def test_env_prefix_and_explicit_overrides(brightrun_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIGHTRUN_STORAGE_URL", "s3://bucket/prefix")
    monkeypatch.setenv("BRIGHTRUN_COMPUTE", "runpod")
    s = load_settings()
    assert s.resolved_storage_url == "s3://bucket/prefix" and s.compute is ComputeBackend.runpod
    assert load_settings(compute="local").compute is ComputeBackend.local


def test_config_file_has_lowest_precedence(brightrun_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    brightrun_home.mkdir(parents=True)
    (brightrun_home / "config.yaml").write_text("storage_url: /data/store\ncompute: runpod\n")
    monkeypatch.setenv("BRIGHTRUN_COMPUTE", "local")
    s = load_settings()
    assert s.resolved_storage_url == "/data/store" and s.compute is ComputeBackend.local


def test_explicit_config_file_must_exist(
    brightrun_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("BRIGHTRUN_CONFIG", str(tmp_path / "missing.yaml"))
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_settings()


def test_secrets_never_print(brightrun_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNPOD_API_KEY", "rp-very-secret")
    monkeypatch.setenv("HF_TOKEN", "hf-very-secret")
    monkeypatch.setenv("BRIGHTRUN_DATABASE_URL", "postgresql+psycopg://u:pw-secret@db/x")
    s = load_settings()
    shown = repr(s) + str(s) + s.model_dump_json()
    for secret in ("rp-very-secret", "hf-very-secret", "pw-secret"):
        assert secret not in shown
    assert s.runpod_api_key is not None and s.runpod_api_key.get_secret_value() == "rp-very-secret"
    assert s.resolved_database_url.endswith("@db/x")


def test_bad_storage_url_rejected(brightrun_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIGHTRUN_STORAGE_URL", "gs://bucket/x")
    with pytest.raises(ValueError, match="s3://bucket/prefix"):
        load_settings()


def test_s3_endpoint_falls_back_to_aws_env(brightrun_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:8333")
    assert load_settings().resolved_s3_endpoint_url == "http://127.0.0.1:8333"
    monkeypatch.setenv("BRIGHTRUN_S3_ENDPOINT_URL", "http://seaweed:8333")
    assert load_settings().resolved_s3_endpoint_url == "http://seaweed:8333"
