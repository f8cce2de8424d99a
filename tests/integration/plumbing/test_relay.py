"""The outbox relay: every committed event reaches Kafka, promptly, from one relay at a time."""

from __future__ import annotations

import asyncio
import gc
import logging
import random
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError
from prometheus_client import REGISTRY

from shared import db, kafka
from shared.contracts.envelope import Envelope, decode_envelope
from shared.outbox import OutboxRelay, append
from tests.support.events import TEST_PRODUCER, Ping, ping_topic
from tests.support.infra import Infra, unique_name
from tests.support.kafka import NewTopic as NewTopicFixture
from tests.support.kafka import TopicReader
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
    infra: Infra, pool: db.Pool, plumbing_db: str, new_topic: NewTopicFixture
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
    infra: Infra, pool: db.Pool, plumbing_db: str, new_topic: NewTopicFixture
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
    infra: Infra, pool: db.Pool, plumbing_db: str, new_topic: NewTopicFixture
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


async def test_an_election_cut_short_leaves_no_lock_on_a_pooled_connection(
    infra: Infra, plumbing_db: str
) -> None:
    """The pool resets nothing on release: a lock the server granted to a statement whose
    reply was never read (a cancellation, a timeout) must not stay with a pooled connection,
    where no relay leads with it and none other can be elected while it lives."""
    one = await db.create_pool(plumbing_db, min_size=1, max_size=1)
    other = await db.create_pool(plumbing_db, min_size=1, max_size=1)
    producer = kafka.new_producer(infra.kafka_bootstrap, client_id=unique_name("relay"))
    await producer.start()
    try:
        cut_short = OutboxRelay(one, producer)
        # Once through, so the lock's statement is prepared: the next election sends it at
        # once and first waits on its reply, where it is cancelled.
        assert await cut_short._lead()
        await cut_short._resign()
        electing = asyncio.create_task(cut_short._lead())
        await asyncio.sleep(0)
        electing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await electing
        assert not cut_short.leading
        rival = OutboxRelay(other, producer)
        await wait_for(rival._lead, timeout=5, message="the cut-short election kept the lock")
        await rival._resign()
    finally:
        await producer.stop()
        await one.close()
        await other.close()


async def test_the_relay_exports_the_real_backlog(
    infra: Infra, pool: db.Pool, new_topic: NewTopicFixture
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


SECRET = "card-4111111111111111"


async def refusing_topic(infra: Infra) -> str:
    """A topic whose broker refuses every message over 1 KiB; the producer allows them,
    so each send is handed over and fails at its acknowledgement."""
    name = unique_name("refusing", max_label=60)
    admin = AIOKafkaAdminClient(bootstrap_servers=infra.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(name, 3, 1, topic_configs={"max.message.bytes": "1024"})]
        )
    finally:
        await admin.close()
    return name


