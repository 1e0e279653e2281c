"""One operator per job at a time (issue 20): a lease row per job, with an expiry.

A `brightrun resume`, a `brightrun jobs cancel` that ends a job itself, and a flow run that
monitors the job each hold the job's lease while they act on its pods. A second one is
refused while the lease is live ("job X is being resumed by flow run Y since T") and takes
over once it expires (its holder died without releasing it).

Each step is one statement in its own transaction (an INSERT, or an UPDATE conditioned on
the expiry or the holder), so it works through a transaction pooler (PgBouncer in
transaction mode, Supabase's pooler), where session advisory locks do not hold. Times are
the orchestrator's clock: machines sharing a registry should run NTP (a skew shortens or
lengthens a lease by that much).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from brightrun.errors import InputError
from brightrun.registry.models import JobLease, utcnow

log = logging.getLogger(__name__)

DEFAULT_LEASE_SECONDS = 120.0


class JobLeaseHeld(InputError):
    """Another operator holds the job's lease; it names who, since when, and until when."""

    def __init__(self, job_id: str, holder: str, acquired_at: datetime, expires_at: datetime) -> None:
        self.job_id, self.holder, self.acquired_at, self.expires_at = job_id, holder, acquired_at, expires_at
        super().__init__(
            f"job {job_id} is being operated by {holder} since {acquired_at:%Y-%m-%d %H:%M:%S} UTC "
            f"(its lease runs until {expires_at:%H:%M:%S} UTC unless renewed); wait for it to finish, "
            "or try again after the lease expires if that process is gone"
        )


@dataclass(frozen=True)
class Lease:
    job_id: str
    holder: str
    acquired_at: datetime
    expires_at: datetime


def describe_holder(what: str, flow_run_id: str | None = None) -> str:
    """A holder name a person at 2 a.m. can act on: the flow run, else the process."""
    if flow_run_id:
        return f"{what} (flow run {flow_run_id})"
    return f"{what} (pid {os.getpid()} on {socket.gethostname()})"


def current_lease(engine: Engine, job_id: str, now: datetime | None = None) -> Lease | None:
    """The job's live lease, or None when nobody holds one (or it expired)."""
    now = now or utcnow()
    with engine.begin() as conn:
        row = conn.execute(sa.select(JobLease.__table__).where(JobLease.job_id == job_id)).mappings().first()
    if row is None:
        return None
    lease = Lease(
        str(row["job_id"]), str(row["holder"]), _aware(row["acquired_at"]), _aware(row["expires_at"])
    )
    return lease if lease.expires_at > now else None


def acquire(
    engine: Engine,
    job_id: str,
    holder: str,
    *,
    ttl_seconds: float = DEFAULT_LEASE_SECONDS,
    force: bool = False,
    now: datetime | None = None,
) -> Lease:
    """Take the job's lease for `ttl_seconds`, or raise `JobLeaseHeld` while another holder's
    lease is live. The same holder re-acquiring renews it; `force` takes it over regardless
    (a cancel, the operator's stop)."""
    now = now or utcnow()
    expires = now + timedelta(seconds=ttl_seconds)
    table = JobLease.__table__
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.insert(table).values(job_id=job_id, holder=holder, acquired_at=now, expires_at=expires)
            )
        return Lease(job_id, holder, now, expires)
    except sa.exc.IntegrityError:
        pass  # a row exists: take it over only if it expired (or is ours)
    condition = sa.true() if force else sa.or_(table.c.expires_at <= now, table.c.holder == holder)
    with engine.begin() as conn:
        taken = conn.execute(
            sa.update(table)
            .where(table.c.job_id == job_id, condition)
            .values(holder=holder, acquired_at=now, expires_at=expires)
        ).rowcount
    if taken:
        return Lease(job_id, holder, now, expires)
    held = current_lease(engine, job_id, now)
    if held is None:  # released between our two statements: try once more
        return acquire(engine, job_id, holder, ttl_seconds=ttl_seconds, force=force, now=now)
    raise JobLeaseHeld(job_id, held.holder, held.acquired_at, held.expires_at)


def renew(engine: Engine, job_id: str, holder: str, *, ttl_seconds: float = DEFAULT_LEASE_SECONDS) -> bool:
    """Extend our lease; False when it is no longer ours (it expired and someone took it)."""
    table = JobLease.__table__
    with engine.begin() as conn:
        return bool(
            conn.execute(
                sa.update(table)
                .where(table.c.job_id == job_id, table.c.holder == holder)
                .values(expires_at=utcnow() + timedelta(seconds=ttl_seconds))
            ).rowcount
        )


def release(engine: Engine, job_id: str, holder: str) -> None:
    """Give the lease back (only ours: a lease taken over after expiry stays with its new holder)."""
    table = JobLease.__table__
    with engine.begin() as conn:
        conn.execute(sa.delete(table).where(table.c.job_id == job_id, table.c.holder == holder))


class LeaseKeeper:
    """Hold a job's lease for the length of a `with` block, renewing it in the background
    every third of its life, and release it on the way out (a crash lets it expire)."""

    def __init__(
        self,
        engine: Engine,
        job_id: str,
        holder: str,
        *,
        ttl_seconds: float = DEFAULT_LEASE_SECONDS,
        force: bool = False,
    ) -> None:
        self.engine, self.job_id, self.holder = engine, job_id, holder
        self.ttl_seconds, self.force = ttl_seconds, force
        self.lost = threading.Event()  # set when someone else took the lease over
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> LeaseKeeper:
        acquire(self.engine, self.job_id, self.holder, ttl_seconds=self.ttl_seconds, force=self.force)
        self._thread = threading.Thread(target=self._renew_loop, name=f"lease-{self.job_id}", daemon=True)
        self._thread.start()
        return self

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl_seconds / 3):
            try:
                if not renew(self.engine, self.job_id, self.holder, ttl_seconds=self.ttl_seconds):
                    log.error(
                        "job %s: lease lost (another operator took it over); %s", self.job_id, self.holder
                    )
                    self.lost.set()
                    return
            except Exception as exc:  # the registry away: try again; the lease may lapse meanwhile
                log.warning("job %s: could not renew the lease (%s); retrying", self.job_id, exc)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            release(self.engine, self.job_id, self.holder)
        except Exception as error:  # it expires on its own
            log.warning("job %s: could not release the lease (%s); it expires by itself", self.job_id, error)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)
