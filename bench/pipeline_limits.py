"""The raw limits beside the pipeline, measured in the same run on the same machine.

* Kafka: the very events the pipeline published (read back from its topics)
  produced again to a fresh topic with the services' producer settings, then
  consumed with ``getmany``; events/s and the orders/s that is at the
  pipeline's events per order.
* PostgreSQL: one asyncpg transaction with the rows a placement writes
  (``bench.orders_place.bare_transaction``), at the same offered loads.
* HTTP: a bare aiohttp POST handler (``bench.orders_bare``) at the same offered loads.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.orders_place import Step, offered_load
from bench.settlement_backlog import raw_getmany
from shared import kafka

PARTITIONS = 6


@dataclass(frozen=True)
class KafkaLimit:
    events: int
    produce_per_s: float
    consume_per_s: float


Record = tuple[bytes | None, bytes, list[tuple[str, bytes]]]


async def published(bootstrap: str, topics: list[str]) -> list[Record]:
    """Every event the pipeline published on ``topics``, from the beginning."""
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
        records: list[Record] = []
        while [p for p in partitions if await consumer.position(p) < ends[p]]:
            batches = await consumer.getmany(timeout_ms=1000, max_records=5000)
            for batch in batches.values():
                records.extend((r.key, r.value, list(r.headers)) for r in batch if r.value)
        return records
    finally:
        await consumer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    await consumer._client.force_metadata_update()  # aiokafka has no public call
    return consumer.partitions_for_topic(topic) or set()


async def kafka_limit(bootstrap: str, records: list[Record]) -> KafkaLimit:
    topic = f"bench.pipeline.raw.{uuid.uuid4().hex[:10]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
        produce = await _produce(bootstrap, topic, records)
        # The warm-up records are there too; the last fetch may hold them.
        seconds = await raw_getmany(bootstrap, topic, len(records), chunk=5000)
        return KafkaLimit(len(records), produce, len(records) / seconds)
    finally:
        await admin.delete_topics([topic])
        await admin.close()


async def _produce(bootstrap: str, topic: str, records: list[Record]) -> float:
    producer = kafka.new_producer(bootstrap, client_id="bench-pipeline-raw")
    await producer.start()
    try:
        # One record to every partition first: a fresh topic's leaders are elected, and
        # learnt, before the clock starts.
        for partition in range(PARTITIONS):
            await producer.send_and_wait(topic, b"warm-up", partition=partition)
        started = time.perf_counter()
        deliveries = [
            await producer.send(topic, value=value, key=key, headers=headers)
            for key, value, headers in records
        ]
        await asyncio.gather(*deliveries)
        return len(records) / (time.perf_counter() - started)
    finally:
        await producer.stop()


async def at_offered_loads(
    name: str, rates: list[float], seconds: float, fire: Callable[[], Awaitable[bool]]
) -> dict[float, Step]:
    """``fire`` at each of the pipeline's offered rates, open loop, as the pipeline was."""
    await offered_load(rates[0], 1.0, fire)  # warm-up: connections, plans
    steps: dict[float, Step] = {}
    for rate in rates:
        step = await offered_load(rate, seconds, fire)
        steps[rate] = step
        print(
            f"  {name:<16} offered {rate:>5.0f}/s  achieved {step.achieved:>6.0f}/s"
            f"  p99 {step.p99 * 1000:>7.1f} ms  errors {step.errors}",
            flush=True,
        )
    return steps


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
