"""Optimistic changes of an order on real PostgreSQL: a change lands only on the version it read.

A change reads the order without a lock, decides, and writes in one
statement that checks the order's version.  These tests put another change
between the read and the write, on a second connection, and look at what
the database holds afterwards: the write decided from the old state changed
nothing and recorded no event, and the change was decided again from the
state the other one left.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeAlias, cast

import asyncpg
import pytest
from prometheus_client import REGISTRY

from services.orders import domain, handlers, store
from services.orders.domain import Accept, Order, RequestedLine
from services.orders.turns import OrderTurns
from shared import outbox
from shared.contracts import fulfillments as f_events
from shared.contracts import orders as o_events
from shared.contracts.catalog_accounts import PartnerKind
from shared.contracts.catalog_offerings import ComponentState, OfferingPublished, OfferingState
from shared.contracts.envelope import EventRegistry, decode_envelope
from shared.contracts.pricing import OneTimePricing, Pricing, UsagePricing
from shared.db import Connection
from shared.errors import Conflict, NotFound
from tests.support.waiting import wait_for

pytestmark = pytest.mark.asyncio(loop_scope="session")

NOW = datetime.now(UTC)
PLACED_AT = NOW - timedelta(hours=1)
CUSTOMER = "cus_optimistic"
ISV, MSP, INTEGRATOR = "prt_isv", "prt_msp", "prt_integrator"
OFFERING = "off_optimistic"

if TYPE_CHECKING:
    Db: TypeAlias = asyncpg.Connection[asyncpg.Record]
else:
    Db = asyncpg.Connection
EVENTS = EventRegistry([*o_events.TOPIC.events, *f_events.TOPIC.events])


def _part(partner_id: str, kind: PartnerKind, pricing: Pricing) -> ComponentState:
    return ComponentState(
        partner_id=partner_id,
        partner_kind=kind,
        role=kind,
        name=f"{kind} part",
        pricing=pricing,
        agreement_id=None,
        share_bps=10_000,
    )


async def place(conn: Db) -> Order:
    """A pending order of three partners' parts (the ISV's also metered), placed as the
    service places it."""
    async with conn.transaction():
        await handlers.apply_catalog_event(
            conn,
            OfferingPublished(
                offering=OfferingState(
                    offering_id=OFFERING,
                    owner_id=MSP,
                    version=1,
                    status="published",
                    orderable=True,
                    name="Managed database",
                    description="three partners",
                    currency="USD",
                    components=[
                        _part(ISV, "isv", OneTimePricing(unit_amount=5_000)),
                        _part(MSP, "managed_service", OneTimePricing(unit_amount=2_000)),
                        _part(INTEGRATOR, "integrator", OneTimePricing(unit_amount=1_000)),
                        _part(ISV, "isv", UsagePricing(unit_amount=3, unit="GB-hour")),
                    ],
                    published_at=PLACED_AT,
                    changed_at=PLACED_AT,
                )
            ),
        )
    return await handlers.place_order(
        conn,
        customer_id=CUSTOMER,
        lines=[RequestedLine(OFFERING, 1)],
        now=PLACED_AT,
        acceptance_window=timedelta(hours=48),
    )


async def answer(conn: Connection, order: Order, partner_id: str) -> Order:
    fulfillment = order.fulfillment_of(partner_id)
    assert fulfillment is not None
    return await handlers.answer_fulfillment(
        conn, partner_id, fulfillment.fulfillment_id, Accept(partner_id), PLACED_AT
    )


class Interleaved:
    """A real connection that runs ``between`` after each read of an order, before the write.

    Reads of an order are its only ``fetchrow`` calls; what ``between`` does
    on another connection lands exactly where a concurrent change would.
    """

    def __init__(self, conn: Db, between: Callable[[int], Awaitable[None]]) -> None:
        self.conn = conn
        self.between = between
        self.reads = 0

    async def fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        row = await self.conn.fetchrow(sql, *args)
        self.reads += 1
        await self.between(self.reads)
        return row

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)


async def recorded(conn: Db, order_id: str) -> list[tuple[str, int | None]]:
    """The events in the outbox about ``order_id``, in the order written: (type, sequence)."""
    rows = await conn.fetch("SELECT event_type, sequence, payload FROM outbox ORDER BY id")
    found = []
    for row in rows:
        event: Any = EVENTS.decode(decode_envelope(row["payload"]))
        owner = getattr(event, "fulfillment", None) or getattr(event, "order", None)
        if order_id in (getattr(owner, "order_id", None), getattr(event, "order_id", None)):
            found.append((row["event_type"], row["sequence"]))
    return found


def of_order(events: list[tuple[str, int | None]]) -> list[tuple[str, int | None]]:
    return [(kind, sequence) for kind, sequence in events if sequence is not None]


def count(events: list[tuple[str, int | None]], event_type: str) -> int:
    return sum(1 for kind, _ in events if kind == event_type)


async def confirmed_once(conn: Db, after: Order) -> None:
    """Confirmed, in the database too, by exactly one event, after three accepts."""
    assert after.status == "confirmed"
    stored = await conn.fetchval("SELECT status FROM orders WHERE id = $1", after.order_id)
    assert stored == "confirmed"
    events = await recorded(conn, after.order_id)
    assert of_order(events) == [
        (o_events.OrderPlaced.EVENT_TYPE, 1),
        (o_events.OrderConfirmed.EVENT_TYPE, 2),
    ]
    assert count(events, f_events.FulfillmentAccepted.EVENT_TYPE) == 3


async def fulfillment_statuses(conn: Db, order_id: str) -> dict[str, str]:
    rows = await conn.fetch(
        "SELECT partner_id, status FROM fulfillments WHERE order_id = $1", order_id
    )
    return {row["partner_id"]: row["status"] for row in rows}


@dataclass(frozen=True)
class Placed:
    """A pending order, a connection to change it and another to race it."""

    conn: Db
    other: Db
    order: Order


@pytest.fixture
async def placed(migrated_orders_db: str) -> AsyncIterator[Placed]:
    conn: Db = await asyncpg.connect(migrated_orders_db)
    other: Db = await asyncpg.connect(migrated_orders_db)
    try:
        yield Placed(conn, other, await place(conn))
    finally:
        await conn.close()
        await other.close()


async def test_a_write_decided_from_an_old_version_changes_nothing_and_records_no_event(
    placed: Placed,
) -> None:
    conn, order = placed.conn, placed.order
    stale = await store.order_snapshot(conn, order.order_id)
    assert stale is not None
    assert stale.version == 0
    await answer(conn, order, ISV)
    before = await conn.fetchrow("SELECT * FROM orders WHERE id = $1", order.order_id)
    events_before = await conn.fetchval("SELECT count(*) FROM outbox")

    # The MSP's accept as decided from the order before the ISV's: it would
    # lose the ISV's accept, so it must not land, nor any of its events.
    transition = domain.decide(stale.order, Accept(MSP), PLACED_AT)
    events = outbox.batch(
        [
            outbox.Entry(f_events.TOPIC, e, e.fulfillment.partner_id)
            for e in transition.fulfillment_events
        ],
        producer=handlers.PRODUCER,
    )
    assert events.envelopes
    saved = await store.save_changes(conn, stale, transition.order, events)

    assert saved is False
    assert await conn.fetchrow("SELECT * FROM orders WHERE id = $1", order.order_id) == before
    assert before is not None
    assert before["version"] == 1
    assert await fulfillment_statuses(conn, order.order_id) == {
        ISV: "accepted",
        MSP: "requested",
        INTEGRATOR: "requested",
    }
    assert await conn.fetchval("SELECT count(*) FROM outbox") == events_before
    ids = [envelope.event_id for envelope in events.envelopes]
    assert await conn.fetchval("SELECT count(*) FROM outbox WHERE event_id = ANY($1)", ids) == 0


async def test_a_change_by_a_replica_that_does_not_know_versions_still_moves_the_version(
    placed: Placed,
) -> None:
    """During a rolling upgrade an older replica updates orders under a row lock
    and never sets the version; a write decided before its change must still lose."""
    conn, other, order = placed.conn, placed.other, placed.order
    stale = await store.order_snapshot(conn, order.order_id)
    assert stale is not None

    async with other.transaction():
        await other.execute("SELECT 1 FROM orders WHERE id = $1 FOR UPDATE", order.order_id)
        await other.execute(
            "UPDATE orders SET status = 'cancelled', cancel_reason = 'customer' WHERE id = $1",
            order.order_id,
        )
    assert await conn.fetchval("SELECT version FROM orders WHERE id = $1", order.order_id) == 1

    transition = domain.decide(stale.order, Accept(ISV), PLACED_AT)
    events = outbox.batch(
        [
            outbox.Entry(f_events.TOPIC, e, e.fulfillment.partner_id)
            for e in transition.fulfillment_events
        ],
        producer=handlers.PRODUCER,
    )
    assert await store.save_changes(conn, stale, transition.order, events) is False
    row = await conn.fetchrow("SELECT status, version FROM orders WHERE id = $1", order.order_id)
    assert row is not None
    assert (row["status"], row["version"]) == ("cancelled", 1)


async def test_an_answer_that_lost_the_race_decides_again_from_what_won(
    placed: Placed,
) -> None:
    conn, other, order = placed.conn, placed.other, placed.order
    await answer(conn, order, ISV)

    async def msp_accepts_meanwhile(reads: int) -> None:
        if reads == 1:
            await answer(other, order, MSP)

    racing = Interleaved(conn, msp_accepts_meanwhile)
    after = await answer(cast(Connection, racing), order, INTEGRATOR)

    # Read once before the MSP's accept, once after: the second decision saw
    # it and confirmed the order, which the first would have left pending.
    assert racing.reads == 2
    await confirmed_once(conn, after)


async def test_a_change_that_keeps_losing_queues_on_the_row_lock_and_lands(
    placed: Placed,
) -> None:
    conn, other, order = placed.conn, placed.other, placed.order
    held_off: list[type[BaseException]] = []

    async def someone_else_writes_each_time(read: int) -> None:
        if read <= handlers.OPTIMISTIC_ATTEMPTS:
            # Another writer lands between every optimistic read and its write.
            await other.execute(
                "UPDATE orders SET version = version + 1 WHERE id = $1", order.order_id
            )
            return
        # The last read is made under the order's row lock: a writer now waits.
        async with other.transaction():
            await other.execute("SET LOCAL lock_timeout = '200ms'")
            with pytest.raises(asyncpg.LockNotAvailableError) as refused:
                await other.execute(
                    "UPDATE orders SET version = version + 1 WHERE id = $1", order.order_id
                )
            held_off.append(refused.type)

    racing = Interleaved(conn, someone_else_writes_each_time)
    events_before = await conn.fetchval("SELECT count(*) FROM outbox")
    answered = await answer(cast(Connection, racing), order, ISV)

    assert racing.reads == handlers.OPTIMISTIC_ATTEMPTS + 1
    assert held_off == [asyncpg.LockNotAvailableError]
    assert answered.fulfillment_of(ISV) is not None
    assert (await fulfillment_statuses(conn, order.order_id))[ISV] == "accepted"
    assert await conn.fetchval("SELECT count(*) FROM outbox") == events_before + 1
    assert (
        await conn.fetchval("SELECT version FROM orders WHERE id = $1", order.order_id)
        == handlers.OPTIMISTIC_ATTEMPTS + 1
    )
    assert not conn.is_in_transaction()


async def test_a_change_inside_a_transaction_waits_for_the_other_writer_then_decides_again(
    placed: Placed,
) -> None:
    """As under an Idempotency-Key: the write meets the other change uncommitted."""
    conn, other, order = placed.conn, placed.other, placed.order
    await answer(conn, order, ISV)
    others = other.transaction()
    msp_accepted = asyncio.Event()

    async def msp_accepts_uncommitted(reads: int) -> None:
        if reads == 1:
            await others.start()
            await answer(other, order, MSP)
            msp_accepted.set()

    racing = Interleaved(conn, msp_accepts_uncommitted)

    async def integrator_accepts_in_a_transaction() -> Order:
        async with conn.transaction():
            return await answer(cast(Connection, racing), order, INTEGRATOR)

    integrator = asyncio.create_task(integrator_accepts_in_a_transaction())
    pid = conn.get_server_pid()

    async def waits_on_the_msp() -> bool:
        blockers = await other.fetchval("SELECT pg_blocking_pids($1)", pid)
        return other.get_server_pid() in blockers

    try:
        await asyncio.wait_for(msp_accepted.wait(), timeout=20)
        await wait_for(waits_on_the_msp, message="the integrator's write never waited")
    finally:
        await others.commit()
    after = await integrator

    assert racing.reads == 2
    await confirmed_once(conn, after)


async def test_an_accept_that_lost_to_a_cancel_is_refused_and_records_nothing(
    placed: Placed,
) -> None:
    conn, other, order = placed.conn, placed.other, placed.order

    async def customer_cancels_meanwhile(reads: int) -> None:
        if reads == 1:
            await handlers.cancel_order(other, CUSTOMER, order.order_id, PLACED_AT)

    racing = Interleaved(conn, customer_cancels_meanwhile)
    with pytest.raises(Conflict, match="cancelled"):
        await answer(cast(Connection, racing), order, ISV)

    assert racing.reads == 2
    events = await recorded(conn, order.order_id)
    assert of_order(events) == [
        (o_events.OrderPlaced.EVENT_TYPE, 1),
        (o_events.OrderCancelled.EVENT_TYPE, 2),
    ]
    assert count(events, f_events.FulfillmentAccepted.EVENT_TYPE) == 0
    assert set((await fulfillment_statuses(conn, order.order_id)).values()) == {"cancelled"}


async def test_a_cancel_that_lost_to_a_usage_report_refunds_that_usage_too(
    placed: Placed,
) -> None:
    """A usage report changes the order too (it moves the version), under its lock."""
    conn, other, order = placed.conn, placed.other, placed.order
    for partner_id in (ISV, MSP, INTEGRATOR):
        await answer(conn, order, partner_id)
    report = domain.ReportUsage(
        usage_id="u-1", partner_id=ISV, component_partner_id=None, quantity=10, occurred_at=NOW
    )

    async def usage_reported_meanwhile(reads: int) -> None:
        if reads == 1:
            async with other.transaction():
                await handlers.report_usage(other, order.order_id, report, NOW)

    racing = Interleaved(conn, usage_reported_meanwhile)
    cancelled = await handlers.cancel_order(cast(Connection, racing), CUSTOMER, order.order_id, NOW)

    assert racing.reads == 2
    assert cancelled.status == "cancelled"
    assert await conn.fetchval("SELECT version FROM orders WHERE id = $1", order.order_id) == 5
    payload = await conn.fetchval(
        "SELECT payload FROM outbox WHERE event_type = $1", o_events.OrderRefunded.EVENT_TYPE
    )
    refunded = EVENTS.decode(decode_envelope(payload))
    assert isinstance(refunded, o_events.OrderRefunded)
    usage_charge = domain.usage_charge_id(ISV, "u-1")
    assert usage_charge in {refund.charge_id for refund in refunded.refunds}
    assert of_order(await recorded(conn, order.order_id)) == [
        (o_events.OrderPlaced.EVENT_TYPE, 1),
        (o_events.OrderConfirmed.EVENT_TYPE, 2),
        (o_events.UsageRecorded.EVENT_TYPE, 3),
        (o_events.OrderCancelled.EVENT_TYPE, 4),
        (o_events.OrderRefunded.EVENT_TYPE, 5),
    ]


async def test_a_cancel_by_someone_else_is_not_found_and_changes_nothing(
    placed: Placed,
) -> None:
    conn, order = placed.conn, placed.order
    with pytest.raises(NotFound):
        await handlers.cancel_order(conn, "cus_someone_else", order.order_id, NOW)
    assert await conn.fetchval("SELECT version FROM orders WHERE id = $1", order.order_id) == 0


def lost() -> float:
    return REGISTRY.get_sample_value("orders_changes_lost_total") or 0.0


class Counting(Interleaved):
    """Counts the reads of an order, putting nothing between them and the write."""

    def __init__(self, conn: Db) -> None:
        async def nothing(_: int) -> None:
            return None

        super().__init__(conn, nothing)


async def test_three_answers_at_once_in_one_process_take_turns_and_none_is_decided_twice(
    placed: Placed, migrated_orders_db: str
) -> None:
    order = placed.order
    turns = OrderTurns()
    lost_before = lost()
    third: Db = await asyncpg.connect(migrated_orders_db)
    connections = [Counting(placed.conn), Counting(placed.other), Counting(third)]
    try:
        answers = await asyncio.gather(
            *(
                handlers.answer_fulfillment(
                    cast(Connection, conn),
                    partner_id,
                    mine.fulfillment_id,
                    Accept(partner_id),
                    PLACED_AT,
                    turns=turns,
                )
                for conn, partner_id in zip(connections, (ISV, MSP, INTEGRATOR), strict=True)
                if (mine := order.fulfillment_of(partner_id)) is not None
            )
        )
    finally:
        await third.close()

    # One read each; the second and third started from what the one before stored.
    assert [conn.reads for conn in connections] == [1, 1, 1]
    assert lost() == lost_before
    assert len(turns) == 0
    await confirmed_once(placed.conn, next(a for a in answers if a.status == "confirmed"))


@pytest.mark.parametrize(
    "changes",
    [
        ["accept ISV"],
        ["accept ISV", "accept MSP", "accept INTEGRATOR"],
        ["accept ISV", "accept MSP", "accept INTEGRATOR", "complete MSP"],
        ["accept ISV", "accept MSP", "accept INTEGRATOR", "usage", "cancel"],
        ["reject MSP"],
        ["cancel"],
    ],
)
async def test_what_a_change_hands_on_is_what_a_fresh_read_finds(
    placed: Placed, changes: list[str]
) -> None:
    """The next change in line starts from the state the last one returned, at the next
    version, without reading it: it must be the order exactly as stored."""
    conn, order = placed.conn, placed.order
    fulfillment = {p: order.fulfillment_of(p) for p in (ISV, MSP, INTEGRATOR)}
    partners = {"ISV": ISV, "MSP": MSP, "INTEGRATOR": INTEGRATOR}
    for change in changes:
        verb, _, who = change.partition(" ")
        version = await conn.fetchval("SELECT version FROM orders WHERE id = $1", order.order_id)
        if verb == "usage":
            report = domain.ReportUsage(
                usage_id="u-1",
                partner_id=ISV,
                component_partner_id=None,
                quantity=2,
                occurred_at=NOW,
            )
            async with conn.transaction():
                await handlers.report_usage(conn, order.order_id, report, NOW)
            continue
        if verb == "cancel":
            after = await handlers.cancel_order(conn, CUSTOMER, order.order_id, NOW)
        else:
            partner_id = partners[who]
            mine = fulfillment[partner_id]
            assert mine is not None
            commands: dict[str, domain.Command] = {
                "accept": Accept(partner_id),
                "complete": domain.Complete(partner_id),
                "reject": domain.Reject(partner_id, "no capacity"),
            }
            command = commands[verb]
            after = await handlers.answer_fulfillment(
                conn, partner_id, mine.fulfillment_id, command, PLACED_AT
            )
        stored = await store.order_snapshot(conn, order.order_id)
        assert stored == store.Snapshot(after, version + 1)
