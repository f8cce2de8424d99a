"""Transactional outbox: record an event with the state change, relay it later.

``append`` writes the event into the service's own ``outbox`` table inside the
caller's transaction, so the event exists exactly when the change does.

``OutboxRelay`` is a separate loop that publishes unsent rows to Kafka and
marks them sent only after Kafka acknowledged them.  It never follows an id
cursor from one pass to the next: ids are handed out when a row is inserted,
not when its transaction commits, so a cursor would step past a slower
transaction's row and lose it for good.  Each pass asks for the rows not yet
marked, oldest first.  If the relay dies between publishing and marking, the
rows are published again: at least once, never lost; consumers dedupe by
event id.

No database transaction stays open across a Kafka round trip: the relay reads
a batch (no locks), publishes it, awaits every acknowledgement, then marks the
batch sent in one short statement.  What keeps two relays from publishing the
same rows is an election, not row locks: a relay publishes only while its
connection holds a session advisory lock, which PostgreSQL releases when that
connection ends, so a crashed relay's successor takes over on its next try.  A
relay cut off from the database mid-batch may still be finishing that batch
when its successor starts: the overlap only duplicates events, which
consumers drop by event id (and by sequence number, where given).

Order per key: two changes to one entity lock the same row, so the later one
inserts its outbox row only after the earlier one committed; where an event
carries its aggregate's sequence number the outbox refuses a duplicate number
(``outbox_key_sequence``).  The relay publishes each batch in id order through
an idempotent producer, and only one relay leads at a time.

Waking the relay: a pass that published a full batch is followed at once by
another, one that published less after ``linger_seconds`` (a pass costs two
round trips to PostgreSQL and one to Kafka whatever its size, on the loop and the
database the service's requests use: at 200 orders/s, passing at once made
80 passes a second of about ten rows each); an idle relay looks again every
``idle_poll_seconds``.  ``append``
sends no NOTIFY: PostgreSQL serialises the commits of notifying transactions,
which cut writers' throughput by three to four times at 32 concurrent
transactions (``bench/outbox_throughput.py``), while an idle poll on the
partial index of unsent rows costs the database next to nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from asyncpg.pool import PoolConnectionProxy

from shared import logs
from shared.contracts.envelope import Envelope, Event, Topic, encode_envelope, new_envelope
from shared.db import TRANSIENT_DB_ERRORS, Connection, Pool, release_undone
from shared.kafka import BATCH_NUMBER_GAP, started
from shared.metrics import OUTBOX_OLDEST_UNSENT_AGE, OUTBOX_PUBLISHED, OUTBOX_UNSENT
from shared.runtime import PollingLoop

log = logging.getLogger(__name__)

# One relay per database at a time: the session advisory lock of its connection.
_RELAY_LOCK_KEY = 0x6F7574626F78  # "outbox"
# About a millisecond of the relay's CPU between chances for the service's requests.
_SENDS_BETWEEN_YIELDS = 25


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
    return envelope


@dataclass(frozen=True)
class Entry:
    """One event for ``append_all``: what ``append`` takes, as a value."""

    topic: Topic
    event: Event
    key: str
    sequence: int | None = None


@dataclass(frozen=True)
class Batch:
    """Events made ready for the outbox, to insert inside a statement of the caller's.

    A use case that writes its state in one statement (see
    ``services/orders/store.py``) adds ``insert(n)`` to it as one more
    data-modifying ``WITH`` part and passes ``columns`` as its parameters
    ``$n`` to ``$n+5``: the change and its events then cost one round trip.
    """

    envelopes: list[Envelope]
    columns: tuple[list[str], list[str], list[str], list[str], list[bytes], list[int | None]]

    @staticmethod
    def insert(first: int, *, when: str | None = None) -> str:
        """``when``: a condition on the rest of the statement (``EXISTS (SELECT 1 FROM
        changed)``), for a change that may find nothing to change: the events are
        written only if it holds, so a change that did not happen records none."""
        p = [f"${first + i}" for i in range(6)]
        # WITH ORDINALITY keeps the ids in the order given.
        return (
            "INSERT INTO outbox (event_id, topic, key, event_type, payload, sequence)"
            " SELECT e.event_id, e.topic, e.key, e.event_type, e.payload, e.sequence"
            f" FROM unnest({p[0]}::text[], {p[1]}::text[], {p[2]}::text[], {p[3]}::text[],"
            f" {p[4]}::bytea[], {p[5]}::bigint[])"
            " WITH ORDINALITY AS e(event_id, topic, key, event_type, payload, sequence, position)"
            f"{f' WHERE {when}' if when else ''} ORDER BY e.position"
        )


def batch(entries: Sequence[Entry], *, producer: str, causation_id: str | None = None) -> Batch:
    """The envelopes of ``entries`` and their outbox rows as columns, in the order given."""
    envelopes = []
    for entry in entries:
        if type(entry.event) not in entry.topic.events:
            raise TypeError(f"{type(entry.event).__name__} does not belong on {entry.topic.name}")
        envelopes.append(
            new_envelope(
                entry.event,
                key=entry.key,
                producer=producer,
                correlation_id=logs.correlation_id.get(),
                causation_id=causation_id,
                sequence=entry.sequence,
            )
        )
    return Batch(
        envelopes,
        (
            [envelope.event_id for envelope in envelopes],
            [entry.topic.name for entry in entries],
            [entry.key for entry in entries],
            [envelope.type for envelope in envelopes],
            [encode_envelope(envelope) for envelope in envelopes],
            [entry.sequence for entry in entries],
        ),
    )


async def append_all(
    conn: Connection, entries: Sequence[Entry], *, producer: str, causation_id: str | None = None
) -> list[Envelope]:
    """``append`` for several events in one round trip, in the order given.

    A use case that records many events at once (an order fanned out to
    every partner) pays one statement instead of two per event.
    """
    events = batch(entries, producer=producer, causation_id=causation_id)
    if events.envelopes:
        await conn.execute(events.insert(1), *events.columns)
    return events.envelopes


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
        batch_size: int = 1000,
        idle_poll_seconds: float = 0.1,
        linger_seconds: float = 0.02,
        election_poll_seconds: float = 1.0,
        backlog_gauge_seconds: float = 5.0,
        topic_prefix: str = "",
        fresh_producer: Callable[[], AIOKafkaProducer] | None = None,
    ) -> None:
        """``fresh_producer`` makes a producer to replace one whose sends failed.

        An idempotent producer numbers its batches per partition.  A batch that
        failed for good (it expired while the broker was away) leaves a gap in
        those numbers that the broker never fills, and aiokafka, unlike the
        Java client, does not start a new producer id: every later batch to that
        partition is refused with ``OutOfOrderSequenceNumber``, and the outbox
        would never drain again.  So after a failed batch the relay publishes
        with a fresh producer (a new id, numbers from zero); what the failed
        one may have delivered is sent again, which consumers dedupe.  Sends of
        the replaced producer still in flight may even land after the fresh
        one's copies: consumers dedupe by event id and sequence, so that too
        is harmless.  Only a batch that expired or was refused for its number
        renews the producer; a message refused for itself (too large) would
        be refused by any producer.  The producers it made are its own to
        stop; ``producer`` is not.
        """
        self._pool = pool
        self._producer = producer
        self._fresh_producer = fresh_producer
        self._own_producer = False
        self._producer_failed = False
        self._batch_size = batch_size
        self._idle_poll_seconds = idle_poll_seconds
        self._linger_seconds = linger_seconds
        self._election_poll_seconds = election_poll_seconds
        self._backlog_gauge_seconds = backlog_gauge_seconds
        self._topic_prefix = topic_prefix
        self._leader: PoolConnectionProxy[asyncpg.Record] | None = None
        self._backlog_measured_at: float | None = None
        self._loop = PollingLoop(
            "outbox-relay", self._pass, transient=(*TRANSIENT_DB_ERRORS, KafkaError)
        )

    def stop(self) -> None:
        self._loop.stop()

    @property
    def leading(self) -> bool:
        return self._leader is not None

    async def run(self) -> None:
        try:
            await self._loop.run()
        finally:
            await self._resign()
            if self._own_producer:
                await self._producer.stop()

    async def _pass(self) -> float:
        await self._export_backlog()
        if not await self._lead():
            return self._election_poll_seconds
        if self._producer_failed and self._fresh_producer is not None:
            await self._renew_producer(self._fresh_producer)
        published = await self.publish_batch()
        if published == 0:
            self._set_backlog(0, 0.0)
            return self._idle_poll_seconds
        return 0.0 if published >= self._batch_size else self._linger_seconds

    async def publish_batch(self) -> int:
        """Publish one batch of unsent rows if this relay leads; return how many."""
        conn = self._leader
        if conn is None:
            return 0
        try:
            # Read without a transaction: nothing is locked while Kafka answers.
            rows = await conn.fetch(
                "SELECT id, event_id, topic, key, event_type, payload FROM outbox"
                " WHERE published_at IS NULL ORDER BY id LIMIT $1",
                self._batch_size,
            )
            if not rows:
                return 0
            try:
                await self._send_all(rows)
            except BATCH_NUMBER_GAP:
                self._producer_failed = True
                raise
            # Marked sent only once every message is acknowledged by the broker,
            # by one statement outside any transaction block (autocommit): it is
            # atomic on its own, and BEGIN/COMMIT would add two round trips a pass.
            await conn.execute(
                "UPDATE outbox SET published_at = now() WHERE id = ANY($1::bigint[])",
                [row["id"] for row in rows],
            )
        except BaseException:
            # The connection may be broken, and the lock with it: stand again next pass.
            await self._resign()
            raise
        OUTBOX_PUBLISHED.inc(len(rows))
        return len(rows)

    async def _renew_producer(self, make: Callable[[], AIOKafkaProducer]) -> None:
        fresh = await started(make())
        replaced, self._producer = self._producer, fresh
        if self._own_producer:
            await replaced.stop()
        self._own_producer = True
        self._producer_failed = False
        log.info("outbox relay: a fresh producer replaces the one whose sends failed")

    async def _send_all(self, rows: Sequence[asyncpg.Record]) -> None:
        """Send every row and await every acknowledgement; raise if any send failed.

        Every delivery's outcome is retrieved, failed ones logged by type and
        message only (never a payload): a batch that failed at its first
        acknowledgement, or whose sending stopped midway, would otherwise leave
        the others' exceptions unretrieved ("Future exception was never retrieved").
        """
        deliveries: list[asyncio.Future[object]] = []
        try:
            for count, row in enumerate(rows, 1):
                deliveries.append(
                    await self._producer.send(
                        self._topic_prefix + row["topic"],
                        value=row["payload"],
                        key=row["key"].encode(),
                        headers=kafka_headers(row["event_type"], row["event_id"]),
                    )
                )
                if count % _SENDS_BETWEEN_YIELDS == 0:
                    # A send returns without yielding while the producer has room, so
                    # a big batch (a slow broker lets one pile up) would hold the loop
                    # for tens of ms and every request waiting on it: let them in.
                    await asyncio.sleep(0)
        except BaseException:
            # Sending stopped midway: what was handed to the producer still ends,
            # some time later, and its failures are collected then.
            for delivery in deliveries:
                delivery.add_done_callback(_log_failed_delivery)
            raise
        outcomes = await asyncio.gather(*deliveries, return_exceptions=True)
        failures = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
        if failures:
            log.warning(
                "outbox relay: sends failed, the batch stays unsent and is retried",
                extra={
                    "failed": len(failures),
                    "batch": len(rows),
                    "errors": sorted({_describe(failure) for failure in failures}),
                },
            )
            raise failures[0]

    async def _lead(self) -> bool:
        if self._leader is not None and self._leads_still(self._leader):
            return True
        await self._resign()
        conn = await self._pool.acquire()
        try:
            elected = await conn.fetchval("SELECT pg_try_advisory_lock($1)", _RELAY_LOCK_KEY)
        except BaseException:
            # Cut short (cancelled, timed out), the statement may still have taken the
            # lock; the pool resets nothing on release, so only ending the session
            # surely frees it for whichever relay stands next.
            conn.terminate()
            await self._pool.release(conn)
            raise
        if not elected:
            await self._pool.release(conn)
            return False
        self._leader = conn
        log.info("outbox relay leads")
        return True

    @staticmethod
    def _leads_still(conn: PoolConnectionProxy[asyncpg.Record]) -> bool:
        try:
            return not conn.is_closed()
        except asyncpg.InterfaceError:
            # After a server restart the pool reclaims the dead connection and the
            # proxy refuses every call: the lock went with it, so lead again.
            return False

    async def _resign(self) -> None:
        conn, self._leader = self._leader, None
        if conn is None:
            return
        # Gone with the server, the connection took the lock with it: nothing to undo.
        await release_undone(
            self._pool, conn, lambda: conn.execute("SELECT pg_advisory_unlock($1)", _RELAY_LOCK_KEY)
        )

    async def _export_backlog(self) -> None:
        """Every replica exports the backlog it sees, at most every few seconds."""
        now = asyncio.get_running_loop().time()
        if (
            self._backlog_measured_at is not None
            and now - self._backlog_measured_at < self._backlog_gauge_seconds
        ):
            return
        self._backlog_measured_at = now
        row = await self._pool.fetchrow(
            "SELECT (SELECT count(*) FROM outbox WHERE published_at IS NULL) AS unsent,"
            " (SELECT extract(epoch FROM now() - created_at) FROM outbox"
            "  WHERE published_at IS NULL ORDER BY id LIMIT 1) AS oldest_age"
        )
        assert row is not None
        self._set_backlog(row["unsent"], float(row["oldest_age"] or 0.0))

    @staticmethod
    def _set_backlog(unsent: int, oldest_age: float) -> None:
        OUTBOX_UNSENT.set(unsent)
        OUTBOX_OLDEST_UNSENT_AGE.set(oldest_age)


def _describe(error: BaseException) -> str:
    # Kafka client errors name the broker's refusal; they never carry the payload.
    return f"{type(error).__name__}: {error}"[:300]


def _log_failed_delivery(delivery: asyncio.Future[object]) -> None:
    if delivery.cancelled():
        return
    error = delivery.exception()
    if error is not None:
        log.warning(
            "outbox relay: a send of an abandoned batch failed",
            extra={"errors": [_describe(error)]},
        )
