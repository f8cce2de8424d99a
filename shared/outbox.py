"""Transactional outbox: record an event with the state change, publish it later.

``append`` writes the event into the service's own ``outbox`` table inside the
caller's transaction, so the event exists exactly when the change does.

``OutboxRelay`` is a separate loop that publishes unsent rows and marks them
sent only after Kafka acknowledged them.  It never follows an id cursor: ids
are handed out when a row is inserted, not when its transaction commits, so a
cursor would step past a slower transaction's row and lose it for good.
Instead the relay always asks for every row not yet marked, oldest first.
If the relay dies between publishing and marking, the rows are published
again on the next pass: at least once, never lost; consumers dedupe by event id.

Order per key holds because two changes to one entity lock the same row, so
the later one inserts its outbox row (and gets its id) only after the earlier
one committed; the relay publishes in id order and one relay runs at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg
from aiokafka import AIOKafkaProducer
from asyncpg.pool import PoolConnectionProxy

from shared import logs
from shared.contracts.envelope import Envelope, Event, Topic, encode_envelope, new_envelope
from shared.db import TRANSIENT_DB_ERRORS, Connection, Pool
from shared.metrics import OUTBOX_PUBLISHED, OUTBOX_UNSENT

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "outbox"
# One relay per database at a time: a transaction-scoped advisory lock elects it.
_RELAY_LOCK_KEY = 0x6F7574626F78  # "outbox"


async def append(
    conn: Connection,
    topic: Topic,
    event: Event,
    *,
    key: str,
    producer: str,
    causation_id: str | None = None,
    sequence: int | None = None,
) -> Envelope:
    if type(event) not in topic.events:
        raise TypeError(f"{type(event).__name__} does not belong on topic {topic.name}")
    envelope = new_envelope(
        event,
        key=key,
        producer=producer,
        correlation_id=logs.correlation_id.get(),
        causation_id=causation_id,
        sequence=sequence,
    )
    await conn.execute(
        "INSERT INTO outbox (event_id, topic, key, event_type, payload, sequence)"
        " VALUES ($1, $2, $3, $4, $5, $6)",
        envelope.event_id,
        topic.name,
        key,
        envelope.type,
        encode_envelope(envelope),
        sequence,
    )
    # Wakes the relay at commit; NOTIFY is transactional, a rollback sends nothing.
    await conn.execute("SELECT pg_notify($1, '')", NOTIFY_CHANNEL)
    return envelope


def kafka_headers(event_type: str, event_id: str) -> list[tuple[str, bytes]]:
    """The event type travels as a header too, so tools can route without decoding."""
    return [
        ("event-type", event_type.encode()),
        ("event-id", event_id.encode()),
        ("content-type", b"application/json"),
    ]


class OutboxRelay:
    def __init__(
        self,
        pool: Pool,
        producer: AIOKafkaProducer,
        *,
        batch_size: int = 500,
        idle_poll_seconds: float = 1.0,
        topic_prefix: str = "",
    ) -> None:
        self._pool = pool
        self._topic_prefix = topic_prefix
        self._producer = producer
        self._batch_size = batch_size
        self._idle_poll_seconds = idle_poll_seconds
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    async def run(self) -> None:
        listener: PoolConnectionProxy[asyncpg.Record] | None = None
        while not self._stopping.is_set():
            try:
                if listener is None or listener.is_closed():
                    listener = await self._listen()
                published = await self.publish_batch()
            except TRANSIENT_DB_ERRORS as exc:
                log.warning("outbox relay pass failed, retrying", extra={"error": repr(exc)})
                if listener is not None:
                    await self._release(listener)
                    listener = None
                await self._sleep(1.0)
                continue
            except Exception:
                # Kafka unavailable and the like: the rows stay unsent and are retried.
                log.exception("outbox relay pass failed, retrying")
                await self._sleep(1.0)
                continue
            if published < self._batch_size:
                await self._sleep(self._idle_poll_seconds)
        if listener is not None:
            await self._release(listener)

    def _on_notify(self, *_: object) -> None:
        self._wake.set()

    async def _release(self, listener: PoolConnectionProxy[asyncpg.Record]) -> None:
        with contextlib.suppress(Exception):  # the connection may be gone with the server
            await listener.remove_listener(NOTIFY_CHANNEL, self._on_notify)
        await self._pool.release(listener)

    async def _listen(self) -> PoolConnectionProxy[asyncpg.Record]:
        # A connection of its own for as long as it lives: LISTEN outlives transactions.
        listener = await self._pool.acquire()
        await listener.add_listener(NOTIFY_CHANNEL, self._on_notify)
        return listener

    async def _sleep(self, seconds: float) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    async def publish_batch(self) -> int:
        """Publish one batch of unsent rows; return how many were published."""
        async with self._pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", _RELAY_LOCK_KEY):
                return 0
            rows = await conn.fetch(
                "SELECT id, event_id, topic, key, event_type, payload FROM outbox"
                " WHERE published_at IS NULL ORDER BY id LIMIT $1",
                self._batch_size,
            )
            if not rows:
                OUTBOX_UNSENT.set(0)
                return 0
            deliveries = []
            for row in rows:
                deliveries.append(
                    await self._producer.send(
                        self._topic_prefix + row["topic"],
                        value=row["payload"],
                        key=row["key"].encode(),
                        headers=kafka_headers(row["event_type"], row["event_id"]),
                    )
                )
            # Marked sent only once every message is acknowledged by the broker.
            await asyncio.gather(*deliveries)
            await conn.execute(
                "UPDATE outbox SET published_at = now() WHERE id = ANY($1::bigint[])",
                [row["id"] for row in rows],
            )
        OUTBOX_PUBLISHED.inc(len(rows))
        return len(rows)
