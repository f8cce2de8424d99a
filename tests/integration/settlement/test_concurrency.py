"""Chunks of two consumer instances, payout runs and reconciliations, all at once.

Booking postings locks the balances the roll-up trigger keeps: the house
accounts every chunk moves, each partner's accounts, each order's row.  Every
writer books with one postings statement in key order, so none may deadlock
another, and what the ledger keeps must still be what its postings sum to.
"""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta

from services.settlement import handlers
from services.settlement.handlers import PayoutMade
from services.settlement.reconciliation import BankLine
from shared import db
from shared.ids import new_id
from tests.integration.settlement.conftest import (
    assert_balances_follow_postings,
    book,
)
from tests.integration.settlement.order_events import OrderEvent, OrderScript, Part

# Events occur now (the scripts stamp them): every run pays what they made available.
NOW = datetime.now(UTC) + timedelta(days=1)
ROUNDS = 5


async def run_payouts(pool: db.Pool, as_of: datetime) -> list[PayoutMade]:
    async with db.unit_of_work(pool) as conn:
        return await handlers.run_payouts(conn, as_of, NOW)


async def reconcile(pool: db.Pool, lines: list[BankLine]) -> None:
    async with db.unit_of_work(pool) as conn:
        await handlers.reconcile(conn, lines)


class Orders:
    """Fulfilled orders of a few partners, and more events for them on demand."""

    def __init__(self, partners: list[str], rng: random.Random) -> None:
        self.partners = partners
        self.rng = rng
        self.scripts: list[tuple[OrderScript, Part]] = []

    def new(self, count: int) -> list[OrderEvent]:
        events: list[OrderEvent] = []
        for _ in range(count):
            owner, isv = self.rng.sample(self.partners, 2)
            script = OrderScript(customer_id=new_id("cus"), owner_id=owner)
            isv_part, own_part = Part(isv, "isv", 7_000), Part(owner, "managed_service", 10_000)
            charges = [script.charge(isv_part, 10_000, 0), script.charge(own_part, 5_000, 1)]
            events += [script.placed(15_000), script.confirmed(charges), script.fulfilled()]
            self.scripts.append((script, own_part))
        return events

    def usage(self, scripts: list[tuple[OrderScript, Part]]) -> list[OrderEvent]:
        """Usage on fulfilled orders: available at once, on orders a payout already paid."""
        return [
            script.usage(part, 2, unit_amount=3, quantity=self.rng.randint(1, 999))
            for script, part in scripts
        ]


async def test_chunks_payout_runs_and_reconciliations_at_once_neither_deadlock_nor_drift(
    ledger_pool: db.Pool, fresh_database: str
) -> None:
    rng = random.Random(7)
    partners = [new_id("ptr") for _ in range(24)]
    orders = Orders(partners, rng)
    await book(ledger_pool, orders.new(120))
    unreconciled = await run_payouts(ledger_pool, NOW)
    assert len(unreconciled) == len(partners)
    for round_ in range(1, ROUNDS + 1):
        old = list(orders.scripts)
        rng.shuffle(old)
        # Two instances: each its own partitions (orders), the same partners and house accounts.
        instance_a = [orders.usage(old[i : i + 10]) + orders.new(4) for i in range(0, 60, 10)]
        instance_b = [orders.usage(old[i : i + 10]) + orders.new(4) for i in range(60, 120, 10)]
        # The bank deposits half of the payouts in transit and returns the other half.
        lines = [
            BankLine(
                p.reference,
                p.amount,
                NOW + timedelta(hours=round_),
                kind="booked" if i % 2 else "returned",
            )
            for i, p in enumerate(unreconciled)
        ]

        async def instance(chunks: list[list[OrderEvent]]) -> None:
            for chunk in chunks:
                await book(ledger_pool, chunk)

        _, _, made, _ = await asyncio.gather(
            instance(instance_a),
            instance(instance_b),
            run_payouts(ledger_pool, NOW + timedelta(days=round_)),
            reconcile(ledger_pool, lines),
        )
        unreconciled = made
    async with ledger_pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM payouts WHERE status = 'failed'") > 0
        assert await conn.fetchval("SELECT count(*) FROM payouts WHERE status = 'paid'") > 0
    await assert_balances_follow_postings(fresh_database)
