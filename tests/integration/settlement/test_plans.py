"""What the settlement store's reconciliation reads, as PostgreSQL plans it.

Every reconciliation lists the payouts still in transit.  The test records
that query, then explains it (prepared, as asyncpg runs it, and with the
generic plan forced) on a table where a few pending payouts sit among many
paid or failed ones, and checks it reads only the pending ones by their index.
"""

from __future__ import annotations

import asyncpg

from services.settlement import store
from tests.integration.settlement.conftest import migrate_ledger
from tests.support.plans import indexes_used, plans_as_prepared, recorded_query, rows_touched

SETTLED = 3000
PENDING = ["pay_00003001", "pay_00003002", "pay_00003003"]


# Years of payouts the bank booked or returned, then the few of the last run.
SEED = """
INSERT INTO payouts (payout_id, partner_id, currency, amount, reference, as_of, status)
SELECT 'pay_' || lpad(i::text, 8, '0'), 'ptr_' || (i % 50), 'USD', 1, 'MP-' || i,
       timestamptz '2026-01-01' + i * interval '1 hour',
       CASE WHEN i > $1 THEN 'pending' WHEN i % 10 = 0 THEN 'failed' ELSE 'paid' END
  FROM generate_series(1, $1 + 3) i
"""


async def test_the_payouts_in_transit_are_read_from_their_own_index(fresh_database: str) -> None:
    await migrate_ledger(fresh_database)
    conn: asyncpg.Connection[asyncpg.Record] = await asyncpg.connect(fresh_database)
    try:
        await conn.execute(SEED, SETTLED)
        await conn.execute("ANALYZE payouts")
        found, sql, args = await recorded_query(conn, store.payouts_in_transit)
        assert [payout.payout_id for payout in found] == PENDING
        for plan in await plans_as_prepared(conn, sql, args):
            assert "payouts_pending" in indexes_used(plan), plan
            assert rows_touched(plan, "payouts") <= len(PENDING) * 2, plan
    finally:
        await conn.close()
