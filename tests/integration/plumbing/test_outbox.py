"""Transactional outbox → Kafka: at least once on the wire, exactly once in effect.

The relay is a real separate process.  To kill it at the one moment that
matters (after Kafka acknowledged a batch, before the rows are marked sent) the
test holds row locks on the outbox rows: the relay reads unsent rows without
locking them, publishes them, and then blocks in its ``UPDATE ... published_at``
until the test SIGKILLs it.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

import asyncpg
import msgspec
from aiokafka.errors import KafkaError

from shared import db, kafka
from shared.consumer import IdempotentConsumer
from shared.contracts.envelope import Envelope, Event, EventRegistry, decode_envelope
from shared.outbox import append
from tests.support.events import TEST_PRODUCER, Ping, ping_topic
from tests.support.infra import Infra, unique_name
from tests.support.kafka import NewTopic, TopicReader, group_caught_up
from tests.support.processes import Processes
from tests.support.waiting import wait_for

EVENTS = 24
KEYS = 4


async def blocked_relay_backends(pool: db.Pool, holder_pid: int) -> list[int]:
    """Backends waiting, on a lock held by ``holder_pid``, to mark outbox rows published.

    Asked outside the lock holder's transaction: pg_stat_activity is a snapshot
    taken once per transaction, so the holder itself would never see a change.
    """
    rows = await pool.fetch(
        "SELECT pid FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        " AND query LIKE 'UPDATE outbox SET published_at%'"
        " AND $1 = ANY(pg_blocking_pids(pid))",
        holder_pid,
    )
    return [row["pid"] for row in rows]


async def test_an_event_is_applied_once_although_the_relay_died_between_publish_and_mark(
    infra: Infra, pool: db.Pool, plumbing_db: str, new_topic: NewTopic, processes: Processes
) -> None:
    topic = ping_topic(await new_topic(partitions=3))
    envelopes: list[Envelope] = []
    for n in range(EVENTS):
        async with db.unit_of_work(pool) as conn:
            envelopes.append(
                await append(conn, topic, Ping(n=n), key=f"key-{n % KEYS}", producer=TEST_PRODUCER)
            )
    event_ids = {envelope.event_id for envelope in envelopes}

    locker = await asyncpg.connect(plumbing_db)
    try:
        lock = locker.transaction()
        await lock.start()
        locked = await locker.fetch(
            "SELECT id FROM outbox WHERE event_id = ANY($1::text[]) FOR UPDATE", list(event_ids)
        )
        assert len(locked) == EVENTS

        async with TopicReader(infra.kafka_bootstrap, topic.name) as reader:
            first = processes.start(
                "tests.support.relay_process", plumbing_db, infra.kafka_bootstrap, name="relay-1"
            )

            async def all_published_once() -> bool:
                await reader.poll()
                return set(reader.event_ids()) == event_ids

            await wait_for(all_published_once, message="the relay did not publish every event")
            blocked = await wait_for(
                lambda: blocked_relay_backends(pool, locker.get_server_pid()),
                message="the relay is not waiting to mark the rows it published",
            )
            assert first.alive()

            await first.kill()
            # Its mark is one autocommit statement: the server would still run it
            # to the end once the lock goes (true, as Kafka has every event).  A
            # relay that died before its mark reached the server is what matters,
            # so its connection dies too, before the lock is released.
            await pool.execute(
                "SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid", blocked
            )
            await lock.rollback()

            async def relay_backend_gone() -> bool:
                still: int = await pool.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1::int[])", blocked
                )
                return still == 0

            await wait_for(relay_backend_gone, message="the killed relay's backend lingers")
            # Its statement died with it: Kafka has every event, the outbox says none is sent.
            unsent = await locker.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            assert unsent == EVENTS

            second = processes.start(
                "tests.support.relay_process", plumbing_db, infra.kafka_bootstrap, name="relay-2"
            )

            async def all_marked() -> bool:
                unsent: int = await locker.fetchval(
                    "SELECT count(*) FROM outbox WHERE published_at IS NULL"
                )
                return unsent == 0

            await wait_for(all_marked, message="the second relay did not mark every row sent")

            async def all_published_twice() -> bool:
                await reader.poll()
                counts = reader.event_ids()
                return set(counts) == event_ids and min(counts.values()) >= 2

            await wait_for(all_published_twice, message="the events were not published again")
            assert await second.terminate() == 0

            # Per key, each relay pass published in outbox order.
            first_seen: dict[str, list[int]] = defaultdict(list)
            seen: set[str] = set()
            for record in sorted(reader.records, key=lambda r: (r.partition, r.offset)):
                envelope = decode_envelope(record.value)
                assert record.key == envelope.key.encode()
                if envelope.event_id not in seen:
                    seen.add(envelope.event_id)
                    first_seen[envelope.key].append(msgspec.json.decode(envelope.payload)["n"])
            for key, numbers in first_seen.items():
                assert numbers == sorted(numbers), f"events of {key} were published out of order"
    finally:
        await locker.close()

    # Downstream, the idempotent consumer turns the duplicates into one effect each.
    await apply_all_with_an_idempotent_consumer(infra, pool, topic.name)
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM effects") == EVENTS
        assert await conn.fetchval("SELECT count(DISTINCT event_id) FROM effects") == EVENTS
        applied = await conn.fetch("SELECT event_id FROM effects")
    assert {row["event_id"] for row in applied} == event_ids


async def apply_all_with_an_idempotent_consumer(infra: Infra, pool: db.Pool, topic: str) -> None:
    name = unique_name("effects")

    async def apply(conn: db.Connection, envelope: Envelope, event: Event) -> None:
        assert isinstance(event, Ping)
        await conn.execute(
            "INSERT INTO effects (event_id, n) VALUES ($1, $2)", envelope.event_id, event.n
        )

    producer = kafka.new_producer(infra.kafka_bootstrap, client_id=name)
    await producer.start()
    consumer = IdempotentConsumer(
        name=name,
        bootstrap=infra.kafka_bootstrap,
        topics=[topic],
        registry=EventRegistry([Ping]),
        handler=apply,
        pool=pool,
        producer=producer,
    )
    running = asyncio.create_task(consumer.run())
    try:
        await wait_for(
            lambda: group_caught_up(infra.kafka_bootstrap, name, topic),
            interval=0.2,
            ignore=(KafkaError,),  # the group's coordinator is still being elected
            message="the consumer did not consume the whole topic",
        )
    finally:
        consumer.stop()
        await asyncio.wait_for(running, 15)
        await producer.stop()
    async with pool.acquire() as conn:
        duplicates = await conn.fetchval(
            "SELECT count(*) FROM processed_events WHERE consumer = $1", name
        )
    assert duplicates == EVENTS
