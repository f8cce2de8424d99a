"""How fast the consumers apply a backlog, beside the raw limits, over the same events.

One topic (6 partitions, like the catalog's) is filled once with ``EVENTS``
Ping envelopes; then, each on its own:

* raw aiokafka ``getmany`` reading them all (no group, nothing else done);
* raw asyncpg inserting the same rows, 500 per transaction;
* ``IdempotentConsumer`` (one transaction per event) on the first
  ``PER_EVENT`` of them, one INSERT effect each;
* ``BatchConsumer`` (chunks of 500, dedupe included) writing the rows set-wise,
  then again with ``sequencing="strict"`` (the events carry per-key sequences);
* a FastStream batch subscriber (``batch=True``, offsets acknowledged after the
  handler: at least once, no dedupe) writing the same rows set-wise.

A consumer's rate is counted from its first effect to its last, so joining
the group is not part of it.  Its limit is the slower of the two raw figures.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from faststream.kafka import KafkaBroker
from faststream.middlewares import AckPolicy

from shared import db, kafka
from shared.consumer import BatchConsumer, Delivery, IdempotentConsumer
from shared.contracts.envelope import (
    Envelope,
    Event,
    EventRegistry,
    Topic,
    encode_envelope,
    new_envelope,
)
from shared.ids import new_id
from shared.migrations import PLUMBING_MIGRATIONS, migrate
from shared.sequencing import Sequencing

EVENTS = 40_000
PER_EVENT = 3_000
PARTITIONS = 6
CHUNK = 500
KEYS = 997

Figure = tuple[str, float, str]
Consume = Callable[[str, str, db.Pool], Awaitable[float]]


class Tick(Event, frozen=True, kw_only=True):
    EVENT_TYPE = "bench.tick"
    n: int


EFFECTS = "CREATE TABLE {name} (event_id text NOT NULL, n integer NOT NULL)"
INSERT_SET = "INSERT INTO {name} (event_id, n) SELECT unnest($1::text[]), unnest($2::int[])"


async def measure(kafka_bootstrap: str, admin_dsn: str) -> list[Figure]:
    run = new_id("bench").lower().replace("-", "_")
    topic = f"bench.consumer.{run}"
    await kafka.ensure_topics(
        kafka_bootstrap, kafka.topic_specs([Topic(topic, PARTITIONS, "tick", (Tick,))])
    )
    database = f"bench_{run}"
    admin = await asyncpg.connect(admin_dsn)
    await admin.execute(f'CREATE DATABASE "{database}"')
    dsn = admin_dsn.rsplit("/", 1)[0] + f"/{database}"
    pool = await db.create_pool(dsn, min_size=2, max_size=8)
    try:
        async with pool.acquire() as conn:
            await migrate(conn, [("plumbing", PLUMBING_MIGRATIONS)])
            for name in ("raw", "one", "batch", "strict", "faststream"):
                await conn.execute(EFFECTS.format(name=f"effects_{name}"))
        await fill(kafka_bootstrap, topic)
        print(f"{EVENTS} events on {topic}", flush=True)
        getmany = await raw_getmany(kafka_bootstrap, topic)
        inserts = await raw_inserts(pool)
        limit = min((getmany, "raw getmany"), (inserts, "raw insert 500/tx"))[1]
        figures: list[Figure] = [
            ("raw getmany", getmany, "raw getmany"),
            ("raw insert 500/tx", inserts, "raw insert 500/tx"),
        ]
        consumers = {
            "IdempotentConsumer, 1 INSERT/event": per_event,
            "BatchConsumer, set-wise INSERT": batch_consumer(None),
            "BatchConsumer, strict sequencing": batch_consumer("strict"),
            "FastStream batch=True, at least once": faststream,
        }
        for name, consume in consumers.items():
            figures.append((name, await consume(kafka_bootstrap, topic, pool), limit))
        for name, rate, _ in figures:
            print(f"  {name}: {rate:,.0f}/s", flush=True)
        return figures
    finally:
        await pool.close()
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.close()


async def fill(bootstrap: str, topic: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        sent = []
        for n in range(EVENTS):
            # Sequenced per key (1, 2, 3 ...), as the orders topic will be.
            key, sequence = f"k{n % KEYS}", n // KEYS + 1
            envelope = new_envelope(Tick(n=n), key=key, producer="bench", sequence=sequence)
            sent.append(
                await producer.send(topic, encode_envelope(envelope), key=envelope.key.encode())
            )
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def raw_getmany(bootstrap: str, topic: str) -> float:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        read = 0
        started = time.perf_counter()
        while read < EVENTS:
            batches = await consumer.getmany(timeout_ms=1000, max_records=CHUNK * 4)
            read += sum(len(records) for records in batches.values())
        return read / (time.perf_counter() - started)
    finally:
        await consumer.stop()


async def raw_inserts(pool: db.Pool) -> float:
    rows = [(new_id("evt"), n) for n in range(EVENTS)]
    statement = INSERT_SET.format(name="effects_raw")
    started = time.perf_counter()
    for start in range(0, EVENTS, CHUNK):
        chunk = rows[start : start + CHUNK]
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(statement, [r[0] for r in chunk], [r[1] for r in chunk])
    return EVENTS / (time.perf_counter() - started)


async def applied_rate(pool: db.Pool, table: str, expected: int, within: float = 120) -> float:
    """Events per second from the first effect in ``table`` to the ``expected``-th."""
    count_sql = f"SELECT count(*) FROM {table}"
    deadline = time.perf_counter() + within
    first_seen = first_count = None
    while time.perf_counter() < deadline:
        count: int = await pool.fetchval(count_sql)
        now = time.perf_counter()
        if count and first_seen is None:
            first_seen, first_count = now, count
        if count >= expected and first_seen is not None and first_count is not None:
            return (count - first_count) / max(now - first_seen, 1e-9)
        await asyncio.sleep(0.02)
    raise RuntimeError(f"{table} did not reach {expected} rows in {within}s")


async def consuming(
    bootstrap: str,
    pool: db.Pool,
    table: str,
    expected: int,
    make: Callable[[AIOKafkaProducer], BatchConsumer],
) -> float:
    producer = kafka.new_producer(bootstrap, client_id="bench")
    await producer.start()
    consumer = make(producer)
    running = asyncio.create_task(consumer.run())
    try:
        return await applied_rate(pool, table, expected)
    finally:
        consumer.stop()
        await running
        await producer.stop()


async def per_event(bootstrap: str, topic: str, pool: db.Pool) -> float:
    statement = "INSERT INTO effects_one (event_id, n) VALUES ($1, $2)"

    async def apply(conn: db.Connection, envelope: Envelope, event: Event) -> None:
        assert isinstance(event, Tick)
        await conn.execute(statement, envelope.event_id, event.n)

    return await consuming(
        bootstrap,
        pool,
        "effects_one",
        PER_EVENT,
        lambda producer: IdempotentConsumer(
            name=new_id("one"),
            bootstrap=bootstrap,
            topics=[topic],
            registry=EventRegistry([Tick]),
            handler=apply,
            pool=pool,
            producer=producer,
        ),
    )


def _set_wise(table: str) -> Callable[[db.Connection, Sequence[tuple[str, int]]], Awaitable[str]]:
    statement = INSERT_SET.format(name=table)

    async def insert(conn: db.Connection, rows: Sequence[tuple[str, int]]) -> str:
        return await conn.execute(statement, [r[0] for r in rows], [r[1] for r in rows])

    return insert


def batch_consumer(sequencing: Sequencing | None) -> Consume:
    table = "effects_strict" if sequencing else "effects_batch"
    insert = _set_wise(table)

    async def apply(conn: db.Connection, deliveries: Sequence[Delivery]) -> None:
        await insert(
            conn,
            [(d.envelope.event_id, d.event.n) for d in deliveries if isinstance(d.event, Tick)],
        )

    async def consume(bootstrap: str, topic: str, pool: db.Pool) -> float:
        return await consuming(
            bootstrap,
            pool,
            table,
            EVENTS,
            lambda producer: BatchConsumer(
                name=new_id("batch"),
                bootstrap=bootstrap,
                topics=[topic],
                registry=EventRegistry([Tick]),
                handler=apply,
                pool=pool,
                producer=producer,
                max_batch=CHUNK,
                sequencing=sequencing,
            ),
        )

    return consume


async def faststream(bootstrap: str, topic: str, pool: db.Pool) -> float:
    insert = _set_wise("effects_faststream")
    broker = KafkaBroker(bootstrap, logger=None)

    @broker.subscriber(
        topic,
        batch=True,
        group_id=new_id("faststream"),
        auto_offset_reset="earliest",
        max_records=CHUNK,
        ack_policy=AckPolicy.ACK,
    )
    async def handle(envelopes: list[dict[str, Any]]) -> None:
        # FastStream decodes the JSON itself: what its user starts from.
        rows = [(envelope["event_id"], envelope["payload"]["n"]) for envelope in envelopes]
        async with pool.acquire() as conn, conn.transaction():
            await insert(conn, rows)

    await broker.start()
    try:
        return await applied_rate(pool, "effects_faststream", EVENTS)
    finally:
        await broker.stop()
