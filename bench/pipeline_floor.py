"""The floor per order: what an order's raw work costs this machine with no application logic.

An order is, on the wire and on disk, whatever the services make of it, done
the cheapest honest way:

* HTTP: ``EXCHANGES`` POSTs: the placement, then each of the offering's three
  partners accepts and later completes (``bench.pipeline_load.PartnerDesk``);
* PostgreSQL: one statement per transaction, committed by itself: the
  placement's rows in one, then each answer's (fulfilment and order row
  updated, its events inserted) in one; and settlement's journal entries and
  postings by batched COPY, as many per order as the pipeline booked;
* Kafka: the events the pipeline published per order, produced once with the
  services' producer settings a relay batch at a time, and read by as many
  consumers as read them in the pipeline (``READERS``).

How many outbox rows, of what size, and how many ledger rows an order makes
are counted from the pipeline's own run (``OrderRows``).  Each part is done
bare, closed loop with enough concurrency to use the CPU, and charged the CPU
of every process doing it (client and server: this process and the bare
aiohttp server, the bare database's backends and PostgreSQL's background
processes, the broker), divided by the orders' worth done.  Their sum is the
floor: on ``cores`` cores no order can cost less, so ``cores / floor``
orders/s is what the raw parts alone could reach.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp
import asyncpg
import msgspec

from bench.orders_place import OFFERING_ID
from bench.pipeline_cpu import POSTGRES_OTHER, CpuMeter, Usage, per_order_ms
from bench.pipeline_limits import (
    PARTITIONS,
    KafkaLimit,
    Record,
    delete_topic,
    fresh_topic,
    produce_as_the_relay,
    warm_producer,
)
from bench.settlement_backlog import raw_getmany
from shared.contracts import fulfillments, orders
from shared.ids import new_id

LOAD = "load generator and partners"  # this process, in every table
BARE = "bare aiohttp server"
POSTGRES_BARE = "postgres bare"
KAFKA = "kafka"
EXCHANGES = 7  # place; then three partners each accept and complete
ANSWERS = ("accepted", "completed")
# Who reads each topic in the pipeline: settlement's order-events consumer and the
# simulated partners' order feed read orders.orders; the partners' fulfilment feed
# reads orders.fulfillments (orders itself consumes only the catalog's topics).
READERS = {orders.TOPIC.name: 2, fulfillments.TOPIC.name: 1}
PARTNERS = 3  # the offering's: one fulfilment each
# A placement's events: OrderPlaced and a FulfillmentRequested per partner.
PLACEMENT_EVENTS = 1 + PARTNERS
LEDGER_BATCH = 200  # orders' rows a COPY: about settlement_backlog's 2,000-event chunks
LEDGER_WRITERS = 2  # a connection per core
# COPY does an order's ledger rows in well under a millisecond: ten times the
# other parts' orders' worth keeps its window long against /proc's 10 ms ticks.
LEDGER_ORDERS_WORTH = 10


@dataclass(frozen=True)
class FloorPart:
    name: str
    what: str
    orders: int
    usage: Usage  # only the processes doing this part

    def ms_per_order(self) -> float:
        return per_order_ms(self.usage.counted(), self.orders)

    def line(self) -> str:
        parts = ", ".join(
            f"{name} {per_order_ms(used, self.orders):.2f}" for name, used in self.usage.cpu.items()
        )
        return (
            f"  floor {self.name:<10} {self.ms_per_order():6.2f} ms/order ({parts};"
            f" {self.orders} orders in {self.usage.seconds:.1f} s)"
        )


@dataclass(frozen=True)
class Floor:
    parts: list[FloorPart]
    kafka: KafkaLimit

    def ms_per_order(self) -> float:
        return sum(part.ms_per_order() for part in self.parts)


async def _closed_loop(jobs: int, concurrency: int, job: Callable[[int], Awaitable[None]]) -> None:
    """``job(0..jobs-1)``, ``concurrency`` at a time, each worker taking the next as it finishes."""
    turns = iter(range(jobs))

    async def worker() -> None:
        for turn in turns:
            await job(turn)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def http_floor(
    meter: CpuMeter,
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    orders_worth: int,
    concurrency: int = 32,
) -> FloorPart:
    async def exchange(turn: int) -> None:
        # The placement carries the order's body; an answer carries none.
        async with session.post(url, data=body if turn % EXCHANGES == 0 else b"") as response:
            await response.read()
            if response.status != 201:
                raise RuntimeError(f"the bare server answered {response.status}")

    await _closed_loop(200, concurrency, exchange)  # warm-up: connections opened
    before = meter.snapshot()
    await _closed_loop(orders_worth * EXCHANGES, concurrency, exchange)
    return FloorPart(
        "HTTP",
        f"{EXCHANGES} bare aiohttp POST exchanges (client and server)",
        orders_worth,
        meter.usage_since(before).only([LOAD, BARE]),
    )


def spread(total: int, parts: int) -> list[int]:
    """``total`` shared out over ``parts`` as evenly as whole numbers allow, the larger
    shares last in each stretch (the answer that completes a round emits the order's event)."""
    if parts <= 0:
        return []
    return [(n + 1) * total // parts - n * total // parts for n in range(parts)]


def rows_worth(per_order: float, orders_worth: int) -> int:
    """How many rows ``orders_worth`` orders make at ``per_order`` each, rounded."""
    return round(per_order * orders_worth)


@dataclass(frozen=True)
class OrderRows:
    """What an order writes to the databases, as counted from the pipeline's own run."""

    events: float  # outbox rows per order: the events it published, all topics
    payload: int  # bytes, an event's mean size as published
    entries: float  # settlement's journal entries per order
    postings: float  # and their postings

    def answer_events(self) -> list[int]:
        """Outbox rows each answer writes: what the placement does not."""
        rest = max(0, round(self.events) - PLACEMENT_EVENTS)
        return spread(rest, len(ANSWERS) * PARTNERS)


def order_rows(published: dict[str, list[Record]], entries: float, postings: float) -> OrderRows:
    """``published``: the run's events by topic; ``entries``, ``postings``: per order, booked."""
    records = [record for topic in published.values() for record in topic]
    size = sum(len(value) for _, value, _ in records) // len(records) if records else 0
    return OrderRows(sum(events_per_order(published).values()), size, entries, postings)


async def ledger_per_order(ledger: asyncpg.Connection) -> tuple[float, float]:
    """Journal entries and postings per order settlement booked (entries of no order left out)."""
    row = await ledger.fetchrow(
        "SELECT count(DISTINCT e.order_id) AS orders, count(DISTINCT e.entry_id) AS entries,"
        " count(p.entry_id) AS postings FROM journal_entries e"
        " LEFT JOIN postings p ON p.entry_id = e.entry_id WHERE e.order_id IS NOT NULL"
    )
    if row is None or not row["orders"]:
        return 0.0, 0.0
    return row["entries"] / row["orders"], row["postings"] / row["orders"]


def _placement(pool: asyncpg.Pool, rows: OrderRows) -> Callable[[int], Awaitable[None]]:
    """The rows a placement writes (order, line, three fulfilments, its events, the
    acceptance timer) in one statement, committed by itself: one round trip."""
    components = msgspec.json.encode([{"component_index": i} for i in range(3)]).decode()
    payload = b"x" * rows.payload
    partners = [f"prt_{n}" for n in range(PARTNERS)]

    async def place(_: int) -> None:
        order_id, now = new_id("ord"), datetime.now(UTC)
        await pool.execute(
            "WITH placed AS (INSERT INTO orders (id, customer_id, status, currency, total,"
            " placed_at, accept_by, changed_at, sequence, version) VALUES ($1, 'cus_bare',"
            " 'pending', 'USD', 8000, $2, $2, $2, 1, 0)),"
            " line AS (INSERT INTO order_lines (id, order_id, position, offering_id,"
            " offering_version, owner_id, quantity, amount, components) VALUES ($3, $1, 0, $4,"
            " 1, 'prt_0', 1, 8000, $5::jsonb)),"
            " requested AS (INSERT INTO fulfillments (id, order_id, partner_id, role, status,"
            " changed_at) SELECT f.id, $1, f.partner_id, 'isv', 'requested', $2"
            " FROM unnest($6::text[], $7::text[]) AS f(id, partner_id)),"
            " events AS (INSERT INTO outbox (event_id, topic, key, event_type, payload)"
            " SELECT e, 'orders.orders', $1, 'bench', $8 FROM unnest($9::text[]) AS e)"
            " INSERT INTO timers (kind, key, due_at, next_attempt_at)"
            " VALUES ('bench.deadline', $1, $2, $2)",
            order_id,
            now,
            new_id("lin"),
            OFFERING_ID,
            components,
            [new_id("ful") for _ in partners],
            partners,
            payload,
            [new_id("evt") for _ in range(PLACEMENT_EVENTS)],
        )

    return place


def _answers(
    pool: asyncpg.Pool, rows: OrderRows, asked: list[tuple[str, list[str]]]
) -> Callable[[int], Awaitable[None]]:
    """An order's answers, one after another as its partners send them, a statement each:
    the fulfilment and the order updated and the answer's events inserted, committed by
    itself.  No read first: the floor knows what to write, the service reads the order
    (one snapshot statement) to decide it."""
    payload = b"x" * rows.payload
    emitted = rows.answer_events()

    async def answer(n: int) -> None:
        order_id, fulfilment_ids = asked[n]
        turn = 0
        for status in ANSWERS:
            for fulfilment_id in fulfilment_ids:
                await pool.execute(
                    "WITH answered AS (UPDATE fulfillments SET status = $2, changed_at = $3"
                    " WHERE id = $1), changed AS (UPDATE orders SET changed_at = $3,"
                    " sequence = sequence + 1, version = version + 1 WHERE id = $4)"
                    " INSERT INTO outbox (event_id, topic, key, event_type, payload)"
                    " SELECT e, 'orders.fulfillments', $4, 'bench', $5 FROM unnest($6::text[]) e",
                    fulfilment_id,
                    status,
                    datetime.now(UTC),
                    order_id,
                    payload,
                    [new_id("evt") for _ in range(emitted[turn])],
                )
                turn += 1

    return answer


async def _unanswered(pool: asyncpg.Pool) -> list[tuple[str, list[str]]]:
    rows = await pool.fetch(
        "SELECT order_id, array_agg(id ORDER BY id) AS asked FROM fulfillments"
        " WHERE status = 'requested' GROUP BY order_id"
    )
    return [(row["order_id"], list(row["asked"])) for row in rows]


_ENTRY_COLUMNS = ("entry_id", "kind", "booked_at", "order_id", "charge_id", "event_id")
_POSTING_COLUMNS = (
    "entry_id", "line", "account", "partner_id", "currency", "amount", "part", "order_id"
)  # fmt: skip


def ledger_rows(
    rows: OrderRows, orders_worth: int
) -> list[tuple[list[tuple[object, ...]], list[tuple[object, ...]]]]:
    """``orders_worth`` orders' journal entries and postings, a batch of ``LEDGER_BATCH``
    orders at a time; amounts alternate in sign (nothing checks the balance here)."""
    now = datetime.now(UTC)
    batches = []
    for first in range(0, orders_worth, LEDGER_BATCH):
        count = min(LEDGER_BATCH, orders_worth - first)
        entries: list[tuple[object, ...]] = []
        postings: list[tuple[object, ...]] = []
        per_order = zip(
            spread(rows_worth(rows.entries, count), count),
            spread(rows_worth(rows.postings, count), count),
            strict=True,
        )
        for entry_count, posting_count in per_order:
            order_id = new_id("ord")
            ids = [f"charge:{new_id('chg')}" for _ in range(entry_count)]
            for entry_id in ids:
                entries.append((entry_id, "charge", now, order_id, entry_id[7:], new_id("evt")))
            for n, line in enumerate(spread(posting_count, len(ids))):
                for k in range(line):
                    amount = 1000 if k % 2 == 0 else -1000
                    postings.append((ids[n], k + 1, "partner_pending", "prt_0", "USD", amount,
                                     "share", order_id))  # fmt: skip
        batches.append((entries, postings))
    return batches


async def ledger_floor(
    meter: CpuMeter, pool: asyncpg.Pool, rows: OrderRows, orders_worth: int
) -> FloorPart:
    """Settlement's rows by batched COPY, one transaction a batch, into tables of the
    ledger's columns without its keys, indexes or balance triggers (as
    ``bench.settlement_backlog``'s raw limit), a connection per core."""
    await pool.execute(
        "CREATE TABLE IF NOT EXISTS floor_entries (entry_id text, kind text,"
        " booked_at timestamptz, order_id text, charge_id text, event_id text,"
        " recorded_at timestamptz NOT NULL DEFAULT now());"
        " CREATE TABLE IF NOT EXISTS floor_postings (entry_id text, line smallint,"
        " account text, partner_id text, currency text, amount bigint, part text, order_id text)"
    )
    orders_worth *= LEDGER_ORDERS_WORTH
    batches = ledger_rows(rows, orders_worth)

    async def book(n: int) -> None:
        entries, postings = batches[n]
        async with pool.acquire() as conn, conn.transaction():
            await conn.copy_records_to_table(
                "floor_entries", records=entries, columns=_ENTRY_COLUMNS
            )
            await conn.copy_records_to_table(
                "floor_postings", records=postings, columns=_POSTING_COLUMNS
            )

    before = meter.snapshot()
    await _closed_loop(len(batches), LEDGER_WRITERS, book)
    return FloorPart(
        "ledger",
        f"{rows.entries:.1f} journal entries and {rows.postings:.1f} postings per order by "
        f"COPY, {LEDGER_BATCH} orders' rows a transaction, no keys or triggers",
        orders_worth,
        meter.usage_since(before).only([LOAD, POSTGRES_BARE, POSTGRES_OTHER]),
    )


async def database_floor(
    meter: CpuMeter, pool: asyncpg.Pool, rows: OrderRows, orders_worth: int, concurrency: int
) -> list[FloorPart]:
    """The placement's and the answers' rows, a statement each, then the ledger's."""
    counted = [LOAD, POSTGRES_BARE, POSTGRES_OTHER]
    place = _placement(pool, rows)

    async def answer_all() -> Usage:
        # Which rows to answer is looked up outside the measured window.
        asked = await _unanswered(pool)
        before = meter.snapshot()
        await _closed_loop(len(asked), concurrency, _answers(pool, rows, asked))
        return meter.usage_since(before)

    await _closed_loop(4 * concurrency, concurrency, place)  # warm-up: plans cached
    await answer_all()
    before = meter.snapshot()
    await _closed_loop(orders_worth, concurrency, place)
    placed = meter.usage_since(before).only(counted)
    answered = (await answer_all()).only(counted)
    events = rows.answer_events()
    return [
        FloorPart(
            "placement",
            f"its rows (order, line, {PARTNERS} fulfilments, {PLACEMENT_EVENTS} outbox rows of "
            f"{rows.payload} B, the timer) in one statement, autocommit",
            orders_worth,
            placed,
        ),
        FloorPart(
            "answers",
            f"{len(events)} answers, one statement each (fulfilment and order updated, "
            f"{sum(events)} outbox rows in all inserted), autocommit, no read first",
            orders_worth,
            answered,
        ),
        await ledger_floor(meter, pool, rows, orders_worth),
    ]


def events_per_order(published: dict[str, list[Record]]) -> dict[str, float]:
    """Events per order on each topic: orders.orders is keyed by order id, so its
    distinct keys are the orders the pipeline placed."""
    placed = len({key for key, _, _ in published.get(orders.TOPIC.name, [])})
    return {topic: len(records) / placed if placed else 0.0 for topic, records in published.items()}


def orders_worth_of(records: list[Record], per_order: float, orders_worth: int) -> list[Record]:
    """``orders_worth`` orders' events from ``records``, round again if there are too few."""
    wanted = round(per_order * orders_worth)
    return [records[n % len(records)] for n in range(wanted)] if records else []


async def kafka_floor(
    meter: CpuMeter, bootstrap: str, published: dict[str, list[Record]], orders_worth: int
) -> tuple[FloorPart, KafkaLimit]:
    """``published``: the pipeline's events by topic, named as in the contracts."""
    rates = events_per_order(published)
    produced = consumed = Usage(0.0, {}, 0.0)
    events = reads = 0
    for name, records in published.items():
        chosen = orders_worth_of(records, rates[name], orders_worth)
        if not chosen:
            continue
        topic = await fresh_topic(bootstrap)
        try:
            producer = await warm_producer(bootstrap, topic)
            try:
                before = meter.snapshot()
                await produce_as_the_relay(producer, topic, chosen)
                produced += meter.usage_since(before)
            finally:
                await producer.stop()
            for _ in range(READERS[name]):
                before = meter.snapshot()
                # The warm-up records are there too; the last fetch may hold them.
                await asyncio.wait_for(
                    raw_getmany(bootstrap, topic, len(chosen) + PARTITIONS, chunk=5000), 120
                )
                consumed += meter.usage_since(before)
                reads += len(chosen)
            events += len(chosen)
        finally:
            await delete_topic(bootstrap, topic)
    if not events:
        raise RuntimeError("the pipeline published no events to produce again")
    part = FloorPart(
        "Kafka",
        " + ".join(f"{rates[n]:.1f} {n} events" for n in published)
        + " produced once (the services' producer settings, a relay batch at a time), read "
        + " + ".join(f"{READERS[n]}x" for n in published)
        + "; client and broker",
        orders_worth,
        (produced + consumed).only([LOAD, KAFKA]),
    )
    return part, KafkaLimit(events, events / produced.seconds, reads / consumed.seconds)
