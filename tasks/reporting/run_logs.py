"""The run's logs: library loggers into Prefect, and the trainer's own lines forwarded.

`TrainerLogForwarder` carries the trainer's log lines (`logs/*.jsonl` in the job's storage,
brightrun/trainer_logs.py) into the flow run's logs, and stores the whole log as `training.log`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from brightrun.storage import Storage

log = logging.getLogger("brightrun.reporting")

LIBRARY_LOGGERS = ("transformers", "peft", "trl", "brightrun", "trainer", "tasks", "flows")
OWN_LOGGERS = ("brightrun", "trainer", "tasks", "flows")


def attach_library_loggers(names: Sequence[str] = LIBRARY_LOGGERS) -> None:
    """Send library log records (transformers, peft...) to the Prefect run logs.

    Same effect as PREFECT_LOGGING_EXTRA_LOGGERS, without depending on it being set
    before Prefect configured logging: copy the handlers of `prefect.extra`.
    """
    handlers = logging.getLogger("prefect.extra").handlers
    for name in names:
        logger = logging.getLogger(name)
        # Our own loggers speak at INFO; libraries keep their level (transformers: WARNING).
        if name in OWN_LOGGERS and logger.level in (logging.NOTSET, logging.WARNING):
            logger.setLevel(logging.INFO)
        for handler in handlers:
            if handler not in logger.handlers:
                logger.addHandler(handler)


def run_log_only_logger(name: str = "brightrun.trainer_log") -> logging.LoggerAdapter[logging.Logger]:
    """A logger whose records go to the current Prefect run's logs (the API) but not to this
    process's console: the trainer's own lines belong in the UI, not between the terminal's
    progress lines. Outside a run it is an ordinary logger."""
    logger = logging.getLogger(name)
    extra: dict[str, Any] = {}
    try:
        from prefect.logging.handlers import APILogHandler
        from prefect.logging.loggers import get_run_logger

        run_logger = get_run_logger()
        extra = dict(getattr(run_logger, "extra", None) or {})
        api = [h for h in logging.getLogger("prefect.flow_runs").handlers if isinstance(h, APILogHandler)]
        if api:
            logger.propagate = False
            logger.setLevel(logging.DEBUG)
            for handler in api:
                if handler not in logger.handlers:
                    logger.addHandler(handler)
    except Exception:  # not in a run (a test, a script): plain logging
        pass
    return logging.LoggerAdapter(logger, extra)


_LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARNING": logging.WARNING, "ERROR": logging.ERROR}


@dataclass
class TrainerLogForwarder:
    """Forwards the trainer's log chunks (brightrun/trainer_logs.py) into the run's logs.

    `poll()` reads the chunks it has not seen (cheap: one list call when nothing is new);
    `running(interval_s)` does that on a thread while the training runs; `publish()` joins
    every chunk into `training.log` and returns its URI (call it on every exit path).
    """

    storage: Storage
    job_id: str
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger] = field(
        default_factory=lambda: logging.getLogger("brightrun.trainer_log")
    )
    seen: set[str] = field(default_factory=set)
    forwarded: int = 0

    @property
    def job_prefix(self) -> str:
        return f"jobs/{self.job_id}"

    def poll(self) -> int:
        from brightrun.trainer_logs import new_log_chunks, read_log_chunk

        count = 0
        try:
            keys = new_log_chunks(self.storage, self.job_prefix, self.seen)
        except Exception as exc:
            log.debug("trainer log chunks not listed: %s", exc)
            return 0
        for key in keys:
            try:
                records = read_log_chunk(self.storage, key)
            except Exception as exc:  # half-visible: next poll
                log.debug("trainer log chunk %s not read yet: %s", key, exc)
                continue
            self.seen.add(key)
            for record in records:
                level = _LEVELS.get(str(record.get("level", "INFO")).upper(), logging.INFO)
                self.logger.log(level, "%s: %s", record.get("name", "trainer"), record.get("msg", ""))
                count += 1
        self.forwarded += count
        return count

    @contextlib.contextmanager
    def running(self, interval_s: float = 2.0) -> Iterator[TrainerLogForwarder]:
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(interval_s):
                self.poll()

        thread = threading.Thread(target=loop, name="trainer-log-forwarder", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join(timeout=30)
            self.poll()  # the last lines (a failure's traceback) before the run ends

    def publish(self) -> str | None:
        """`training.log` (every chunk, in order) under the job prefix; its URI or None."""
        from brightrun.trainer_logs import join_log_chunks

        try:
            return join_log_chunks(self.storage, self.job_prefix)
        except Exception as exc:
            log.warning("job %s: trainer log not stored (%s)", self.job_id, exc)
            return None


@contextlib.contextmanager
def forward_trainer_logs(
    storage: Storage, job_id: str, interval_s: float = 2.0
) -> Iterator[TrainerLogForwarder]:
    """`with forward_trainer_logs(storage, job_id):` around the training: the trainer's lines
    appear in this run's logs as it runs (not on the console); `.publish()` after it."""
    forwarder = TrainerLogForwarder(storage, job_id, run_log_only_logger())
    with forwarder.running(interval_s):
        yield forwarder
