"""The outbox relay: every committed event reaches Kafka, promptly, from one relay at a time."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import asyncpg
from prometheus_client import REGISTRY

from shared import db, kafka
from shared.contracts.envelope import Envelope, decode_envelope
from shared.outbox import OutboxRelay, append
from tests.support.events import TEST_PRODUCER, Ping, ping_topic
from tests.support.infra import Infra, unique_name
from tests.support.kafka import NewTopic, TopicReader
from tests.support.waiting import wait_for

WRITERS = 32
TRANSACTIONS_PER_WRITER = 8


@asynccontextmanager
async def running_relay(
    infra: Infra, pool: db.Pool, **options: float
) -> AsyncIterator[OutboxRelay]:
    producer = kafka.new_producer(infra.kafka_bootstrap, client_id=unique_name("relay"))
    await producer.start()
    relay = OutboxRelay(pool, producer, **options)  # type: ignore[arg-type]
    running = asyncio.create_task(relay.run())
    try:
        yield relay
    finally:
        relay.stop()
        await asyncio.wait_for(running, 15)
        await producer.stop()


async def unsent(pool: db.Pool) -> int:
    count: int = await pool.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL")
    return count


async def test_every_event_committed_by_32_concurrent_writers_is_on_the_topic_in_key_order(
    infra: Infra, pool: db.Pool, plumbing_db: str, new_topic: NewTopic
) -> None:
    """Writers commit in random order after random delays, some roll back.

    A relay that followed an id cursor would skip the rows of transactions that
    committed after a higher id was published; a relay that read uncommitted
    intent would publish the rolled-back ones.
    """
    topic = ping_topic(await new_topic(partitions=6))
    committed: set[str] = set()
    rolled_back: set[str] = set()
    writers_pool = await db.create_pool(plumbing_db, min_size=WRITERS, max_size=WRITERS)
    rng = random.Random(7)

    async def writer(number: int) -> None:
        key = f"writer-{number}"
        sequence = 0
        for _ in range(TRANSACTIONS_PER_WRITER):
            delay = rng.uniform(0, 0.05)
            keep = rng.random() > 0.2
            async with writers_pool.acquire() as conn:
                transaction = conn.transaction()
                await transaction.start()
                envelope = await append(
                    conn,
                    topic,
                    Ping(n=sequence + 1),
                    key=key,
                    producer=TEST_PRODUCER,
                    sequence=sequence + 1 if keep else None,
                )
                await conn.execute("SELECT pg_sleep($1)", delay)  # work before the commit
                if keep:
                    await transaction.commit()
                    committed.add(envelope.event_id)
                    sequence += 1
                else:
                    await transaction.rollback()
                    rolled_back.add(envelope.event_id)

    try:
        async with (
            running_relay(infra, pool, idle_poll_seconds=0.05),
            TopicReader(infra.kafka_bootstrap, topic.name) as reader,
        ):
            await asyncio.gather(*(writer(n) for n in range(WRITERS)))

            async def all_on_the_topic() -> bool:
                await reader.poll()
                return committed <= set(reader.event_ids())

            await wait_for(all_on_the_topic, message="committed events are missing on the topic")
            assert await unsent(pool) == 0
    finally:
        await writers_pool.close()

    seen = reader.event_ids()
    assert not rolled_back & set(seen), "a rolled-back event was published"
    assert set(seen) == committed
    sequences: dict[str, list[int | None]] = defaultdict(list)
    for record in sorted(reader.records, key=lambda r: (r.partition, r.offset)):
        envelope: Envelope = decode_envelope(record.value)
        sequences[envelope.key].append(envelope.sequence)
    for key, numbers in sequences.items():
        assert numbers == list(range(1, len(numbers) + 1)), f"{key} out of order: {numbers}"


async def test_an_event_committed_while_a_pass_runs_is_relayed_without_waiting_for_a_poll(
    infra: Infra, pool: db.Pool, plumbing_db: str, new_topic: NewTopic
) -> None:
    """The pass is held open on the row lock of its first event; a second commits meanwhile.

    The idle poll is a minute, so only a relay that keeps the mid-pass arrival
    in mind (rather than napping after the pass) relays the second in time.
    """
    topic = ping_topic(await new_topic(partitions=1))
    async with db.unit_of_work(pool) as conn:
        first = await append(conn, topic, Ping(n=1), key="k", producer=TEST_PRODUCER)
    locker: asyncpg.Connection[asyncpg.Record] = await asyncpg.connect(plumbing_db)
    try:
        async with (
            TopicReader(infra.kafka_bootstrap, topic.name) as reader,
            running_relay(infra, pool, idle_poll_seconds=60) as relay,
        ):
            holding = locker.transaction()
            await holding.start()
            await locker.execute(
                "SELECT 1 FROM outbox WHERE event_id = $1 FOR UPDATE", first.event_id
            )

            async def published(*event_ids: str) -> bool:
                await reader.poll()
                return set(event_ids) <= set(reader.event_ids())

            await wait_for(lambda: published(first.event_id), message="the first was not sent")
            assert relay.leading
            async with db.unit_of_work(pool) as conn:
                second = await append(conn, topic, Ping(n=2), key="k", producer=TEST_PRODUCER)
            await holding.rollback()  # the pass marks the first sent and ends

            await wait_for(
                lambda: published(second.event_id),
                timeout=5,
                message="an event committed mid-pass waited for the idle poll",
            )
    finally:
        await locker.close()


async def test_one_relay_leads_and_a_stopped_leader_hands_over(
    infra: Infra, pool: db.Pool, plumbing_db: str, new_topic: NewTopic
) -> None:
    topic = ping_topic(await new_topic(partitions=1))
    other_pool = await db.create_pool(plumbing_db, min_size=1, max_size=3)

    async def all_sent() -> bool:
        return await unsent(pool) == 0

    try:
        async with running_relay(infra, pool, election_poll_seconds=0.05) as first:
            await wait_for(lambda: first.leading, message="no relay was elected")
            async with running_relay(infra, other_pool, election_poll_seconds=0.05) as second:
                async with db.unit_of_work(pool) as conn:
                    await append(conn, topic, Ping(n=1), key="k", producer=TEST_PRODUCER)
                await wait_for(all_sent, message="the leader did not relay")
                assert first.leading
                assert not second.leading
                first.stop()
                await wait_for(lambda: second.leading, message="the second relay never took over")
                async with db.unit_of_work(pool) as conn:
                    await append(conn, topic, Ping(n=2), key="k", producer=TEST_PRODUCER)
                await wait_for(all_sent, message="the new leader did not relay")
    finally:
        await other_pool.close()
    # Nothing of the election outlives the relays on pooled connections.
    held = await pool.fetchval(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    )
    assert held == 0


async def test_the_relay_exports_the_real_backlog(
    infra: Infra, pool: db.Pool, new_topic: NewTopic
) -> None:
    topic = ping_topic(await new_topic(partitions=1))
    async with db.unit_of_work(pool) as conn:
        for n in range(5):
            await append(conn, topic, Ping(n=n), key="k", producer=TEST_PRODUCER)
        await conn.execute("UPDATE outbox SET created_at = now() - interval '90 seconds'")

    sample: Callable[[str], float | None] = REGISTRY.get_sample_value
    async with pool.acquire() as leader:
        # Another relay leads, so this one only watches.
        await leader.execute("SELECT pg_advisory_lock(x'6F7574626F78'::bigint)")
        async with running_relay(infra, pool, backlog_gauge_seconds=0.05) as relay:
            await wait_for(
                lambda: sample("outbox_unsent_events") == 5, message="the backlog was not exported"
            )
            age = sample("outbox_oldest_unsent_age_seconds")
            assert age is not None
            assert age >= 90
            assert not relay.leading
        await leader.execute("SELECT pg_advisory_unlock_all()")

    async with running_relay(infra, pool, backlog_gauge_seconds=0.05):

        async def drained() -> bool:
            return await unsent(pool) == 0 and sample("outbox_unsent_events") == 0

        await wait_for(drained, message="the exported backlog did not drain")
        assert sample("outbox_oldest_unsent_age_seconds") == 0
