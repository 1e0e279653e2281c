"""Job leases through PgBouncer in transaction mode (Supabase's pooler): no session state."""

from __future__ import annotations

import threading

import pytest

from brightrun.registry import leases, make_engine, upgrade

pytestmark = pytest.mark.integration


def test_leases_through_the_transaction_pooler(supabase_db) -> None:
    upgrade(make_engine(supabase_db.direct_url))
    engine = make_engine(supabase_db.pooler_url)
    try:
        winners: list[str] = []
        barrier = threading.Barrier(4)

        def take(name: str) -> None:
            barrier.wait()
            try:
                leases.acquire(engine, "job-p", name, ttl_seconds=60)
                winners.append(name)
            except leases.JobLeaseHeld:
                pass

        threads = [threading.Thread(target=take, args=(f"resume {i}",)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(winners) == 1
        with pytest.raises(leases.JobLeaseHeld, match=winners[0]):
            leases.acquire(engine, "job-p", "resume late")
        assert leases.renew(engine, "job-p", winners[0]) is True
        leases.release(engine, "job-p", winners[0])
        assert leases.acquire(engine, "job-p", "resume late").holder == "resume late"
    finally:
        engine.dispose()
