"""The recovery strategy, apart from the loop that runs attempts (as SkyPilot splits them).

Pure decisions: whether an interrupted job gets a replacement pod, and what the capacity
plan sees as the job's interruption count (on-demand after N, tasks/provision.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from brightrun.spec import ProvisioningPolicy


@dataclass(frozen=True)
class RecoveryPolicy:
    max_restarts: int  # replacements one monitor run may start after interruptions
    api_outage_patience_seconds: float  # how long an unreachable provider API is waited out

    @classmethod
    def from_provisioning(cls, policy: ProvisioningPolicy) -> RecoveryPolicy:
        return cls(
            max_restarts=policy.max_restarts,
            api_outage_patience_seconds=policy.api_outage_patience_seconds,
        )

    def replace_after_interruption(self, restarts_this_run: int) -> bool:
        """True while this run has replacements left. A resume starts with a fresh allowance
        (its first attempt replaces the dead one and is not counted against it)."""
        return restarts_this_run < self.max_restarts

    @staticmethod
    def retry_count(attempt: int) -> int:
        """Every attempt after a job's first replaces an interrupted one: the count the bill sees."""
        return max(0, attempt - 1)
