"""The whole training flow in the configurations users really have.

Each case trains the tiny model end to end (two steps) and varies what users vary: where the
dataset is (an absolute path, a relative path, an https URL whose query string carries a
signature, an s3:// URI), which variable names the S3 endpoint (`AWS_ENDPOINT_URL` alone or
`BRIGHTRUN_S3_ENDPOINT_URL` alone), the global storage or the job's own `storage_url`, and the
registry (SQLite, a bare Postgres, the customer's Supabase layout). Four cases cover every
value at least once. After each run the recorded training file opens again through
`Resources` (as a later export opens it), no signature of a signed URL is stored or logged,
and the reaper, reading each job's own storage, leaves the finished job alone.
"""

from __future__ import annotations

import datetime as dt
import http.server
import shutil
import ssl
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from brightrun.storage import sha256_file
from tests.fixtures.http import serve_http
from tests.fixtures.seaweed import SeaweedS3

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SIGNATURE = "X-Amz-Signature=f00dfeedcafe1234"


@dataclass(frozen=True)
class Topology:
    name: str
    dataset: str  # absolute | relative | https | s3
    endpoint_variable: str  # AWS_ENDPOINT_URL | BRIGHTRUN_S3_ENDPOINT_URL
    storage: str  # global-s3 | job-s3 | job-local
    registry: str  # sqlite | postgres | supabase


TOPOLOGIES = [
    Topology("absolute-path", "absolute", "AWS_ENDPOINT_URL", "global-s3", "postgres"),
    Topology("relative-path", "relative", "BRIGHTRUN_S3_ENDPOINT_URL", "job-s3", "sqlite"),
    Topology("signed-https-url", "https", "BRIGHTRUN_S3_ENDPOINT_URL", "global-s3", "supabase"),
    Topology("s3-uri", "s3", "AWS_ENDPOINT_URL", "job-local", "sqlite"),
]


