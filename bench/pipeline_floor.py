"""The floor per order: what an order's raw work costs this machine with no application logic.

An order is, on the wire and on disk, whatever the services make of it:

* HTTP: ``EXCHANGES`` POSTs: the placement, then each of the offering's three
  partners accepts and later completes (``bench.pipeline_load.PartnerDesk``);
* PostgreSQL: as many transactions: the placement's rows
  (``bench.orders_place.bare_transaction``) and, for each answer, one
  fulfilment row updated, the order row updated and one outbox row inserted;
* Kafka: the events the pipeline published per order, produced once with the
  services' producer settings a relay batch at a time, and read by as many
  consumers as read them in the pipeline (``READERS``).

Each part is done bare, closed loop with enough concurrency to use the CPU,
and charged the CPU of every process doing it (client and server: this
process and the bare aiohttp server, the bare database's backends and
PostgreSQL's background processes, the broker), divided by the orders' worth
done.  Their sum is the floor: on ``cores`` cores no order can cost less, so
``cores / floor`` orders/s is what the raw parts alone could reach.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp
import asyncpg

from bench.orders_place import bare_transaction
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
# An answer's outbox row: about a Fulfillment* envelope's size.
ANSWER_PAYLOAD = b"x" * 900


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


async def _answer(pool: asyncpg.Pool, order_id: str, fulfilment_ids: list[str]) -> None:
    """An order's answers, one after another as its partners send them, a transaction each."""
    for status in ANSWERS:
        for fulfilment_id in fulfilment_ids:
            now = datetime.now(UTC)
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute(
                    "UPDATE fulfillments SET status = $2, changed_at = $3 WHERE id = $1",
                    fulfilment_id,
                    status,
                    now,
                )
                await conn.execute(
                    "UPDATE orders SET changed_at = $2, sequence = sequence + 1 WHERE id = $1",
                    order_id,
                    now,
                )
                await conn.execute(
                    "INSERT INTO outbox (event_id, topic, key, event_type, payload)"
                    " VALUES ($1, 'orders.fulfillments', $2, 'bench', $3)",
                    new_id("evt"),
                    order_id,
                    ANSWER_PAYLOAD,
                )


async def _unanswered(pool: asyncpg.Pool) -> list[tuple[str, list[str]]]:
    rows = await pool.fetch(
        "SELECT order_id, array_agg(id ORDER BY id) AS asked FROM fulfillments"
        " WHERE status = 'requested' GROUP BY order_id"
    )
    return [(row["order_id"], list(row["asked"])) for row in rows]


async def database_floor(
    meter: CpuMeter, pool: asyncpg.Pool, orders_worth: int, concurrency: int
) -> FloorPart:
    place = bare_transaction(pool)

    async def placing(_: int) -> None:
        await place()

    async def answer_all() -> Usage:
        # Which rows to answer is looked up outside the measured window.
        asked = await _unanswered(pool)
        before = meter.snapshot()
        await _closed_loop(len(asked), concurrency, lambda n: _answer(pool, *asked[n]))
        return meter.usage_since(before)

    await _closed_loop(4 * concurrency, concurrency, placing)  # warm-up: plans cached
    await answer_all()
    before = meter.snapshot()
    await _closed_loop(orders_worth, concurrency, placing)
    usage = meter.usage_since(before) + await answer_all()
    return FloorPart(
        "PostgreSQL",
        f"{EXCHANGES} bare asyncpg transactions: the placement's rows, then "
        f"{EXCHANGES - 1} answers (fulfilment and order row updated, outbox row inserted); "
        "client, the database's backends, PostgreSQL's background processes",
        orders_worth,
        usage.only([LOAD, POSTGRES_BARE, POSTGRES_OTHER]),
    )


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
