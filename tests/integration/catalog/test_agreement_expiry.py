"""Agreement expiry runs on the shared durable timers.

Granting with ``expires_at`` schedules the timer, revoking cancels it, and
replicas firing expiries share the work without waiting for each other.  The
replicas here are extra timer loops on the catalog's database whose clock the
test moves; the service's own loop, on the real clock, finds none of these
timers due (they are an hour away).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from services.catalog import handlers
from shared import db
from shared.timers import TimerLoop
from tests.integration.catalog.conftest import Catalog
from tests.support.clock import MovableClock
from tests.support.waiting import wait_for


async def test_granting_with_an_expiry_schedules_its_timer_and_revoking_cancels_it(
    catalog: Catalog,
) -> None:
    isv = await catalog.onboard_partner("isv")
    msp = await catalog.onboard_partner("managed_service")
    expires_at = datetime.now(UTC) + timedelta(days=3)
    expiring = await catalog.grant(isv, msp, expires_at=expires_at)
    open_ended = await catalog.grant(isv, msp)
    async with catalog.database() as conn:
        scheduled = await conn.fetch(
            "SELECT key, due_at FROM timers WHERE kind = $1 AND key = ANY($2::text[])",
            handlers.AGREEMENT_EXPIRY,
            [expiring["id"], open_ended["id"]],
        )
        assert [(row["key"], row["due_at"]) for row in scheduled] == [(expiring["id"], expires_at)]

        revoked = await catalog.call(
            "POST", f"/v1/agreements/{expiring['id']}/revoke", token=isv.token
        )
        assert revoked.expect(200)["status"] == "revoked"
        left = await conn.fetchval("SELECT count(*) FROM timers WHERE key = $1", expiring["id"])
        assert left == 0


async def test_replicas_expire_agreements_once_and_never_wait_for_each_other(
    catalog: Catalog,
) -> None:
    isv = await catalog.onboard_partner("isv")
    msp = await catalog.onboard_partner("managed_service")
    soon = datetime.now(UTC) + timedelta(hours=1)
    first = await catalog.grant(isv, msp, expires_at=soon)
    second = await catalog.grant(isv, msp, expires_at=soon + timedelta(seconds=1))
    clock = MovableClock(soon + timedelta(minutes=1))

    pools = [await db.create_pool(catalog.database_url, min_size=1, max_size=2) for _ in "ab"]
    blocked, free = (TimerLoop(pool, handlers.timer_handlers(clock), clock=clock) for pool in pools)
    stuck: asyncio.Task[int] | None = None
    try:
        async with catalog.database() as holder, catalog.database() as monitor:
            async with holder.transaction():
                # The first expiry, due first, stops at the agreement's row lock.
                await holder.execute(
                    "SELECT 1 FROM agreements WHERE id = $1 FOR UPDATE", first["id"]
                )
                stuck = asyncio.create_task(blocked.fire_due())

                async def expiry_waits() -> bool:
                    waiting: int = await monitor.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                        " AND wait_event_type = 'Lock' AND query LIKE '%FROM agreements%'"
                    )
                    return waiting == 1

                await wait_for(expiry_waits, message="the first expiry never reached the lock")
                # The other replica skips the claimed timer and fires the next one meanwhile.
                assert await asyncio.wait_for(free.fire_due(), 10) == 1
                assert not stuck.done()
                statuses = await monitor.fetch(
                    "SELECT id, status FROM agreements WHERE id = ANY($1::text[]) ORDER BY id",
                    [first["id"], second["id"]],
                )
                assert {row["id"]: row["status"] for row in statuses} == {
                    first["id"]: "active",
                    second["id"]: "expired",
                }
            assert await asyncio.wait_for(stuck, 10) == 1
            assert await free.fire_due() == 0

            expired_events = await monitor.fetch(
                "SELECT key, count(*) AS n FROM outbox"
                " WHERE event_type = 'catalog.agreement.expired' AND key = ANY($1::text[])"
                " GROUP BY key",
                [first["id"], second["id"]],
            )
            assert {row["key"]: row["n"] for row in expired_events} == {
                first["id"]: 1,
                second["id"]: 1,
            }
            ended_at = await monitor.fetchval(
                "SELECT ended_at FROM agreements WHERE id = $1", first["id"]
            )
            assert ended_at == soon
    finally:
        if stuck is not None and not stuck.done():
            stuck.cancel()
            await asyncio.gather(stuck, return_exceptions=True)
        for pool in pools:
            await pool.close()
