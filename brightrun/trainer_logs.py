"""The trainer's log lines through storage (DESIGN.md §4 addition), both sides of the channel.

A pod's stderr is lost with the pod, so the trainer also writes its log records, a chunk at
a time, as `logs/<attempt>-<n>.jsonl` under the job prefix (object stores do not append, as
for metrics). The orchestrator forwards new chunks to the flow run's logs while the job
runs, and at the end joins every chunk into `training.log` beside the adapter.

Each line of a chunk is one record: `{"t": ISO time, "level": "INFO", "name": logger,
"msg": text (with its traceback)}`. Trainer side: `ship_logs(storage, attempt)`; orchestrator
side: `new_log_chunks`, `read_log_chunk`, `join_log_chunks`.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from brightrun.storage import Storage

LOGS_DIR = "logs"
FULL_LOG = "training.log"
MAX_MESSAGE_CHARS = 8000  # one runaway repr must not make a chunk of megabytes
_QUIET = ("botocore", "boto3", "s3transfer", "urllib3", "filelock", "fsspec")


def log_chunk(attempt: int, n: int) -> str:
    """Relative key of chunk `n` of `attempt` (sorts in writing order)."""
    return f"{LOGS_DIR}/{attempt:03d}-{n:06d}.jsonl"


def render_line(record: dict[str, Any]) -> str:
    """One record as the plain text line of `training.log`."""
    when, level = record.get("t", ""), record.get("level", "INFO")
    return f"{when} {level} {record.get('name', '')}: {record.get('msg', '')}"


class StorageLogHandler(logging.Handler):
    """Buffers log records and writes them as chunks: every `interval_s`, at once for an error
    (so a failure's traceback is stored before the trainer writes `failure.json`), and on close."""

    def __init__(self, storage: Storage, attempt: int, interval_s: float = 2.0, level: int = logging.INFO):
        super().__init__(level)
        self.storage, self.attempt, self.interval_s = storage, attempt, interval_s
        self._buffer: list[dict[str, Any]] = []
        self._chunks = 0
        self._buffered = threading.Lock()  # held only to swap the buffer: emit never waits on I/O
        self._writing = threading.Lock()  # one upload at a time, so chunks keep their order
        self._local = threading.local()  # a storage call that logs must not re-enter
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="log-shipper", daemon=True)
        self.setFormatter(logging.Formatter())

    def start(self) -> None:
        self._thread.start()

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(self._local, "busy", False) or (
            record.name.startswith(_QUIET) and record.levelno < logging.WARNING
        ):
            return
        try:
            msg = record.getMessage()
            if record.exc_info:
                msg = f"{msg}\n{self.formatter.formatException(record.exc_info)}"  # type: ignore[union-attr]
            entry = {
                "t": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
                "level": record.levelname,
                "name": record.name,
                "msg": msg[:MAX_MESSAGE_CHARS],
            }
        except Exception:  # a bad format string in a library must not break training
            return
        with self._buffered:
            self._buffer.append(entry)
        if record.levelno >= logging.ERROR:
            self.flush()

    def flush(self) -> None:
        with self._writing:
            with self._buffered:
                entries, self._buffer = self._buffer, []
            if not entries:
                return
            self._chunks += 1
            body = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries).encode()
            self._local.busy = True
            try:
                self.storage.put_bytes(log_chunk(self.attempt, self._chunks), body)
            except Exception:  # storage down: the lines stay in the pod's stderr; training goes on
                pass
            finally:
                self._local.busy = False

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.flush()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self.flush()
        logging.getLogger().removeHandler(self)
        super().close()


def ship_logs(storage: Storage, attempt: int, interval_s: float = 2.0) -> StorageLogHandler:
    """Copy every INFO+ record of this process to storage chunks; `close()` it at exit."""
    handler = StorageLogHandler(storage, attempt, interval_s)
    logging.getLogger().addHandler(handler)
    handler.start()
    return handler


# ---------------------------------------------------------------- orchestrator side


def new_log_chunks(storage: Storage, job_prefix: str, seen: set[str]) -> list[str]:
    """Keys of chunks not in `seen`, in writing order (attempt, then chunk number)."""
    keys = storage.list(f"{job_prefix.rstrip('/')}/{LOGS_DIR}/")
    return sorted(k for k in keys if k.endswith(".jsonl") and k not in seen)


def read_log_chunk(storage: Storage, key: str) -> list[dict[str, Any]]:
    records = []
    for line in storage.get_bytes(key).decode("utf-8", errors="replace").splitlines():
        if line.strip():
            try:
                records.append(json.loads(line))
            except ValueError:
                records.append({"level": "INFO", "name": "trainer", "msg": line})
    return records


def iter_log_lines(storage: Storage, job_prefix: str) -> Iterator[str]:
    for key in new_log_chunks(storage, job_prefix, set()):
        try:
            records = read_log_chunk(storage, key)
        except Exception:
            continue
        for record in records:
            yield render_line(record)


def join_log_chunks(storage: Storage, job_prefix: str) -> str | None:
    """Write every chunk, in order, as `training.log` under the job prefix; its URI, or None
    when the trainer left no log."""
    text = "\n".join(iter_log_lines(storage, job_prefix))
    if not text:
        return None
    key = f"{job_prefix.rstrip('/')}/{FULL_LOG}"
    storage.put_bytes(key, (text + "\n").encode())
    return storage.uri(key)
