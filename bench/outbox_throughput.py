"""The outbox's throughput beside its raw limits.

    uv run python -m bench.outbox_throughput

Figures (events/s), each with the limit it is compared to:

* raw produce: aiokafka alone (idempotent, ``acks=all``, the relay's own
  producer settings) sending the same encoded envelopes, keys and headers the
  relay sends: the ceiling for the relay.
* relay drain: the production ``OutboxRelay`` publishing a backlog of 50,000
  outbox rows and marking them sent (target: at least half of raw produce).
* commits at 32 concurrent writers, one event per transaction: a plain INSERT
  into a table with only a primary key (the limit), ``shared.outbox.append``,
  and ``append`` plus ``pg_notify`` as the relay's wake-up used to be (it is
  compared to ``append`` alone: PostgreSQL serialises notifying commits).

``measure`` is what ``bench/plumbing.py`` (``make bench-plumbing``) runs; run
alone, this module uses ``TEST_KAFKA_BOOTSTRAP`` and ``TEST_PG_DSN`` (an admin
DSN; it makes and drops its own database and topic there), by default the
servers ``make run`` starts.  Client and servers share the machine's cores.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import ClassVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client import REGISTRY

from shared import db, kafka
from shared.contracts.envelope import Envelope, Event, Topic, encode_envelope, new_envelope
from shared.migrations import PLUMBING_MIGRATIONS, migrate
from shared.outbox import OutboxRelay, append, kafka_headers

Figure = tuple[str, float, str]

BACKLOG = 50_000
KEYS = 1_000
WRITERS = 32
COMMIT_SECONDS = 5.0
PRODUCER = "bench"

RAW_PRODUCE = "raw produce (aiokafka, acks=all)"
RELAY_DRAIN = "relay drain, 50k backlog"
RAW_COMMITS = "raw commits, 32 writers"
OUTBOX_COMMITS = "outbox commits, 32 writers"
NOTIFY_COMMITS = "outbox commits + NOTIFY, 32 writers"


class Ping(Event, frozen=True, kw_only=True):
    EVENT_TYPE: ClassVar[str] = "bench.ping"

    n: int


def _envelopes(topic: Topic, count: int) -> list[Envelope]:
    return [new_envelope(Ping(n=n), key=f"key-{n % KEYS}", producer=PRODUCER) for n in range(count)]


@asynccontextmanager
async def _database(admin_dsn: str) -> AsyncIterator[str]:
    """A fresh database with the plumbing tables, dropped afterwards."""
    name = f"bench_outbox_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        dsn = urlunsplit(urlsplit(admin_dsn)._replace(path=f"/{name}"))
        conn = await asyncpg.connect(dsn)
        try:
            await migrate(conn, [("plumbing", PLUMBING_MIGRATIONS)])
        finally:
            await conn.close()
        yield dsn
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@asynccontextmanager
async def _topic(bootstrap: str) -> AsyncIterator[Topic]:
    topic = Topic(f"bench.outbox.{uuid.uuid4().hex[:10]}", 6, "a bench key", (Ping,))
    await kafka.ensure_topics(bootstrap, kafka.topic_specs([topic]))
    try:
        yield topic
    finally:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.delete_topics([topic.name, topic.dead_letter])
        finally:
            await admin.close()


async def raw_produce(bootstrap: str, topic: Topic, envelopes: list[Envelope]) -> float:
    producer = kafka.new_producer(bootstrap, client_id="bench-raw-produce")
    await producer.start()
    try:
        await producer.send_and_wait(topic.name, b"warm-up", key=b"warm-up")
        started = time.perf_counter()
        deliveries = [
            await producer.send(
                topic.name,
                value=encode_envelope(envelope),
                key=envelope.key.encode(),
                headers=kafka_headers(envelope.type, envelope.event_id),
            )
            for envelope in envelopes
        ]
        await asyncio.gather(*deliveries)
        return len(envelopes) / (time.perf_counter() - started)
    finally:
        await producer.stop()


async def relay_drain(bootstrap: str, pool: db.Pool, topic: Topic) -> float:
    records = [
        (e.event_id, topic.name, e.key, e.type, encode_envelope(e))
        for e in _envelopes(topic, BACKLOG)
    ]
    async with pool.acquire() as conn:
        await conn.copy_records_to_table(
            "outbox",
            records=records,
            columns=["event_id", "topic", "key", "event_type", "payload"],
        )
        await conn.execute("ANALYZE outbox")
    producer = kafka.new_producer(bootstrap, client_id="bench-relay")
    await producer.start()
    published_before = REGISTRY.get_sample_value("outbox_events_published_total") or 0.0
    relay = OutboxRelay(pool, producer)
    try:
        started = time.perf_counter()
        running = asyncio.create_task(relay.run())
        while (
            REGISTRY.get_sample_value("outbox_events_published_total") or 0.0
        ) - published_before < BACKLOG:
            if running.done():
                running.result()
                raise RuntimeError("the relay stopped before draining the backlog")
            await asyncio.sleep(0.005)
        elapsed = time.perf_counter() - started
        relay.stop()
        await running
    finally:
        await producer.stop()
    return BACKLOG / elapsed


async def _commit_rate(
    pool: db.Pool, commit: Callable[[db.Connection, int], Awaitable[None]]
) -> float:
    deadline = time.perf_counter() + COMMIT_SECONDS
    committed = 0

    async def writer(number: int) -> None:
        nonlocal committed
        async with pool.acquire() as conn:
            while time.perf_counter() < deadline:
                async with conn.transaction():
                    await commit(conn, number)
                committed += 1

    started = time.perf_counter()
    await asyncio.gather(*(writer(n) for n in range(WRITERS)))
    return committed / (time.perf_counter() - started)


async def commit_rates(pool: db.Pool, topic: Topic) -> list[Figure]:
    payload = encode_envelope(_envelopes(topic, 1)[0])
    async with pool.acquire() as conn:
        await conn.execute(
            "CREATE TABLE raw_commits (id bigserial PRIMARY KEY, key text, payload bytea)"
        )

    async def raw(conn: db.Connection, number: int) -> None:
        await conn.execute(
            "INSERT INTO raw_commits (key, payload) VALUES ($1, $2)", f"key-{number}", payload
        )

    async def outbox(conn: db.Connection, number: int) -> None:
        await append(conn, topic, Ping(n=number), key=f"key-{number}", producer=PRODUCER)

    async def notifying(conn: db.Connection, number: int) -> None:
        await outbox(conn, number)
        await conn.execute("SELECT pg_notify('outbox', '')")

    return [
        (RAW_COMMITS, await _commit_rate(pool, raw), RAW_COMMITS),
        (OUTBOX_COMMITS, await _commit_rate(pool, outbox), RAW_COMMITS),
        (NOTIFY_COMMITS, await _commit_rate(pool, notifying), OUTBOX_COMMITS),
    ]


async def measure(kafka_bootstrap: str, admin_dsn: str) -> list[Figure]:
    async with _database(admin_dsn) as dsn, _topic(kafka_bootstrap) as topic:
        pool = await db.create_pool(dsn, min_size=WRITERS, max_size=WRITERS + 4)
        try:
            produced = await raw_produce(kafka_bootstrap, topic, _envelopes(topic, BACKLOG))
            drained = await relay_drain(kafka_bootstrap, pool, topic)
            commits = await commit_rates(pool, topic)
        finally:
            await pool.close()
    return [(RAW_PRODUCE, produced, RAW_PRODUCE), (RELAY_DRAIN, drained, RAW_PRODUCE), *commits]


def main() -> None:
    bootstrap = os.environ.get("TEST_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    admin_dsn = os.environ.get("TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
    figures = asyncio.run(measure(bootstrap, admin_dsn))
    rates = {name: rate for name, rate, _ in figures}
    print(f"{os.cpu_count()} cores, shared by the bench and the servers")
    for name, rate, limit in figures:
        print(f"{name:<40} {rate:>10,.0f}/s  {rate / rates[limit]:>5.2f} x {limit}")


if __name__ == "__main__":
    main()
