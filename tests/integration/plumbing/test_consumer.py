"""The idempotent consumer against a real broker and database.

* killed mid-batch (SIGKILL, a real separate process) and restarted, it
  applies every event exactly once, per event and in batch mode;
* what it cannot decode or does not know, and what fails permanently, goes to
  ``<topic>.dlq`` with the error in headers, and the next message is processed;
* a transient failure is retried and the event applied once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable

import msgspec
import pytest
from aiokafka.errors import KafkaError

from shared import db, kafka
from shared.consumer import IdempotentConsumer, PermanentError, RetryPolicy
from shared.contracts.envelope import (
    Envelope,
    Event,
    EventRegistry,
    encode_envelope,
    new_envelope,
)
from shared.ids import new_id
from shared.outbox import kafka_headers
from tests.support.consuming import (
    caught_up,
    count_effects,
    dead_letters,
    headers_of,
    ping_message,
    produce_pings,
)
from tests.support.events import TEST_PRODUCER, Ping
from tests.support.infra import Infra, unique_name
from tests.support.kafka import (
    NewTopic,
    committed_offsets,
    end_offsets,
    group_caught_up,
    produce,
)
from tests.support.processes import Processes
from tests.support.waiting import wait_for

Handler = Callable[[db.Connection, Envelope, Event], Awaitable[None]]
FAST_RETRIES = RetryPolicy(max_attempts=3, first_backoff=0.01, max_backoff=0.05)


async def record_effect(conn: db.Connection, envelope: Envelope, event: Event) -> None:
    assert isinstance(event, Ping)
    await conn.execute(
        "INSERT INTO effects (event_id, n) VALUES ($1, $2)", envelope.event_id, event.n
    )


# --------------------------------------------------------------------------- killed mid-batch

EVENTS = 450


@pytest.mark.parametrize("mode", ["per-event", "batch"])
async def test_a_consumer_killed_mid_batch_applies_every_event_once_after_restart(
    infra: Infra,
    pool: db.Pool,
    plumbing_db: str,
    new_topic: NewTopic,
    processes: Processes,
    mode: str,
) -> None:
    topic = await new_topic(partitions=3)
    envelopes = await produce_pings(infra, topic, range(EVENTS), keys=30)
    assert len(await end_offsets(infra.kafka_bootstrap, topic)) == 3
    name = unique_name("killed")
    # Work inside each transaction: 0.01 s per event, or 0.3 s per chunk of 50.
    work = ("0.01",) if mode == "per-event" else ("0.3", "batch")
    args = (plumbing_db, infra.kafka_bootstrap, topic, name, *work)

    first = processes.start("tests.support.consumer_process", *args, name="consumer-1")

    async def applied_but_uncommitted() -> bool:
        committed = sum((await committed_offsets(infra.kafka_bootstrap, name, topic)).values())
        applied = await count_effects(pool)
        return applied >= 30 and applied - committed >= 10

    async def inside_a_chunk() -> bool:
        # Some chunks committed, and another chunk's transaction open right now.
        return await count_effects(pool) > 0 and await pool.fetchval(
            "SELECT count(*) > 0 FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%'"
            " AND state = 'active' AND datname = current_database()"
        )

    await wait_for(
        applied_but_uncommitted if mode == "per-event" else inside_a_chunk,
        timeout=30,
        interval=0.02,
        ignore=(KafkaError,),
        message="the consumer did not get going",
    )
    await first.kill()

    applied = await count_effects(pool)
    committed = sum((await committed_offsets(infra.kafka_bootstrap, name, topic)).values())
    # The kill landed mid-batch: some applied events' offsets were never committed
    # (per event), or a chunk's transaction was cut short (batch); either way Kafka
    # delivers them again.
    assert committed < applied < EVENTS if mode == "per-event" else 0 < applied < EVENTS

    second = processes.start("tests.support.consumer_process", *args, name="consumer-2")

    async def all_applied() -> bool:
        return await count_effects(pool) >= EVENTS and await group_caught_up(
            infra.kafka_bootstrap, name, topic
        )

    # The dead member holds its partitions until its session times out (10 s).
    await wait_for(
        all_applied,
        timeout=60,
        interval=0.2,
        ignore=(KafkaError,),
        message="the restarted consumer did not apply the rest",
    )
    assert await second.terminate() == 0

    rows = await pool.fetch("SELECT event_id, applied_by FROM effects")
    per_event = Counter(row["event_id"] for row in rows)
    assert len(rows) == EVENTS
    assert set(per_event) == {envelope.event_id for envelope in envelopes}
    assert max(per_event.values()) == 1
    assert len({row["applied_by"] for row in rows}) >= 2  # both processes did part of it
    processed = await pool.fetchval(
        "SELECT count(*) FROM processed_events WHERE consumer = $1", name
    )
    assert processed == EVENTS


# --------------------------------------------------------------------------- in-process runs


@contextlib.asynccontextmanager
async def consuming(
    infra: Infra, pool: db.Pool, topic: str, handler: Handler
) -> AsyncIterator[str]:
    """Run an IdempotentConsumer (fresh group) on ``topic`` for the block; yield its name."""
    name = unique_name("consumer")
    producer = kafka.new_producer(infra.kafka_bootstrap, client_id=name)
    await producer.start()
    consumer = IdempotentConsumer(
        name=name,
        bootstrap=infra.kafka_bootstrap,
        topics=[topic],
        registry=EventRegistry([Ping]),
        handler=handler,
        pool=pool,
        producer=producer,
        retry=FAST_RETRIES,
    )
    running = asyncio.create_task(consumer.run())
    try:
        yield name
        assert not running.done(), "the consumer stopped by itself"
    finally:
        consumer.stop()
        await asyncio.wait_for(running, 15)
        await producer.stop()


async def test_undecodable_and_unknown_messages_are_dead_lettered_and_the_next_is_processed(
    infra: Infra, pool: db.Pool, new_topic: NewTopic
) -> None:
    topic = await new_topic(partitions=3)
    garbage = b"\x00\xff this is not JSON"
    ping = new_envelope(Ping(n=1), key="k", producer=TEST_PRODUCER)
    unknown = msgspec.structs.replace(ping, type="test.never-heard-of-it")
    newer = msgspec.structs.replace(ping, event_id=new_id("evt"), schema_version=2)
    _, good_value, good = ping_message(7, "k")
    # One key, so one partition: the good message comes after the bad ones.
    await produce(infra.kafka_bootstrap, topic, [(b"k", garbage)])
    await produce(
        infra.kafka_bootstrap,
        topic,
        [(b"k", encode_envelope(unknown))],
        headers=kafka_headers(unknown.type, unknown.event_id),
    )
    await produce(
        infra.kafka_bootstrap, topic, [(b"k", encode_envelope(newer)), (b"k", good_value)]
    )

    async with consuming(infra, pool, topic, record_effect) as name:
        await wait_for(
            lambda: pool.fetchval("SELECT n FROM effects WHERE event_id = $1", good.event_id),
            message="the good message after the bad ones was not processed",
        )
        await caught_up(infra, name, topic)

    letters = await dead_letters(infra, topic, 3)
    assert len(letters) == 3
    by_offset = sorted(letters, key=lambda r: int(headers_of(r)["dlq-original-offset"]))
    expected = [
        (garbage, "DecodeError"),
        (encode_envelope(unknown), "UnknownEvent"),
        (encode_envelope(newer), "UnknownEvent"),
    ]
    for offset, (record, (value, error_class)) in enumerate(zip(by_offset, expected, strict=True)):
        headers = headers_of(record)
        assert getattr(record, "value") == value  # noqa: B009
        assert getattr(record, "key") == b"k"  # noqa: B009
        assert headers["dlq-error-class"] == error_class
        assert headers["dlq-error"]
        assert headers["dlq-consumer"] == name
        assert headers["dlq-original-topic"] == topic
        assert headers["dlq-original-offset"] == str(offset)
    assert headers_of(by_offset[1])["event-type"] == "test.never-heard-of-it"  # kept
    assert "never-heard-of-it" in headers_of(by_offset[1])["dlq-error"]
    assert await count_effects(pool) == 1


async def test_a_permanent_failure_is_dead_lettered_and_the_next_is_processed(
    infra: Infra, pool: db.Pool, new_topic: NewTopic
) -> None:
    topic = await new_topic(partitions=1)
    envelopes = await produce_pings(infra, topic, range(3), keys=1)
    attempts: Counter[int] = Counter()

    async def refuse_one(conn: db.Connection, envelope: Envelope, event: Event) -> None:
        assert isinstance(event, Ping)
        attempts[event.n] += 1
        await record_effect(conn, envelope, event)
        if event.n == 1:
            raise PermanentError("offering 1 does not exist")

    async with consuming(infra, pool, topic, refuse_one) as name:
        await caught_up(infra, name, topic)

    (letter,) = await dead_letters(infra, topic, 1)
    assert headers_of(letter)["dlq-error-class"] == "PermanentError"
    assert headers_of(letter)["dlq-error"] == "offering 1 does not exist"
    assert getattr(letter, "value") == encode_envelope(envelopes[1])  # noqa: B009
    assert attempts == {0: 1, 1: 1, 2: 1}  # no retry for a permanent failure
    rows = await pool.fetch("SELECT n FROM effects ORDER BY n")
    assert [row["n"] for row in rows] == [0, 2]  # its partial effect was rolled back


@pytest.mark.parametrize(
    "failure",
    [ConnectionError("database went away"), RuntimeError("flaky downstream")],
    ids=["transient-db-error", "other-error"],
)
async def test_a_handler_failing_twice_then_succeeding_applies_the_event_once(
    infra: Infra, pool: db.Pool, new_topic: NewTopic, failure: Exception
) -> None:
    topic = await new_topic(partitions=1)
    (envelope,) = await produce_pings(infra, topic, range(1), keys=1)
    attempts = 0

    async def flaky(conn: db.Connection, envelope: Envelope, event: Event) -> None:
        nonlocal attempts
        attempts += 1
        await record_effect(conn, envelope, event)
        if attempts <= 2:
            raise failure

    async with consuming(infra, pool, topic, flaky) as name:
        await caught_up(infra, name, topic)

    assert attempts == 3
    rows = await pool.fetch("SELECT event_id FROM effects")
    assert [row["event_id"] for row in rows] == [envelope.event_id]
    assert await end_offsets(infra.kafka_bootstrap, f"{topic}.dlq") == {0: 0}


async def test_a_handler_that_keeps_failing_is_dead_lettered_after_its_attempts(
    infra: Infra, pool: db.Pool, new_topic: NewTopic
) -> None:
    topic = await new_topic(partitions=1)
    await produce_pings(infra, topic, range(2), keys=1)
    attempts: Counter[int] = Counter()

    async def broken_for_zero(conn: db.Connection, envelope: Envelope, event: Event) -> None:
        assert isinstance(event, Ping)
        attempts[event.n] += 1
        if event.n == 0:
            raise ValueError("cannot apply zero")
        await record_effect(conn, envelope, event)

    async with consuming(infra, pool, topic, broken_for_zero) as name:
        await caught_up(infra, name, topic)

    (letter,) = await dead_letters(infra, topic, 1)
    assert headers_of(letter)["dlq-error-class"] == "ValueError"
    assert attempts == {0: FAST_RETRIES.max_attempts, 1: 1}
    assert [row["n"] for row in await pool.fetch("SELECT n FROM effects")] == [1]


async def test_a_redelivered_event_is_not_applied_again(
    infra: Infra, pool: db.Pool, new_topic: NewTopic
) -> None:
    topic = await new_topic(partitions=2)
    key, value, envelope = ping_message(1, "k")
    await produce(infra.kafka_bootstrap, topic, [(key, value), (key, value), (key, value)])
    async with consuming(infra, pool, topic, record_effect) as name:
        await caught_up(infra, name, topic)
    assert await count_effects(pool) == 1
    processed = await pool.fetchval(
        "SELECT count(*) FROM processed_events WHERE consumer = $1 AND event_id = $2",
        name,
        envelope.event_id,
    )
    assert processed == 1
