"""What every pod of a job costs, counted once (DESIGN.md §3, §8).

Pure bookkeeping. A pod is billed from its creation until it ends; the provider's own
figure (`runtime.uptimeInSeconds`, read while the pod runs) is the base, and only the
time after the last such reading is estimated:

- a pod we terminate ends when the provider confirms the termination;
- a pod that ended by itself (spot interruption, trainer exit) ends between the last time
  it was seen running and the first time it was seen gone: at the trainer's last sign of
  life when we have one inside that window, else half-way.

A pod is settled once: its bill is final and recorded (a `pod_billed` event keyed by the
pod id), so a resumed job counts a pod of an earlier run once, and never an interrupted
pod twice. Times are seconds of one wall clock (`time.time` in production), so the
trainer's timestamps can narrow the end of a pod.
"""

from __future__ import annotations

from dataclasses import dataclass

from brightrun.compute import PodInfo, PodState


@dataclass
class PodBill:
    pod_id: str
    attempt: int
    cost_per_hr: float
    gpu_count: int = 1
    created_at: float | None = None  # None: a pod of an earlier run, first seen now
    uptime: float = 0.0  # the provider's uptime at its last running reading
    uptime_read_at: float | None = None
    ended_at: float | None = None
    seconds: float = 0.0  # final once settled
    settled: bool = False
    recorded: bool = False  # its `pod_billed` event was written

    def billed_seconds(self, now: float) -> float:
        if self.settled:
            return self.seconds
        end = self.ended_at if self.ended_at is not None else now
        if self.uptime_read_at is not None:
            return self.uptime + max(0.0, end - self.uptime_read_at)
        if self.created_at is not None:
            return max(0.0, end - self.created_at)
        return 0.0

    def as_payload(self) -> dict[str, float | int | str]:
        return {
            "pod_id": self.pod_id,
            "attempt": self.attempt,
            "seconds": round(self.seconds, 3),
            "cost_per_hr": self.cost_per_hr,
            "gpu_count": self.gpu_count,
            "usd": round(self.cost_per_hr * self.seconds / 3600, 6),
        }


class CostLedger:
    """The bills of every pod of one job, this run's and earlier runs'."""

    def __init__(self, earlier: list[PodBill] | None = None) -> None:
        self.pods: dict[str, PodBill] = {bill.pod_id: bill for bill in earlier or []}

    def opened(self, info: PodInfo, *, attempt: int, gpu_count: int, now: float, created: bool) -> PodBill:
        """A pod we just created (`created`), or one of an earlier run we found still there."""
        bill = self.pods.get(info.pod_id)
        if bill is None:
            bill = PodBill(info.pod_id, attempt, info.cost_per_hr, gpu_count, now if created else None)
            self.pods[info.pod_id] = bill
        self.observe(info, now)
        return bill

    def observe(self, info: PodInfo, now: float, *, last_alive: float | None = None) -> None:
        bill = self.pods.get(info.pod_id)
        if bill is None or bill.settled:
            return
        if info.cost_per_hr:
            bill.cost_per_hr = info.cost_per_hr
        if info.state == PodState.running and info.uptime_seconds > 0:
            bill.uptime, bill.uptime_read_at = info.uptime_seconds, now
        elif info.state in (PodState.exited, PodState.terminated) and bill.ended_at is None:
            bill.ended_at = self._ended_between(bill, now, last_alive)

    def terminated(self, pod_id: str, now: float) -> PodBill | None:
        """The provider confirmed the termination at `now`: the pod's bill is final."""
        bill = self.pods.get(pod_id)
        if bill is None or bill.settled:
            return None
        if bill.ended_at is None:
            bill.ended_at = now
        bill.seconds = bill.billed_seconds(now)
        bill.settled = True
        return bill

    def forget_unknown_end(self, pod_id: str) -> PodBill | None:
        """A pod of an earlier run that is gone: bill what is known of it, and settle."""
        bill = self.pods.get(pod_id)
        if bill is None or bill.settled:
            return None
        bill.seconds = bill.billed_seconds(bill.ended_at or bill.uptime_read_at or bill.created_at or 0.0)
        bill.settled = True
        return bill

    @staticmethod
    def _ended_between(bill: PodBill, seen_gone: float, last_alive: float | None) -> float:
        start = bill.uptime_read_at if bill.uptime_read_at is not None else bill.created_at
        if start is None:
            return seen_gone
        if last_alive is not None and start <= last_alive <= seen_gone:
            return last_alive
        return start + (seen_gone - start) / 2

    def totals(self, now: float) -> tuple[float, float]:
        """(USD, GPU hours) so far over every pod."""
        usd = sum(b.cost_per_hr * b.billed_seconds(now) / 3600 for b in self.pods.values())
        hours = sum(b.gpu_count * b.billed_seconds(now) / 3600 for b in self.pods.values())
        return round(usd, 6), round(hours, 6)

    def unsettled(self) -> list[str]:
        return [pod_id for pod_id, bill in self.pods.items() if not bill.settled]