def _self_signed(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


@pytest.fixture
def https_dataset(sample_dataset: Path, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The sample dataset behind https://127.0.0.1 (a self-signed certificate the client trusts
    through SSL_CERT_FILE); yields its URL with a signature in the query, and the cert."""
    served = tmp_path / "served"
    served.mkdir()
    shutil.copy(sample_dataset, served / "brightrun-sample.json")
    cert, key = _self_signed(tmp_path)
    seen: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(served), **kwargs)  # type: ignore[arg-type]

        def log_message(self, *args: object) -> None:
            pass

        def translate_path(self, path: str) -> str:
            seen.append(path)
            if SIGNATURE not in path:  # a signed URL without its signature is refused
                return str(served / "missing")
            return super().translate_path(path)

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    with serve_http(Handler, tls=context) as base:
        yield f"{base}/brightrun-sample.json?X-Amz-Expires=600&{SIGNATURE}", cert


def _registry_text(engine: object) -> str:
    """Every row of the pipeline's tables, as text."""
    from sqlalchemy import text

    out = []
    with engine.connect() as conn:  # type: ignore[attr-defined]
        for table in ("training_files", "training_jobs", "training_job_events", "model_artifacts"):
            out += [repr(tuple(r)) for r in conn.execute(text(f"SELECT * FROM {table}"))]
    return "\n".join(out)


@pytest.mark.parametrize("topology", TOPOLOGIES, ids=[t.name for t in TOPOLOGIES])
def test_training_in_each_topology(
    topology: Topology,
    request: pytest.FixtureRequest,
    prefect_harness: str,
    brightrun_home: Path,
    seaweed: SeaweedS3,
    tiny_model: Path,
    sample_dataset: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from brightrun.registry import open_registry_url
    from brightrun.registry import repository as repo
    from brightrun.resources import Resources
    from brightrun.storage import open_storage
    from cli.training import demo_params
    from flows.train_adapter import train_adapter
    from tasks.reaper import reap_pods_with

    # S3 credentials always; the endpoint under one variable only.
    for name, value in seaweed.env().items():
        if not name.startswith("AWS_ENDPOINT_URL"):
            monkeypatch.setenv(name, value)
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "BRIGHTRUN_S3_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(topology.endpoint_variable, seaweed.endpoint_url)

    run_id = uuid.uuid4().hex[:8]
    global_url = seaweed.storage_url(f"topology-{run_id}/global")
    monkeypatch.setenv("BRIGHTRUN_STORAGE_URL", global_url)
    job_storage_url = {
        "global-s3": None,
        "job-s3": seaweed.storage_url(f"topology-{run_id}/own"),
        "job-local": str(tmp_path / "own-storage"),
    }[topology.storage]

    if topology.registry in ("postgres", "supabase"):
        url = request.getfixturevalue("supabase_url" if topology.registry == "supabase" else "postgres_url")
        open_registry_url(url, auto_upgrade=True).dispose()  # `brightrun db upgrade`
        monkeypatch.setenv("BRIGHTRUN_DATABASE_URL", url)

    if topology.dataset == "absolute":
        dataset = str(sample_dataset)
    elif topology.dataset == "relative":
        workdir = tmp_path / "work"
        (workdir / "data").mkdir(parents=True)
        shutil.copy(sample_dataset, workdir / "data" / "brightrun-sample.json")
        monkeypatch.chdir(workdir)
        dataset = "data/brightrun-sample.json"
    elif topology.dataset == "https":
        dataset, cert = request.getfixturevalue("https_dataset")
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        monkeypatch.setenv("BRIGHTRUN_FETCH_ALLOW_PRIVATE", "true")  # the CDN here is 127.0.0.1
    else:
        source = open_storage(
            seaweed.storage_url(f"topology-{run_id}/uploads"), endpoint_url=seaweed.endpoint_url
        )
        source.put_file("brightrun-sample.json", sample_dataset)
        dataset = source.uri("brightrun-sample.json")

    params = demo_params(tiny_model, max_steps=2)
    params["dataset"] = dataset
    params["checkpoint"] = {"every_steps": 1}
    params["evaluation"] = {"sample_generations": 0, "max_new_tokens": 4}
    if job_storage_url:
        params["storage_url"] = job_storage_url
    state = train_adapter(**params, return_state=True)
    result = state.result(raise_on_failure=False)
    assert not isinstance(result, BaseException), result
    assert result["status"] == "completed"

    with Resources.from_settings() as resources:
        job = repo.get_job(resources.registry, result["job_id"])
        assert job.training_file_id is not None
        training_file = repo.get_training_file(resources.registry, job.training_file_id)
        digest = sha256_file(sample_dataset)
        recorded = training_file.json_file_path
        # The pipeline's own copy, by content hash, in the job's storage: never the caller's string.
        assert recorded.endswith(f"datasets/{digest}.json"), recorded
        assert recorded.startswith(job_storage_url or global_url), recorded
        # It opens again as a later export opens it: through the resources, on the configured endpoint.
        parent, name = recorded.rsplit("/", 1)
        assert resources.open_storage(parent).get_bytes(name) == sample_dataset.read_bytes()
        # The job's files are in the job's own storage; the adapter is registered there.
        assert job.lora_artifact_path.startswith(job_storage_url or global_url)
        assert resources.job_storage(job).exists(f"jobs/{job.id}/adapter/MANIFEST.json")
        # No signature anywhere in the registry.
        assert "Signature" not in _registry_text(resources.registry)
        # The reaper reads this job's own storage and finds nothing to terminate.
        assert reap_pods_with(resources, dry_run=True) == []

    if topology.dataset == "https":
        logs = _flow_run_logs(state.state_details.flow_run_id)
        assert logs and "f00dfeedcafe1234" not in logs


def _flow_run_logs(flow_run_id: object) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return "\n".join(log.message for log in logs)


def test_a_job_started_from_the_apps_training_file_row(
    prefect_harness: str,
    brightrun_home: Path,
    seaweed: SeaweedS3,
    supabase_url: str,
    tiny_model: Path,
    sample_dataset: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The roadmap's start-job: the app's `training_files` row names `json_file_path` in its
    training-files bucket; the job reads it from there, keeps that row as its training file,
    records its split over it, and leaves the app's columns as they were."""
    from brightrun.registry import open_registry_url
    from brightrun.registry import repository as repo
    from brightrun.resources import Resources
    from cli.training import demo_params
    from flows.train_adapter import train_adapter
    from tests.fixtures.postgres import APP_TRAINING_FILE, SUPABASE_USER, dump_app_tables

    for name, value in seaweed.env().items():
        monkeypatch.setenv(name, value)
    run_id = uuid.uuid4().hex[:8]
    monkeypatch.setenv("BRIGHTRUN_STORAGE_URL", seaweed.storage_url(f"app-{run_id}/pipeline"))
    bucket = seaweed.storage_url(f"app-{run_id}/training-files")
    monkeypatch.setenv("BRIGHTRUN_TRAINING_FILES_URL", bucket)
    open_registry_url(supabase_url, auto_upgrade=True).dispose()  # `brightrun db upgrade`
    monkeypatch.setenv("BRIGHTRUN_DATABASE_URL", supabase_url)
    before = dump_app_tables(supabase_url)
    assert before["public.training_files:rows"]  # the app's rows are there to be kept
    with Resources.from_settings() as resources:  # the app uploaded the file to its bucket
        resources.open_storage(bucket).put_file(f"{SUPABASE_USER}/coaching-v1.json", sample_dataset)

    params = demo_params(tiny_model, max_steps=2)
    del params["dataset"]
    params["training_file_id"] = APP_TRAINING_FILE
    params["evaluation"] = {"sample_generations": 0, "max_new_tokens": 4}
    result = train_adapter(**params, return_state=True).result(raise_on_failure=False)
    assert not isinstance(result, BaseException), result
    assert result["status"] == "completed"

    with Resources.from_settings() as resources:
        job = repo.get_job(resources.registry, result["job_id"])
        assert str(job.training_file_id) == APP_TRAINING_FILE
        assert job.lora_artifact_path and job.current_step == 2
        (artifact,) = repo.list_artifacts(resources.registry, training_job_id=job.id)
        assert artifact.deployment_status == "stored" and artifact.file_size_bytes
        splits = repo.exported_conversations(resources.registry)
        assert splits  # this job's split, recorded over the app's row
    after = dump_app_tables(
        supabase_url,
        {k[: -len(":column_names")]: v for k, v in before.items() if k.endswith(":column_names")},
    )
    assert {k: v for k, v in after.items() if k.startswith("public.training_files:rows")} == {
        k: v for k, v in before.items() if k.startswith("public.training_files:rows")
    }
