"""Job leases (issue 20, item 5): one operator per job at a time, on SQLite."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest

from brightrun.registry import leases, make_engine, upgrade
from brightrun.registry.models import utcnow


@pytest.fixture
def engine(tmp_path: Path):
    engine = make_engine(f"sqlite:///{tmp_path / 'r.db'}")
    upgrade(engine)
    yield engine
    engine.dispose()


def test_a_second_holder_is_refused_while_the_lease_is_live_and_takes_over_after(engine) -> None:
    now = utcnow()
    first = leases.acquire(engine, "job-1", "resume (flow run A)", ttl_seconds=60, now=now)
    with pytest.raises(
        leases.JobLeaseHeld, match=r"job job-1 is being operated by resume \(flow run A\) since"
    ):
        leases.acquire(
            engine, "job-1", "resume (flow run B)", ttl_seconds=60, now=now + timedelta(seconds=30)
        )
    assert leases.current_lease(engine, "job-1", now + timedelta(seconds=30)).holder == first.holder
    taken = leases.acquire(
        engine, "job-1", "resume (flow run B)", ttl_seconds=60, now=now + timedelta(seconds=61)
    )
    assert taken.holder == "resume (flow run B)"
    # The old holder's renewal and release no longer touch the new holder's lease.
    assert leases.renew(engine, "job-1", "resume (flow run A)") is False
    leases.release(engine, "job-1", "resume (flow run A)")
    assert leases.current_lease(engine, "job-1", now + timedelta(seconds=62)).holder == "resume (flow run B)"
    leases.release(engine, "job-1", "resume (flow run B)")
    assert leases.current_lease(engine, "job-1") is None
    leases.acquire(engine, "job-1", "resume (flow run C)")  # a released lease is free at once


def test_the_same_holder_renews_and_force_takes_over(engine) -> None:
    leases.acquire(engine, "job-2", "flow run A", ttl_seconds=60)
    again = leases.acquire(engine, "job-2", "flow run A", ttl_seconds=600)
    assert again.expires_at - again.acquired_at == timedelta(seconds=600)
    forced = leases.acquire(engine, "job-2", "jobs cancel", force=True)
    assert leases.current_lease(engine, "job-2").holder == forced.holder == "jobs cancel"
    assert leases.acquire(engine, "other-job", "flow run A").job_id == "other-job"  # per job


def test_concurrent_acquires_give_exactly_one_holder(engine) -> None:
    winners: list[str] = []
    refused: list[str] = []
    barrier = threading.Barrier(6)

    def take(name: str) -> None:
        barrier.wait()
        try:
            leases.acquire(engine, "job-3", name)
            winners.append(name)
        except leases.JobLeaseHeld:
            refused.append(name)

    threads = [threading.Thread(target=take, args=(f"resume {i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1 and len(refused) == 5


def test_the_keeper_renews_in_the_background_and_releases(engine) -> None:
    with leases.LeaseKeeper(engine, "job-4", "flow run A", ttl_seconds=0.6) as keeper:
        import time

        time.sleep(1.0)  # longer than the lease: only renewal keeps it
        assert leases.current_lease(engine, "job-4").holder == "flow run A"
        with pytest.raises(leases.JobLeaseHeld):
            leases.acquire(engine, "job-4", "flow run B")
        assert not keeper.lost.is_set()
    assert leases.current_lease(engine, "job-4") is None
