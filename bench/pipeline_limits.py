"""Kafka's raw parts beside the pipeline: the events it published, produced and read again.

* ``published``: every event the pipeline published, read back from its topics.
* ``produce_as_the_relay``: those events produced again to a fresh topic with
  the services' producer settings, a relay's batch at a time.
* ``bench.settlement_backlog.raw_getmany`` reads them back, as bare as a consumer gets.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from shared import kafka

PARTITIONS = 6
RELAY_BATCH = 1000  # shared.outbox.OutboxRelay's batch_size: sent, then every ack awaited


@dataclass(frozen=True)
class KafkaLimit:
    events: int
    produce_per_s: float
    consume_per_s: float


Record = tuple[bytes | None, bytes, list[tuple[str, bytes]]]


async def published(bootstrap: str, topics: list[str]) -> dict[str, list[Record]]:
    """Every event the pipeline published on each of ``topics``, from the beginning."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [
            TopicPartition(topic, p)
            for topic in topics
            for p in sorted(
                consumer.partitions_for_topic(topic) or await _partitions(consumer, topic)
            )
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        records: dict[str, list[Record]] = {topic: [] for topic in topics}
        while [p for p in partitions if await consumer.position(p) < ends[p]]:
            batches = await consumer.getmany(timeout_ms=1000, max_records=5000)
            for partition, batch in batches.items():
                records[partition.topic].extend(
                    (r.key, r.value, list(r.headers)) for r in batch if r.value
                )
        return records
    finally:
        await consumer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    await consumer._client.force_metadata_update()  # aiokafka has no public call
    return consumer.partitions_for_topic(topic) or set()


async def fresh_topic(bootstrap: str, partitions: int = PARTITIONS) -> str:
    topic = f"bench.pipeline.raw.{uuid.uuid4().hex[:10]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()
    return topic


async def delete_topic(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([topic])
    finally:
        await admin.close()


async def warm_producer(bootstrap: str, topic: str) -> AIOKafkaProducer:
    """A producer with the services' settings that has already written to every partition.

    A fresh topic's leaders are elected, and learnt, before any clock starts.
    """
    producer = kafka.new_producer(bootstrap, client_id="bench-pipeline-raw")
    await producer.start()
    try:
        for partition in range(PARTITIONS):
            await producer.send_and_wait(topic, b"warm-up", partition=partition)
    except BaseException:
        await producer.stop()
        raise
    return producer


async def produce_as_the_relay(
    producer: AIOKafkaProducer, topic: str, records: list[Record]
) -> None:
    """Produce ``records`` the way the outbox relay does: a batch of ``RELAY_BATCH``
    handed to the producer, then every acknowledgement awaited, then the next batch.

    Handing the producer tens of thousands of records at once (as this bench did)
    measures how it copes with a queue the relay never builds.  Either way the
    rate is bound by round trips (one produce request in flight per broker, at
    most ``max_batch_size`` per partition in it), so it follows the broker's
    latency, which a saturated machine makes swing; the CPU it costs is steadier.
    """
    for start in range(0, len(records), RELAY_BATCH):
        deliveries = [
            await producer.send(topic, value=value, key=key, headers=headers)
            for key, value, headers in records[start : start + RELAY_BATCH]
        ]
        await asyncio.gather(*deliveries)


async def delete_topics(bootstrap: str, prefix: str) -> None:
    """The run's topics, so a shared broker does not collect them run after run."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        ours = [t for t in await admin.list_topics() if t.startswith(prefix)]
        if ours:
            await admin.delete_topics(ours)
    finally:
        await admin.close()
