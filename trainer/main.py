"""The trainer process: `python -m trainer --spec URI`.

The process around one attempt: arguments, logging, the spec, the attempt number, the
reporter, and the failure marker on the way out; the attempt itself is
`trainer.run.TrainingRun` (`setup()` builds, `train()` runs). Everything the
orchestrator learns comes through storage.

Attempt number: `BRIGHTRUN_ATTEMPT` when the orchestrator sets it, else one more than
the highest attempt an earlier process left in storage (status.json, events, metrics).
Local scratch space: `<BRIGHTRUN_WORK_DIR or the temp dir>/brightrun-<job_id>`, one fixed
path per job so an attempt that was SIGKILLed leaves nothing the next one does not reuse;
removed on every exit the process lives to see.

Several GPUs: under torchrun (`python -m torch.distributed.run --standalone
--nproc-per-node=N -m trainer --spec URI`) every rank trains its share of each step
(trainer/distributed.py); only rank 0 writes to storage (status, metrics, events,
checkpoints, adapter, result); every rank reads the checkpoint it resumes from.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import warnings

from brightrun import layout
from brightrun.protocol import TrainerPhase, TrainerResult
from brightrun.spec import parse_spec
from brightrun.storage import Storage, open_storage, split_uri
from trainer import distributed
from trainer.heartbeat import QuietReporter, Reporter, last_reported_step, previous_attempts
from trainer.run import Signals, TrainingRun, remove_workdir

log = logging.getLogger("trainer")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m trainer", description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True, help="URI of the job's spec.json (a path or s3://...)")
    return parser.parse_args(argv)


def _setup_logging() -> None:
    # Library loggers (transformers, peft) and ours all go to stderr: the pod log.
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.captureWarnings(True)
    # bitsandbytes on an AVX512-BF16 CPU tries the optional `kernels` package, which would fetch
    # a faster 4-bit CPU kernel from the Hub at run time; without it the built-in CPU path is
    # used, correctly. Its warning says nothing an operator can act on (README: Known noise).
    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(
        lambda record: "kernels" not in record.getMessage()
    )
    # Known, harmless noise from the libraries on every run (deprecation notices we cannot act on).
    for pattern in (
        r".*gradient_checkpointing.* is deprecated",
        r".*is_gradient_checkpointing.* is deprecated",
        r".*an autograd kernel was not registered.*",
    ):
        warnings.filterwarnings("ignore", message=pattern)
    try:
        import transformers

        transformers.utils.logging.set_verbosity_warning()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - the train extra is missing; main() reports it
        pass


def _setup_storage(spec_uri: str) -> tuple[Storage, str]:
    parent, name = split_uri(spec_uri)
    endpoint = os.environ.get("BRIGHTRUN_S3_ENDPOINT_URL") or None
    return open_storage(parent, endpoint_url=endpoint), name


def _setup_attempt(storage: Storage) -> int:
    explicit = os.environ.get("BRIGHTRUN_ATTEMPT")
    if explicit and explicit.isdigit() and int(explicit) >= 1:
        return int(explicit)
    return previous_attempts(storage) + 1


def _spec_failure(storage: Storage, exc: Exception) -> int:
    """The spec itself is unreadable: still leave failure.json where the orchestrator looks."""
    from brightrun.protocol import TrainerFailure

    log.error("cannot read the job spec: %s", exc)
    failure = TrainerFailure(
        job_id=storage.url.rstrip("/").rsplit("/", 1)[-1],
        phase=TrainerPhase.starting,
        error=str(exc),
        error_type=type(exc).__name__,
    )
    with contextlib.suppress(Exception):
        storage.put_bytes(layout.FAILURE, failure.model_dump_json(indent=2).encode())
    return 2


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    signals = Signals()
    signals.install()  # first: a SIGTERM during start-up is honoured too
    _setup_logging()
    world = distributed.world_from_env()
    storage, spec_name = _setup_storage(args.spec)
    try:
        spec = parse_spec(storage.get_bytes(spec_name))
    except Exception as exc:
        return _spec_failure(storage, exc) if world.is_main else 2
    if storage.exists(layout.RESULT):
        result = TrainerResult.model_validate_json(storage.get_bytes(layout.RESULT))
        message = (
            f"job {spec.job_id} is already finished ({result.steps} steps, adapter at {layout.ADAPTER_DIR}/)"
        )
        log.info(message)
        if world.is_main:
            print(message)
        return 0
    attempt = _setup_attempt(storage)
    from brightrun.trainer_logs import ship_logs

    # Log lines reach the flow run's logs through storage (rank 0's; the pod log has them all).
    shipped_log = ship_logs(storage, attempt) if world.is_main else None
    previous_step = last_reported_step(storage)
    # Rank 0 speaks for all ranks; the others make the same calls and write nothing.
    reporter_class = Reporter if world.is_main else QuietReporter
    reporter = reporter_class(storage, spec.job_id, attempt, spec.heartbeat_seconds)
    if world.is_main and storage.exists(layout.FAILURE):
        log.warning("a failure marker of an earlier attempt exists; this attempt replaces it")
        storage.delete(layout.FAILURE)
    reporter.phase(TrainerPhase.starting)
    reporter.start()
    try:
        distributed.start(world)
        run_class = TrainingRun
        if spec.training.objective != "sft":
            from trainer.preference_run import PreferenceTrainingRun as run_class
        run = run_class(spec, storage, reporter, signals, world)
        run.setup(previous_step)
        run.train()
    except Exception as exc:
        log.exception("job %s failed (rank %d of %d)", spec.job_id, world.rank, world.size)
        reporter.stop()
        try:
            reporter.flush_metrics()
        finally:
            reporter.failure(exc)
        return 1
    finally:
        reporter.stop()
        if shipped_log is not None:
            shipped_log.close()
        remove_workdir(spec, storage, world)
        distributed.stop(world)
    return 0