@asynccontextmanager
async def leading_relay(
    infra: Infra, pool: db.Pool
) -> AsyncIterator[tuple[OutboxRelay, list[dict[str, object]]]]:
    """A relay that leads, driven by hand, and the exceptions the loop found unretrieved."""
    unretrieved: list[dict[str, object]] = []
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()

    def note(_: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
        if "never retrieved" in str(context.get("message")):
            unretrieved.append(context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(note)
    producer = kafka.new_producer(infra.kafka_bootstrap, client_id=unique_name("relay"))
    await producer.start()
    try:
        relay = OutboxRelay(pool, producer)
        assert await relay._lead()
        yield relay, unretrieved
    finally:
        # The producer holds on to its deliveries until it stops; collected then,
        # an exception never retrieved is reported to the handler above.
        await producer.stop()
        gc.collect()
        await asyncio.sleep(0)
        loop.set_exception_handler(previous)


async def refused_batch(relay: OutboxRelay) -> str:
    try:
        await relay.publish_batch()
    except KafkaError as error:
        # Not kept: its traceback would keep the deliveries from being collected.
        return type(error).__name__
    raise AssertionError("the batch was published")


async def insert_rows(pool: db.Pool, topic: str, sizes: list[int]) -> None:
    async with pool.acquire() as conn:
        await conn.executemany(
            "INSERT INTO outbox (event_id, topic, key, event_type, payload)"
            " VALUES ($1, $2, $3, 'test.big', $4)",
            [
                (f"evt-{n}", topic, f"k{n}", (SECRET * (size // len(SECRET) + 1)).encode())
                for n, size in enumerate(sizes)
            ],
        )


def logged_errors(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [r.__dict__ for r in caplog.records if "errors" in r.__dict__]


async def test_failed_acknowledgements_are_logged_without_their_payload(
    infra: Infra, pool: db.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    await insert_rows(pool, await refusing_topic(infra), [4000] * 6)
    async with leading_relay(infra, pool) as (relay, unretrieved):
        with caplog.at_level(logging.WARNING, logger="shared.outbox"):
            assert await refused_batch(relay) == "MessageSizeTooLargeError"
    assert unretrieved == []
    [failed] = logged_errors(caplog)
    assert (failed["failed"], failed["batch"]) == (6, 6)
    assert any("MessageSizeTooLarge" in error for error in failed["errors"])
    assert SECRET not in caplog.text
    assert all(SECRET not in str(record) for record in logged_errors(caplog))
    assert await unsent(pool) == 6


async def test_sends_of_a_batch_abandoned_midway_are_still_retrieved_and_logged(
    infra: Infra, pool: db.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    # Five sends are handed over (and will be refused by the broker); the sixth is
    # larger than the producer takes, so sending stops there and the batch is abandoned.
    await insert_rows(pool, await refusing_topic(infra), [4000] * 5 + [2 * 1024 * 1024])
    async with leading_relay(infra, pool) as (relay, unretrieved):
        with caplog.at_level(logging.WARNING, logger="shared.outbox"):
            assert await refused_batch(relay) == "MessageSizeTooLargeError"
            await wait_for(
                lambda: len(logged_errors(caplog)) >= 5,
                timeout=10,
                message="the failures of the abandoned sends were never logged",
            )
    assert unretrieved == []
    assert len(logged_errors(caplog)) == 5
    assert SECRET not in caplog.text
    assert await unsent(pool) == 6


async def test_a_producer_whose_batch_numbers_ran_past_the_broker_is_replaced(
    infra: Infra, pool: db.Pool, new_topic: NewTopicFixture
) -> None:
    """A batch that expired while the broker was away leaves a gap in the idempotent
    producer's numbers for its partition; aiokafka keeps the producer id, so every
    later batch there is refused (``OutOfOrderSequenceNumber``, seen in the Kafka
    restart fault test).  The relay must publish on with a fresh producer."""
    topic = ping_topic(await new_topic(partitions=1))
    made: list[AIOKafkaProducer] = []

    def fresh() -> AIOKafkaProducer:
        made.append(kafka.new_producer(infra.kafka_bootstrap, client_id=unique_name("fresh")))
        return made[-1]

    async def all_sent() -> bool:
        return await unsent(pool) == 0

    producer = kafka.new_producer(infra.kafka_bootstrap, client_id=unique_name("relay"))
    await producer.start()
    relay = OutboxRelay(pool, producer, idle_poll_seconds=0.05, fresh_producer=fresh)
    running = asyncio.create_task(relay.run())
    try:
        async with TopicReader(infra.kafka_bootstrap, topic.name) as reader:
            async with db.unit_of_work(pool) as conn:
                first = await append(conn, topic, Ping(n=1), key="k", producer=TEST_PRODUCER)
            await wait_for(all_sent, message="the first event was not relayed")
            # The gap a lost batch leaves: the producer's next number for the
            # partition runs ahead of what the broker has (aiokafka keeps no
            # public handle on it).
            numbers = producer._txn_manager
            numbers.increment_sequence_number(TopicPartition(topic.name, 0), 5)

            async with db.unit_of_work(pool) as conn:
                later = [
                    await append(conn, topic, Ping(n=n), key="k", producer=TEST_PRODUCER)
                    for n in (2, 3, 4)
                ]
            await wait_for(all_sent, timeout=30, message="the relay stayed stuck on its producer")

            async def all_on_the_topic() -> bool:
                await reader.poll()
                wanted = {first.event_id, *(e.event_id for e in later)}
                return wanted <= set(reader.event_ids())

            await wait_for(all_on_the_topic, message="the later events are not on the topic")
        assert len(made) == 1, "the gap did not break the first producer, or it was replaced twice"
    finally:
        relay.stop()
        await asyncio.wait_for(running, 15)
        await producer.stop()
    assert made[0]._closed  # the relay stops what it made
