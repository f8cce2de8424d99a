"""Idempotent Kafka consumer: each event's effect applied once, offsets committed after.

For every message the runner opens one database transaction that inserts
``(consumer, event_id)`` into ``processed_events`` and applies the handler's
effect; a redelivered event finds its row and changes nothing.  The Kafka
offset is committed only after that transaction commits, so a crash at any
point either redelivers (and the dedupe row makes it a no-op) or never
happened.

Failures: a message that cannot be decoded, or whose type this consumer does
not know, goes straight to ``<topic>.dlq``.  A transient failure (database or
network) is retried with capped backoff for as long as it takes, because
dead-lettering every message while PostgreSQL restarts would be worse than
waiting.  Any other error is retried a few times and then dead-lettered with
the error in the headers; the consumer then goes on with the next message.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from shared import logs
from shared.contracts.envelope import Envelope, Event, EventRegistry, UnknownEvent, decode_envelope
from shared.db import TRANSIENT_DB_ERRORS, Connection, Pool
from shared.metrics import EVENTS_CONSUMED, EVENTS_DEAD_LETTERED
from shared.retry import RetryPolicy

log = logging.getLogger(__name__)

__all__ = ["Handler", "IdempotentConsumer", "PermanentError", "RetryPolicy"]

Handler = Callable[[Connection, Envelope, Event], Awaitable[None]]


class PermanentError(Exception):
    """The event can never be applied as it is: dead-letter it without retrying."""


class _Stopping(Exception):
    pass


class IdempotentConsumer:
    def __init__(
        self,
        *,
        name: str,
        bootstrap: str,
        topics: Sequence[str],
        registry: EventRegistry,
        handler: Handler,
        pool: Pool,
        producer: AIOKafkaProducer,
        group_id: str | None = None,
        retry: RetryPolicy | None = None,
        max_batch: int = 200,
    ) -> None:
        self.name = name
        self._topics = list(topics)
        self._registry = registry
        self._handler = handler
        self._pool = pool
        self._producer = producer
        self._retry = retry or RetryPolicy()
        self._max_batch = max_batch
        self._stopping = asyncio.Event()
        self._consumer = AIOKafkaConsumer(
            *self._topics,
            bootstrap_servers=bootstrap,
            group_id=group_id or name,
            client_id=name,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # A batch is bounded, so handling it stays far inside the poll interval.
            max_poll_interval_ms=300_000,
        )

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        await self._consumer.start()
        try:
            while not self._stopping.is_set():
                batches = await self._consumer.getmany(timeout_ms=500, max_records=self._max_batch)
                for partition, records in batches.items():
                    if not await self._handle_partition(partition, records):
                        break
        finally:
            await self._consumer.stop()

    async def _handle_partition(
        self, partition: TopicPartition, records: list[ConsumerRecord]
    ) -> bool:
        """Handle records in order; commit what was handled. False if stopping midway."""
        handled_up_to: int | None = None
        try:
            for record in records:
                await self._handle(record)
                handled_up_to = record.offset
        except _Stopping:
            return False
        finally:
            if handled_up_to is not None:
                await self._commit(partition, handled_up_to + 1)
        return True

    async def _commit(self, partition: TopicPartition, offset: int) -> None:
        try:
            await self._consumer.commit({partition: offset})
        except KafkaError as exc:
            # Typically the partition moved to another member during a rebalance.
            # Its new owner re-reads these events and the dedupe rows make that a no-op.
            log.warning(
                "offset commit failed",
                extra={"consumer": self.name, "partition": str(partition), "error": repr(exc)},
            )

    async def _handle(self, record: ConsumerRecord) -> None:
        try:
            if record.value is None:
                raise UnknownEvent("a tombstone (null value): no event to apply")
            envelope = decode_envelope(record.value)
            event = self._registry.decode(envelope)
        except (msgspec.DecodeError, UnknownEvent, ValueError, TypeError, KeyError) as exc:
            # Whatever fails while decoding (upcasters included) is this message's fault.
            await self._dead_letter(record, exc)
            return
        token = logs.correlation_id.set(envelope.correlation_id or envelope.event_id)
        try:
            await self._apply_with_retries(record, envelope, event)
        finally:
            logs.correlation_id.reset(token)

    async def _apply_with_retries(
        self, record: ConsumerRecord, envelope: Envelope, event: Event
    ) -> None:
        attempt = 0
        while True:
            attempt += 1
            try:
                applied = await self._apply_once(envelope, event)
            except TRANSIENT_DB_ERRORS as exc:
                log.warning(
                    "transient failure, will retry",
                    extra={
                        "consumer": self.name,
                        "event_id": envelope.event_id,
                        "error": repr(exc),
                    },
                )
                await self._pause(self._retry.backoff(min(attempt, 10)))
                continue
            except PermanentError as exc:
                await self._dead_letter(record, exc)
                return
            except Exception as exc:
                if attempt >= self._retry.max_attempts:
                    log.exception(
                        "giving up on event",
                        extra={"consumer": self.name, "event_id": envelope.event_id},
                    )
                    await self._dead_letter(record, exc)
                    return
                await self._pause(self._retry.backoff(attempt))
                continue
            EVENTS_CONSUMED.labels(self.name, "applied" if applied else "duplicate").inc()
            return

    async def _apply_once(self, envelope: Envelope, event: Event) -> bool:
        async with self._pool.acquire() as conn, conn.transaction():
            first_time = await conn.fetchval(
                "INSERT INTO processed_events (consumer, event_id) VALUES ($1, $2)"
                " ON CONFLICT DO NOTHING RETURNING true",
                self.name,
                envelope.event_id,
            )
            if not first_time:
                return False
            await self._handler(conn, envelope, event)
            return True

    async def _pause(self, seconds: float) -> None:
        if self._stopping.is_set():
            raise _Stopping
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            return
        raise _Stopping

    async def _dead_letter(self, record: ConsumerRecord, error: BaseException) -> None:
        headers = [
            *(record.headers or ()),
            ("dlq-error", str(error)[:1000].encode()),
            ("dlq-error-class", type(error).__name__.encode()),
            ("dlq-consumer", self.name.encode()),
            ("dlq-original-topic", record.topic.encode()),
            ("dlq-original-partition", str(record.partition).encode()),
            ("dlq-original-offset", str(record.offset).encode()),
        ]
        # Awaited before the offset is committed: a dead letter is never lost either.
        attempt = 0
        while True:
            attempt += 1
            try:
                delivery = await self._producer.send(
                    f"{record.topic}.dlq", value=record.value, key=record.key, headers=headers
                )
                await delivery
                break
            except KafkaError as exc:
                log.warning("dead-letter send failed, retrying", extra={"error": repr(exc)})
                await self._pause(self._retry.backoff(min(attempt, 10)))
        EVENTS_DEAD_LETTERED.labels(self.name, record.topic).inc()
        EVENTS_CONSUMED.labels(self.name, "dead_lettered").inc()
        log.error(
            "message dead-lettered",
            extra={
                "consumer": self.name,
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
                "error_class": type(error).__name__,
            },
        )
