"""The batch consumer and per-aggregate sequencing against a real broker and database.

* re-reading the whole topic (offsets lost) applies nothing twice (killed
  with SIGKILL mid-chunk: see test_consumer.py);
* one poison event in a chunk of 500 lands alone in the DLQ and the other 499 apply;
* the database ending the session is retried past the attempt limit, nothing dead-lettered;
* a partition in long backoff neither delays another partition nor causes a rebalance;
* "strict": an event ahead of a gap is parked, not applied, and applies (in
  order) once the gap fills; stale and duplicated sequence numbers are skipped;
* "latest": an event older than the last applied for its key is skipped.
* "strict" dedupes sequenced events by their key's position, not by a row
  per event: a whole topic read again applies nothing twice, and a position
  moved by a concurrent transaction makes the other one retry;
* "strict": an event parked by one member while another applies its
  predecessor is never left waiting, whichever commits first.
* with a linger, events trickling in are applied in fewer, larger chunks,
  each once and within the linger; a full chunk does not wait, and a stop
  ends a linger at once, leaving its events to the next reader.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from prometheus_client import REGISTRY

from shared import db, kafka
from shared.consumer import BatchConsumer, Delivery, RetryPolicy
from shared.contracts.envelope import EventRegistry, decode_envelope
from shared.sequencing import PositionMoved, Sequencing, admit, parked_events, take_ready
from tests.support.consuming import (
    caught_up,
    count_effects,
    dead_letters,
    headers_of,
    ping_message,
    produce_pings,
)
from tests.support.events import Ping
from tests.support.infra import Infra, unique_name
from tests.support.kafka import NewTopic, produce
from tests.support.waiting import wait_for

BatchHandler = Callable[[db.Connection, Sequence[Delivery]], Awaitable[None]]
FAST_RETRIES = RetryPolicy(max_attempts=3, first_backoff=0.01, max_backoff=0.05)


async def insert_effects(conn: db.Connection, deliveries: Sequence[Delivery]) -> None:
    pings = [d.event for d in deliveries if isinstance(d.event, Ping)]
    assert len(pings) == len(deliveries)
    await conn.execute(
        "INSERT INTO effects (event_id, n) SELECT unnest($1::text[]), unnest($2::int[])",
        [d.envelope.event_id for d in deliveries],
        [ping.n for ping in pings],
    )


@contextlib.asynccontextmanager
async def batch_consuming(
    infra: Infra,
    pool: db.Pool,
    topic: str,
    handler: BatchHandler,
    *,
    name: str | None = None,
    group_id: str | None = None,
    retry: RetryPolicy = FAST_RETRIES,
    sequencing: Sequencing | None = None,
    parked_gauge_seconds: float = 15.0,
    max_batch: int = 500,
    linger_seconds: float = 0.0,
) -> AsyncIterator[BatchConsumer]:
    """Run a BatchConsumer on ``topic`` for the block."""
    name = name or unique_name("batch")
    producer = kafka.new_producer(infra.kafka_bootstrap, client_id=name)
    await producer.start()
    consumer = BatchConsumer(
        name=name,
        bootstrap=infra.kafka_bootstrap,
        topics=[topic],
        registry=EventRegistry([Ping]),
        handler=handler,
        pool=pool,
        producer=producer,
        group_id=group_id,
        retry=retry,
        sequencing=sequencing,
        parked_gauge_seconds=parked_gauge_seconds,
        max_batch=max_batch,
        linger_seconds=linger_seconds,
    )
    running = asyncio.create_task(consumer.run())
    try:
        yield consumer
        assert not running.done(), "the consumer stopped by itself"
    finally:
        consumer.stop()
        await asyncio.wait_for(running, 15)
        await producer.stop()


def consumed(name: str, outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "events_consumed_total", {"consumer": name, "outcome": outcome}
    )
    return value or 0.0


# --------------------------------------------------------------------------- redelivery


async def test_reading_the_whole_topic_again_applies_nothing_twice(
    infra: Infra, pool: db.Pool, new_topic: NewTopic
) -> None:
    """What a crash between the database commit and the offset commit leads to, for every event."""
    topic = await new_topic(partitions=2)
    await produce_pings(infra, topic, range(300), keys=7)
    name = unique_name("reread")
    async with batch_consuming(infra, pool, topic, insert_effects, name=name):
        await caught_up(infra, name, topic)
    # The same consumer under a group that committed nothing: every offset is redelivered.
    async with batch_consuming(
        infra, pool, topic, insert_effects, name=name, group_id=f"{name}-again"
    ):
        await caught_up(infra, f"{name}-again", topic)
    assert await count_effects(pool) == 300
    assert consumed(name, "duplicate") == 300


# --------------------------------------------------------------------------- isolating a poison


async def test_one_poison_event_in_a_chunk_of_500_is_dead_lettered_alone(
    infra: Infra, pool: db.Pool, new_topic: NewTopic
) -> None:
    topic = await new_topic(partitions=1)
    envelopes = await produce_pings(infra, topic, range(500), keys=1)
    poison = envelopes[317]
    chunk_sizes: list[int] = []
    alone = 0

    async def refuse_317(conn: db.Connection, deliveries: Sequence[Delivery]) -> None:
        nonlocal alone
        chunk_sizes.append(len(deliveries))
        await insert_effects(conn, deliveries)
        if any(d.envelope.event_id == poison.event_id for d in deliveries):
            alone += len(deliveries) == 1
            raise ValueError("cannot apply 317")

    async with batch_consuming(infra, pool, topic, refuse_317) as consumer:
        await caught_up(infra, consumer.name, topic)

    assert chunk_sizes[0] == 500  # the whole chunk was tried in one transaction first
    (letter,) = await dead_letters(infra, topic, 1)
    assert headers_of(letter)["dlq-error-class"] == "ValueError"
    assert headers_of(letter)["dlq-original-offset"] == "317"
    ns = sorted(row["n"] for row in await pool.fetch("SELECT n FROM effects"))
    assert ns == [n for n in range(500) if n != 317]
    assert consumed(consumer.name, "applied") == 499
    # Bisecting: about log2(500) failing transactions plus the poison's own attempts.
    assert alone == FAST_RETRIES.max_attempts
    assert len(chunk_sizes) < 40


async def test_dead_letters_go_on_through_a_fresh_producer_once_the_shared_one_has_a_gap(
    infra: Infra, pool: db.Pool, new_topic: NewTopic
) -> None:
    """As for the outbox relay: a dead-letter batch that expired while Kafka was away
    leaves a gap in the shared producer's numbers for its partition, and every later
    send there is refused (``OutOfOrderSequenceNumber``); the consumer's partition
    would retry its dead letter for ever."""
    topic = await new_topic(partitions=1)
    envelopes = await produce_pings(infra, topic, range(3), keys=1)
    poison = envelopes[1]
    name = unique_name("dlq-gap")
    producer = kafka.new_producer(infra.kafka_bootstrap, client_id=name)
    await producer.start()
    dlq = f"{topic}.dlq"
    partitions = sorted(await producer.partitions_for(dlq))
    for partition in partitions:
        # A dead letter that reached the broker, then the gap a lost batch leaves
        # (aiokafka keeps no public handle on the numbers).
        await producer.send_and_wait(dlq, b"earlier", partition=partition)
        producer._txn_manager.increment_sequence_number(TopicPartition(dlq, partition), 5)

    async def refuse_the_poison(conn: db.Connection, deliveries: Sequence[Delivery]) -> None:
        await insert_effects(conn, deliveries)
        if any(d.envelope.event_id == poison.event_id for d in deliveries):
            raise ValueError("cannot apply the poison")

    consumer = BatchConsumer(
        name=name,
        bootstrap=infra.kafka_bootstrap,
        topics=[topic],
        registry=EventRegistry([Ping]),
        handler=refuse_the_poison,
        pool=pool,
        producer=producer,
        retry=FAST_RETRIES,
    )
    running = asyncio.create_task(consumer.run())
    try:
        await caught_up(infra, name, topic)
    finally:
        consumer.stop()
        await asyncio.wait_for(running, 15)
        await producer.stop()

    letters = await dead_letters(infra, topic, len(partitions) + 1)
    assert [headers_of(letter).get("dlq-original-offset") for letter in letters].count("1") == 1
    ns = sorted(row["n"] for row in await pool.fetch("SELECT n FROM effects"))
    assert [n for n in ns if n in (0, 1, 2)] == [0, 2]


async def test_a_lost_database_connection_is_retried_past_the_attempt_limit(
    infra: Infra, pool: db.Pool, new_topic: NewTopic
) -> None:
    topic = await new_topic(partitions=1)
    await produce_pings(infra, topic, range(50), keys=5)
    kills = 0

    async def lose_the_connection_again_and_again(
        conn: db.Connection, deliveries: Sequence[Delivery]
    ) -> None:
        nonlocal kills
        await insert_effects(conn, deliveries)
        if kills < 2 * FAST_RETRIES.max_attempts:
            kills += 1
            # The server ends this very session, as a restart would.
            await conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")

    async with batch_consuming(infra, pool, topic, lose_the_connection_again_and_again) as consumer:
        await caught_up(infra, consumer.name, topic)

    assert kills == 2 * FAST_RETRIES.max_attempts
    assert sorted(row["n"] for row in await pool.fetch("SELECT n FROM effects")) == list(range(50))
    assert consumed(consumer.name, "dead_lettered") == 0


# --------------------------------------------------------------------------- partitions apart


async def test_a_partition_in_long_backoff_neither_delays_another_nor_rebalances(
    infra: Infra, pool: db.Pool, new_topic: NewTopic
) -> None:
    topic = await new_topic(partitions=2)
    failing = ping_message(0, "stuck")
    slow_retries = RetryPolicy(max_attempts=2, first_backoff=10.0, max_backoff=10.0)
    tried = asyncio.Event()

    async def fail_zero(conn: db.Connection, deliveries: Sequence[Delivery]) -> None:
        if any(d.envelope.event_id == failing[2].event_id for d in deliveries):
            tried.set()
            raise RuntimeError("downstream refuses 0")
        await insert_effects(conn, deliveries)

    producer = AIOKafkaProducer(bootstrap_servers=infra.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, failing[1], key=failing[0], partition=0)
        async with batch_consuming(infra, pool, topic, fail_zero, retry=slow_retries) as consumer:
            await asyncio.wait_for(tried.wait(), 20)
            others = [ping_message(n, f"other-{n}") for n in range(1, 21)]
            for key, value, _ in others:
                await producer.send_and_wait(topic, value, key=key, partition=1)
            await wait_for(
                lambda: pool.fetchval("SELECT count(*) = 20 FROM effects"),
                timeout=5,
                message="partition 1 waited for partition 0's backoff",
            )
            # Applied while partition 0 still waits out its first backoff (5-10 s):
            # its event has not been given up on yet.
            assert consumed(consumer.name, "dead_lettered") == 0
            (letter,) = await dead_letters(infra, topic, 1)
            await caught_up(infra, consumer.name, topic)
            assert consumer.assignments == 1  # polling went on: no rebalance
    finally:
        await producer.stop()
    assert headers_of(letter)["dlq-original-partition"] == "0"


# --------------------------------------------------------------------------- linger


async def test_with_a_linger_a_trickle_is_applied_in_few_chunks_each_event_once(
    infra: Infra, pool: db.Pool, new_topic: NewTopic
) -> None:
    topic = await new_topic(partitions=1)
    linger = 1.0
    chunks: list[int] = []
    delays: list[float] = []

    async def record_chunks(conn: db.Connection, deliveries: Sequence[Delivery]) -> None:
        await insert_effects(conn, deliveries)
        chunks.append(len(deliveries))
        now = datetime.now(UTC)
        delays.extend((now - d.envelope.occurred_at).total_seconds() for d in deliveries)

    producer = AIOKafkaProducer(bootstrap_servers=infra.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        async with batch_consuming(
            infra, pool, topic, record_chunks, linger_seconds=linger
        ) as consumer:
            await wait_for(lambda: consumer.assignments > 0, message="never assigned")
            # Ten bursts of four, 50 ms apart: ten chunks without a linger.
            for burst in range(10):
                for n in range(burst * 4, burst * 4 + 4):
                    key, value, _ = ping_message(n, f"key-{n}")
                    await producer.send_and_wait(topic, value, key=key)
                await asyncio.sleep(0.05)  # the trickle's pace, not a wait for anything
            await wait_for(
                lambda: pool.fetchval("SELECT count(*) = 40 FROM effects"),
                message="not every event was applied",
            )
            await caught_up(infra, consumer.name, topic)
    finally:
        await producer.stop()
    assert await pool.fetchval("SELECT count(DISTINCT event_id) FROM effects") == 40
    assert sum(chunks) == 40  # no chunk applied twice
    assert len(chunks) <= 3, chunks
    # Each event waited at most the linger, plus a generous margin for a busy machine.
    assert max(delays) < linger + 2.0, max(delays)


async def test_a_full_chunk_does_not_linger_and_a_stop_ends_a_linger_at_once(
    infra: Infra, pool: db.Pool, new_topic: NewTopic
) -> None:
    topic = await new_topic(partitions=1)
    name = unique_name("linger")
    async with batch_consuming(
        infra, pool, topic, insert_effects, name=name, max_batch=5, linger_seconds=60.0
    ) as consumer:
        await produce_pings(infra, topic, range(5), keys=5)
        await wait_for(
            lambda: pool.fetchval("SELECT count(*) = 5 FROM effects"),
            timeout=20,  # well inside the linger: a full chunk is taken at once
            message="a full chunk waited for the linger",
        )
        await produce_pings(infra, topic, range(5, 7), keys=5)
        await wait_for(
            lambda: any(state.pending for state in consumer._partitions.values()),
            message="the two events never reached the lingering worker",
        )
        consumer.stop()
        started = time.monotonic()
    assert time.monotonic() - started < 5  # not the linger's 60 s
    assert await count_effects(pool) == 5
    # Their offsets were not committed: the group's next reader applies them, once.
    async with batch_consuming(infra, pool, topic, insert_effects, name=name):
        await wait_for(
            lambda: pool.fetchval("SELECT count(*) = 7 FROM effects"),
            message="the lingering events were lost",
        )
        await caught_up(infra, name, topic)
    assert await pool.fetchval("SELECT count(DISTINCT event_id) FROM effects") == 7


# --------------------------------------------------------------------------- sequencing


async def produce_sequenced(infra: Infra, topic: str, steps: list[tuple[str, int, int]]) -> None:
    """(key, sequence, n) messages, in the given order."""
    await produce(
        infra.kafka_bootstrap,
        topic,
        [ping_message(n, key, sequence)[:2] for key, sequence, n in steps],
    )


async def test_strict_parks_an_event_ahead_of_a_gap_and_applies_it_in_order_once_filled(
    infra: Infra, pool: db.Pool, new_topic: NewTopic
) -> None:
    topic = await new_topic(partitions=1)
    handed: list[list[tuple[str, int | None]]] = []

    async def record(conn: db.Connection, deliveries: Sequence[Delivery]) -> None:
        handed.append([(d.envelope.key, d.envelope.sequence) for d in deliveries])
        await insert_effects(conn, deliveries)

    async with batch_consuming(infra, pool, topic, record, sequencing="strict") as consumer:
        await produce_sequenced(infra, topic, [("o1", 1, 1), ("o1", 3, 3), ("o1", 4, 4)])
        await caught_up(infra, consumer.name, topic)
        async with pool.acquire() as conn:
            parked = await parked_events(conn, consumer.name)
        assert [(p.key, p.sequence, p.waiting_for) for p in parked] == [("o1", 3, 2), ("o1", 4, 2)]
        assert [row["n"] for row in await pool.fetch("SELECT n FROM effects")] == [1]

        # The missing one, then repeats of 2 (a new event id) and of 1: numbers
        # that applied, which the outbox gives to one event only, so duplicates.
        await produce_sequenced(infra, topic, [("o1", 2, 2)])
        await caught_up(infra, consumer.name, topic)
        await produce_sequenced(infra, topic, [("o1", 2, 20), ("o1", 1, 10), ("o1", 5, 5)])
        await caught_up(infra, consumer.name, topic)

        rows = await pool.fetch("SELECT n FROM effects ORDER BY applied_at, n")
        assert [row["n"] for row in rows] == [1, 2, 3, 4, 5]
        assert [("o1", 2), ("o1", 3), ("o1", 4)] in handed  # released in sequence order
        async with pool.acquire() as conn:
            assert await parked_events(conn, consumer.name) == []
        assert consumed(consumer.name, "duplicate") == 2
        assert consumed(consumer.name, "stale") == 0
        assert consumed(consumer.name, "parked") == 2
        position = await pool.fetchval(
            "SELECT sequence FROM consumer_positions WHERE consumer = $1 AND key = 'o1'",
            consumer.name,
        )
        assert position == 5


async def test_the_parked_events_gauge_follows_what_waits_for_a_gap(
    infra: Infra, pool: db.Pool, new_topic: NewTopic
) -> None:
    topic = await new_topic(partitions=1)
    name = unique_name("gauged")

    def gauge() -> float | None:
        return REGISTRY.get_sample_value("events_parked", {"consumer": name})

    async with batch_consuming(
        infra, pool, topic, insert_effects, name=name, sequencing="strict",
        parked_gauge_seconds=0.05,
    ):  # fmt: skip
        await wait_for(lambda: gauge() == 0, message="the gauge was never exported")
        await produce_sequenced(infra, topic, [("o1", 1, 1), ("o1", 3, 3), ("o1", 4, 4)])
        await caught_up(infra, name, topic)
        await wait_for(lambda: gauge() == 2, message="the parked events were not counted")
        await produce_sequenced(infra, topic, [("o1", 2, 2)])
        await caught_up(infra, name, topic)
        await wait_for(lambda: gauge() == 0, message="the released events were still counted")


async def test_latest_skips_what_is_older_than_the_last_applied_and_allows_gaps(
    infra: Infra, pool: db.Pool, new_topic: NewTopic
) -> None:
    topic = await new_topic(partitions=1)
    async with batch_consuming(infra, pool, topic, insert_effects, sequencing="latest") as c:
        await produce_sequenced(
            infra,
            topic,
            [("a", 5, 5), ("a", 3, 3), ("b", 2, 2), ("a", 7, 7), ("a", 6, 6), ("a", 7, 70)],
        )
        await produce(infra.kafka_bootstrap, topic, [ping_message(100, "a")[:2]])  # unsequenced
        await caught_up(infra, c.name, topic)
        assert consumed(c.name, "stale") == 3
        assert consumed(c.name, "parked") == 0
    rows = await pool.fetch("SELECT n FROM effects")
    assert sorted(row["n"] for row in rows) == [2, 5, 7, 100]


async def test_strict_blames_a_released_event_not_the_one_that_filled_its_gap(
    infra: Infra, pool: db.Pool, new_topic: NewTopic
) -> None:
    """2 arrives first and is parked; 1 fills the gap and releases 2, which cannot apply.

    The event that fails is 2: it alone is dead-lettered and 1 applies.
    """
    topic = await new_topic(partitions=1)

    async def refuse_two(conn: db.Connection, deliveries: Sequence[Delivery]) -> None:
        await insert_effects(conn, deliveries)
        if any(d.envelope.sequence == 2 for d in deliveries):
            raise ValueError("cannot apply 2")

    async with batch_consuming(infra, pool, topic, refuse_two, sequencing="strict") as consumer:
        await produce_sequenced(infra, topic, [("o1", 2, 2)])
        await caught_up(infra, consumer.name, topic)
        await produce_sequenced(infra, topic, [("o1", 1, 1)])
        (letter,) = await dead_letters(infra, topic, 1)
        await caught_up(infra, consumer.name, topic)
        async with pool.acquire() as conn:
            assert await parked_events(conn, consumer.name) == []
    assert [row["n"] for row in await pool.fetch("SELECT n FROM effects")] == [1]
    assert headers_of(letter)["dlq-error"] == "cannot apply 2"


async def test_strict_releases_what_waits_when_the_gap_filler_is_redelivered(
    infra: Infra, pool: db.Pool, new_topic: NewTopic
) -> None:
    """A crash after 1 applied alone (its offset not committed) and before 2 was released."""
    topic = await new_topic(partitions=1)
    one = ping_message(1, "o1", 1)
    async with batch_consuming(infra, pool, topic, insert_effects, sequencing="strict") as c:
        await produce_sequenced(infra, topic, [("o1", 2, 2)])
        await caught_up(infra, c.name, topic)
        # What that crash leaves behind: 1's position (a strict consumer's dedupe
        # for a sequenced event), 2 still parked.  (Parking 2 made o1's row, at 0.)
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "UPDATE consumer_positions SET sequence = 1"
                " WHERE consumer = $1 AND topic = $2 AND key = 'o1'",
                c.name,
                topic,
            )
        await produce(infra.kafka_bootstrap, topic, [one[:2]])
        await caught_up(infra, c.name, topic)
        async with pool.acquire() as conn:
            assert await parked_events(conn, c.name) == []
    assert [row["n"] for row in await pool.fetch("SELECT n FROM effects")] == [2]


async def test_strict_dedupes_sequenced_events_by_position_alone(
    infra: Infra, pool: db.Pool, new_topic: NewTopic
) -> None:
    """Redelivered, duplicated and replayed sequenced events change nothing, without dedupe rows.

    An event without a sequence still gets its dedupe row and is applied once.
    """
    topic = await new_topic(partitions=2)
    steps = [(f"o{k}", sequence, 10 * k + sequence) for k in range(5) for sequence in (1, 2, 3)]
    name = unique_name("positions")
    async with batch_consuming(infra, pool, topic, insert_effects, name=name, sequencing="strict"):
        await produce_sequenced(infra, topic, steps)
        # A duplicate of o0's 2 (same event id) and an unsequenced event, of a key
        # with no numbered event (after a numbered one, strict skips it as stale).
        duplicate = ping_message(2, "o0", 2)
        await produce(
            infra.kafka_bootstrap,
            topic,
            [duplicate[:2], duplicate[:2], ping_message(100, "u0")[:2]],
        )
        await caught_up(infra, name, topic)
    assert await count_effects(pool) == 15 + 1
    # Every offset again, as after lost offsets or a replay from offset 0.
    async with batch_consuming(
        infra, pool, topic, insert_effects, name=name, group_id=f"{name}-again",
        sequencing="strict",
    ):  # fmt: skip
        await caught_up(infra, f"{name}-again", topic)
    assert await count_effects(pool) == 15 + 1
    rows = await pool.fetchval("SELECT count(*) FROM processed_events WHERE consumer = $1", name)
    assert rows == 1  # the unsequenced event's alone
    assert consumed(name, "applied") == 15 + 1
    # Redelivered, not stale: o0's 2 twice more, then the whole replay (18 messages).
    assert consumed(name, "duplicate") >= 2 + 18
    assert consumed(name, "stale") == 0


@pytest.mark.parametrize("known", [False, True], ids=["new key", "known key"])
async def test_a_position_moved_by_a_concurrent_transaction_makes_the_other_retry(
    pool: db.Pool, known: bool
) -> None:
    """Two members applying the same event at once (one still working on a partition it lost).

    The second waits for the first's position write; when the first commits,
    the second's conditional write finds the position moved and raises
    ``PositionMoved`` (retried by the consumer) instead of applying it twice.
    """
    first = 2 if known else 1
    if known:
        await pool.execute(
            "INSERT INTO consumer_positions (consumer, topic, key, sequence)"
            " VALUES ('racing', 't', 'o1', 1)"
        )
    envelope = ping_message(first, "o1", first)[2]
    delivery = Delivery(envelope, Ping(n=first))

    async def admitting(conn: db.Connection) -> None:
        admission = await admit(
            conn, consumer="racing", topic="t", mode="strict", fresh=[delivery],
            messages={}, decode=lambda _: delivery,
        )  # fmt: skip
        assert admission.apply == [delivery]

    async with pool.acquire() as one, pool.acquire() as two:
        first_transaction, second_transaction = one.transaction(), two.transaction()
        await first_transaction.start()
        await admitting(one)
        await second_transaction.start()
        second = asyncio.create_task(admitting(two))
        await wait_for(
            lambda: waiting_on_a_lock(pool, two.get_server_pid()),
            message="the second transaction did not wait for the first",
        )
        assert not second.done()
        await first_transaction.commit()
        # The first committed: the second finds the position moved.
        with pytest.raises(PositionMoved):
            await second
        await second_transaction.rollback()
    assert (
        await pool.fetchval("SELECT sequence FROM consumer_positions WHERE consumer = 'racing'")
        == first
    )


async def test_releasing_a_parked_event_its_redelivery_just_applied_retries_instead(
    pool: db.Pool,
) -> None:
    """A parked event released by one member while another applies its redelivered copy.

    o1 is at 1 with its 2 parked (the gap-filler applied without releasing,
    say).  One member gets 2 again from the topic (a rebalance replays
    offsets the committer had not written yet): at position 1 it applies, by
    position alone.  Meanwhile the other member releases the parked copy: its
    take of the parked row read position 1, so its position write must find
    the position moved (``PositionMoved``) instead of applying 2 a second time.
    """
    _, message, envelope = ping_message(2, "o1", 2)
    delivery = Delivery(envelope, Ping(n=2))
    await pool.execute(
        "INSERT INTO consumer_positions (consumer, topic, key, sequence)"
        " VALUES ('racing', 't', 'o1', 1)"
    )
    await pool.execute(
        "INSERT INTO parked_events (consumer, topic, key, sequence, event_id, message)"
        " VALUES ('racing', 't', 'o1', 2, $1, $2)",
        envelope.event_id,
        message,
    )

    async def releasing(conn: db.Connection) -> tuple[str, bytes] | None:
        return await take_ready(conn, consumer="racing", topic="t", key="o1")

    async with pool.acquire() as one, pool.acquire() as two:
        applying, taking = one.transaction(), two.transaction()
        await applying.start()
        admission = await admit(
            one, consumer="racing", topic="t", mode="strict", fresh=[delivery],
            messages={}, decode=lambda _: delivery,
        )  # fmt: skip
        assert admission.apply == [delivery]
        await taking.start()
        released = asyncio.create_task(releasing(two))
        await wait_for(
            lambda: waiting_on_a_lock(pool, two.get_server_pid()),
            message="the release did not wait for the applying transaction",
        )
        await applying.commit()
        try:
            taken = await released
        except PositionMoved:
            taken = None
        await taking.rollback()
    assert taken is None, "the parked copy of an event just applied was released again"


@pytest.mark.parametrize("known", [False, True], ids=["new key", "known key"])
@pytest.mark.parametrize("parker_first", [True, False], ids=["parker first", "applier first"])
async def test_an_event_parked_while_its_predecessor_applies_is_never_left_waiting(
    pool: db.Pool, known: bool, parker_first: bool
) -> None:
    """Two members: one parks n+1 (it read the position as n-1) while the other applies n.

    Whichever transaction commits first, the event must not stay parked behind
    a number that has applied: either the parker finds n applied and applies
    n+1 itself, or the applier finds n+1 parked and releases it.  The first
    transaction is held open after its admission until the second has either
    finished or is waiting for it.
    """
    n = 2 if known else 1
    if known:
        await pool.execute(
            "INSERT INTO consumer_positions (consumer, topic, key, sequence)"
            " VALUES ('racing', 't', 'o1', 1)"
        )
    made = {s: ping_message(s, "o1", s) for s in (n, n + 1)}
    deliveries = {s: Delivery(envelope, Ping(n=s)) for s, (_, _, envelope) in made.items()}
    by_id = {envelope.event_id: deliveries[s] for s, (_, _, envelope) in made.items()}
    messages = {envelope.event_id: message for _, message, envelope in made.values()}

    async def admitting(
        conn: db.Connection, sequence: int, held: asyncio.Event, gate: asyncio.Event | None
    ) -> list[int | None]:
        """Admit one event as the consumer does, retrying a moved position; what applied."""
        while True:
            try:
                async with conn.transaction():
                    admission = await admit(
                        conn, consumer="racing", topic="t", mode="strict",
                        fresh=[deliveries[sequence]], messages=messages,
                        decode=lambda message: by_id[decode_envelope(message).event_id],
                    )  # fmt: skip
                    held.set()
                    if gate is not None:
                        await gate.wait()
            except PositionMoved:
                gate = None
                continue
            return [d.envelope.sequence for d in admission.apply]

    first, second = (n + 1, n) if parker_first else (n, n + 1)
    first_held, gate = asyncio.Event(), asyncio.Event()
    async with pool.acquire() as one, pool.acquire() as two:
        holding = asyncio.create_task(admitting(one, first, first_held, gate))
        await wait_for(first_held.is_set, message="the first transaction did not admit")
        racing = asyncio.create_task(admitting(two, second, asyncio.Event(), None))
        pid = two.get_server_pid()
        await wait_for(
            lambda: racing.done() or waiting_on_a_lock(pool, pid),
            message="the second transaction neither finished nor waited",
        )
        gate.set()
        applied = await holding + await racing
    assert sorted(s for s in applied if s is not None) == [n, n + 1]
    async with pool.acquire() as conn:
        assert await parked_events(conn, "racing") == [], "n+1 was left parked behind n"
    position = await pool.fetchval("SELECT sequence FROM consumer_positions WHERE key = 'o1'")
    assert position == n + 1


async def waiting_on_a_lock(pool: db.Pool, pid: int) -> bool:
    waiting: bool = await pool.fetchval(
        "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid
    )
    return waiting
