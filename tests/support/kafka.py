"""Kafka helpers for tests: fresh topics, reading a whole topic, offsets, raw produce."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from shared.contracts.envelope import Topic
from shared.kafka import ensure_topics, topic_specs
from tests.support.infra import unique_name
from tests.support.waiting import wait_for


class NewTopic(Protocol):
    """The ``new_topic`` fixture: ``await new_topic(partitions=3, compacted=False)``."""

    async def __call__(self, partitions: int = 3, compacted: bool = False) -> str: ...


async def create_topic(
    bootstrap: str, *, label: str = "t", partitions: int = 3, compacted: bool = False
) -> str:
    """Create a uniquely named topic and its ``.dlq``; return once the broker serves both."""
    name = unique_name(label, max_label=60)
    topic = Topic(name, partitions, "test key", (), compacted=compacted)
    await ensure_topics(bootstrap, topic_specs([topic]))
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15_000)
    await admin.start()
    try:

        async def described() -> bool:
            found = await admin.describe_topics([name, topic.dead_letter])
            return (
                all(
                    entry["error_code"] == 0 and entry["partitions"]
                    for entry in found
                    if isinstance(entry, dict)
                )
                and len(found) == 2
            )

        await wait_for(described, timeout=15, message=f"topic {name} was not served")
    finally:
        await admin.close()
    return name


class TopicReader:
    """Reads a topic from its beginning, every partition, without a consumer group."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.records: list[ConsumerRecord] = []
        self._consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )

    async def __aenter__(self) -> TopicReader:
        await self._consumer.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._consumer.stop()

    async def poll(self) -> list[ConsumerRecord]:
        """Fetch what arrived since the last poll; return everything read so far."""
        batches: dict[Any, list[ConsumerRecord]] = await self._consumer.getmany(timeout_ms=100)
        for records in batches.values():
            self.records.extend(records)
        return self.records

    def header(self, record: ConsumerRecord, name: str) -> str | None:
        for key, value in record.headers or ():
            if key == name:
                return bytes(value).decode()
        return None

    def event_ids(self) -> Counter[str]:
        """How many times each ``event-id`` header was read."""
        return Counter(
            event_id
            for record in self.records
            if (event_id := self.header(record, "event-id")) is not None
        )


async def produce(
    bootstrap: str,
    topic: str,
    messages: Sequence[tuple[bytes | None, bytes]],
    headers: Sequence[tuple[str, bytes]] = (),
) -> None:
    """Send raw ``(key, value)`` messages, in order, and wait until all are acknowledged."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for key, value in messages:
            await producer.send_and_wait(topic, value=value, key=key, headers=list(headers))
    finally:
        await producer.stop()


async def partitions_of(bootstrap: str, topic: str) -> list[TopicPartition]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15_000)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    if described["error_code"] != 0 or not described["partitions"]:
        raise AssertionError(f"topic {topic} is not served: {described}")
    return sorted(TopicPartition(topic, p["partition"]) for p in described["partitions"])


async def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """Partition -> offset of the next message to be written."""
    partitions = await partitions_of(bootstrap, topic)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        ends: dict[TopicPartition, int] = await consumer.end_offsets(partitions)
    finally:
        await consumer.stop()
    return {tp.partition: offset for tp, offset in ends.items()}


async def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """Partition -> offset the consumer group committed (partitions never committed: absent)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15_000)
    await admin.start()
    try:
        found: dict[TopicPartition, Any] = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {
        tp.partition: meta.offset
        for tp, meta in found.items()
        if tp.topic == topic and meta.offset >= 0
    }


async def group_caught_up(bootstrap: str, group: str, topic: str) -> bool:
    """Whether the group has committed the end of every partition of ``topic``."""
    ends = await end_offsets(bootstrap, topic)
    committed = await committed_offsets(bootstrap, group, topic)
    return all(committed.get(partition, 0) >= end for partition, end in ends.items())
