"""Test fault hooks: the one seam through which tests break or slow a real trainer run.

Read once, from the environment, when the trainer process starts (all unset in production):

- `BRIGHTRUN_TRAINER_FAULT=kill_in_upload:6,kill_after_step:4,sigterm_at_step:3,nan_loss_at_step:2`
  asks for that fault at that step;
- `BRIGHTRUN_TRAINER_FAULT=checkpoint_read_errors:N` makes the first N storage reads of a
  resume fail as an outage would;
- `BRIGHTRUN_TRAINER_STEP_DELAY` / `BRIGHTRUN_TRAINER_UPLOAD_DELAY` (seconds) slow a tiny-model
  run to a GPU-like pace so an external interruption (the fake RunPod's) can land at a chosen
  moment. Sleeping changes no number the run computes.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from brightrun.storage import StorageError

log = logging.getLogger("trainer")

FAULT_VAR = "BRIGHTRUN_TRAINER_FAULT"
STEP_DELAY_VAR = "BRIGHTRUN_TRAINER_STEP_DELAY"
UPLOAD_DELAY_VAR = "BRIGHTRUN_TRAINER_UPLOAD_DELAY"


@dataclass(frozen=True)
class Faults:
    """The faults and delays a test asked for; empty (no effect) in production."""

    at_step: frozenset[tuple[str, int]] = field(default_factory=frozenset)
    step_delay_s: float = 0.0
    upload_delay_s: float = 0.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Faults:
        env = os.environ if env is None else env
        wanted = set()
        for item in filter(None, (part.strip() for part in env.get(FAULT_VAR, "").split(","))):
            kind, _, at = item.partition(":")
            if at.isdigit():
                wanted.add((kind, int(at)))
        return cls(
            at_step=frozenset(wanted),
            step_delay_s=float(env.get(STEP_DELAY_VAR) or 0.0),
            upload_delay_s=float(env.get(UPLOAD_DELAY_VAR) or 0.0),
        )

    def requested(self, name: str, step: int) -> bool:
        if (name, step) in self.at_step:
            log.warning("fault injection: %s at step %d", name, step)
            return True
        return False

    def signal(self, name: str, step: int) -> None:
        """Signal this process at a requested point: real signals, real mid-upload state."""
        if self.requested(name, step):
            os.kill(os.getpid(), signal.SIGTERM if name == "sigterm_at_step" else signal.SIGKILL)
            if name != "sigterm_at_step":
                time.sleep(60)  # SIGKILL is asynchronous on some systems; never go on

    def storage_outage(self, what: str) -> None:
        """Raise as a storage outage would, for the first N reads asked for."""
        global _read_errors_done
        wanted = sum(n for kind, n in self.at_step if kind == "checkpoint_read_errors")
        if _read_errors_done < wanted:
            _read_errors_done += 1
            log.warning("fault injection: storage read of %s fails", what)
            raise StorageError(f"{what}: injected storage outage")

    def pace_step(self) -> None:
        if self.step_delay_s:
            time.sleep(self.step_delay_s)

    def pace_upload(self) -> None:
        if self.upload_delay_s:
            time.sleep(self.upload_delay_s)


_read_errors_done = 0  # storage_outage's count: the one mutable thing, per process

# Read once: the trainer is one process per attempt, and tests set the variables before it starts.
FAULTS = Faults.from_env()
