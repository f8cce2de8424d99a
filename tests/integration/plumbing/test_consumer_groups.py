"""Two deployments on one cluster (``MARKETPLACE_TOPIC_PREFIX``) never share a consumer group."""

from __future__ import annotations

import asyncio

from shared import db, kafka
from shared.consumer import IdempotentConsumer
from shared.contracts.envelope import Envelope, Event, EventRegistry, Topic
from tests.support.consuming import caught_up, produce_pings
from tests.support.events import Ping
from tests.support.infra import Infra, unique_name
from tests.support.waiting import wait_for


async def test_the_topic_prefix_namespaces_the_consumer_group_too(
    infra: Infra, pool: db.Pool
) -> None:
    """Same service, same consumer name, two prefixes: each commits in its own group.

    Sharing the bare name as group id, the two deployments would rebalance each
    other and commit their offsets into one group.
    """
    bare, name = unique_name("shared"), unique_name("consumer")
    prefixes = (f"{unique_name('a')}.", f"{unique_name('b')}.")
    topic = Topic(bare, 1, "test key", (Ping,))
    for prefix in prefixes:
        await kafka.ensure_topics(infra.kafka_bootstrap, kafka.topic_specs([topic], prefix))
        await produce_pings(infra, prefix + bare, range(3), keys=1)
    applied: list[str] = []

    async def record(_conn: db.Connection, envelope: Envelope, _event: Event) -> None:
        applied.append(envelope.event_id)

    producer = kafka.new_producer(infra.kafka_bootstrap, client_id=name)
    await producer.start()
    consumers = [
        IdempotentConsumer(
            name=name,
            bootstrap=infra.kafka_bootstrap,
            topics=[bare],
            topic_prefix=prefix,
            registry=EventRegistry([Ping]),
            handler=record,
            pool=pool,
            producer=producer,
        )
        for prefix in prefixes
    ]
    running = [asyncio.create_task(consumer.run()) for consumer in consumers]
    try:
        await wait_for(lambda: len(applied) == 6, message="not every event was applied")
        for prefix in prefixes:
            await caught_up(infra, prefix + name, prefix + bare)
        assert not any(task.done() for task in running)
    finally:
        for consumer in consumers:
            consumer.stop()
        await asyncio.wait_for(asyncio.gather(*running), 15)
        await producer.stop()
