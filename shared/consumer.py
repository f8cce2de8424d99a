"""Idempotent Kafka consumers: each event's effect applied once, offsets committed after.

One runner, two ways to hand events to a handler:

* ``BatchConsumer`` gives the handler a chunk of one partition's new events
  (``Sequence[Delivery]``, offset order) inside one transaction, for consumers
  that must catch up on a backlog; the handler writes its effects set-wise.
* ``IdempotentConsumer`` gives the handler one event per transaction
  (``handler(conn, envelope, event)``), for low-rate consumers.

In that transaction the runner first records ``(consumer, event_id)`` for the
whole chunk in one statement (``processed_events``); only the ids that were
not there before reach the handler, so a redelivered event changes nothing.
A ``strict`` consumer skips that row for events that carry a sequence: their
aggregate's position, moved in the same transaction, already says whether
they were applied (``_dedupe``).
The Kafka offset is committed only after the transaction commits (by one
background committer, so the next chunk never waits for the broker): a crash
at any point either redelivers (and the dedupe rows make that a no-op) or
never happened.  We do not also store a per-partition position to seek to on
assignment: offsets follow each chunk within a broker round trip, so a crash
redelivers a chunk or two, and one set-wise dedupe statement per chunk is
cheap; positions would also miss what they cannot see (a re-created topic, an
event produced twice by a relay that crashed before marking it sent).  Per-aggregate positions,
where a topic promises order, are ``shared.sequencing``'s job (``sequencing=``).

Partitions proceed independently.  The poll loop never waits for a handler:
each partition with work has its own task, and a partition whose buffer is
full or that is backing off is paused (``consumer.pause``), so the consumer
keeps polling, other partitions keep flowing and a slow or retrying handler
never costs a rebalance.

Failures.  A message that cannot be decoded, or whose type this consumer does
not know, goes straight to ``<topic>.dlq``.  When a chunk fails, it is split in
halves until the failing event stands alone, so only it is retried or
dead-lettered and the rest apply.  What is retried how is ``classify``'s
answer: the database saying "not now" (restarting, unreachable, a
serialization conflict) is retried for as long as it takes, because
dead-lettering every message while PostgreSQL restarts would be worse than
waiting; ``PermanentError`` is dead-lettered at once; anything else, including
an ``OSError`` or timeout from the handler's own work, is retried
``RetryPolicy.max_attempts`` times and then dead-lettered with the error in
the headers, and the partition goes on with the next event.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import asyncpg
import msgspec
from aiokafka import (
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
    ConsumerRecord,
    TopicPartition,
)
from aiokafka.errors import KafkaError

from shared import logs
from shared.contracts.envelope import Envelope, Event, EventRegistry, UnknownEvent, decode_envelope
from shared.db import Connection, Pool
from shared.kafka import (
    BATCH_NUMBER_GAP,
    PLAINTEXT,
    KafkaSecurity,
    client_options,
    new_producer,
    started,
)
from shared.metrics import EVENTS_CONSUMED, EVENTS_DEAD_LETTERED, EVENTS_PARKED
from shared.retry import RetryPolicy
from shared.runtime import sleep_or_stop
from shared.sequencing import (
    Delivery,
    PositionMoved,
    Sequencing,
    admit,
    drop_parked,
    parked_count,
    take_ready,
)

log = logging.getLogger(__name__)

__all__ = [
    "BatchConsumer",
    "BatchHandler",
    "Delivery",
    "Failure",
    "Handler",
    "IdempotentConsumer",
    "PermanentError",
    "RetryPolicy",
    "classify",
    "halves",
]

Handler = Callable[[Connection, Envelope, Event], Awaitable[None]]
BatchHandler = Callable[[Connection, Sequence[Delivery]], Awaitable[None]]
T = TypeVar("T")


class PermanentError(Exception):
    """The event can never be applied as it is: dead-letter it without retrying."""


class Failure(enum.Enum):
    CONCURRENT = "concurrent"  # another member moved or parked behind a key's position: retry now
    TRANSIENT = "transient"  # the database cannot serve now: retry without limit
    PERMANENT = "permanent"  # dead-letter at once
    RETRYABLE = "retryable"  # maybe a fluke: retry a bounded number of times


# What PostgreSQL (or the driver) answers when the server, not the event, is the
# problem: shutting down, starting up, out of connections, the link lost, or a
# conflict with a concurrent transaction that a retry resolves.
_SERVER_NOT_NOW: tuple[type[BaseException], ...] = (
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.PostgresConnectionError,
    asyncpg.ConnectionDoesNotExistError,
)


def classify(error: BaseException) -> Failure:
    """How to retry after ``error``.

    An ``OSError`` is the database's only when the driver raised it (the
    server unreachable, or a connection lost mid-query), and a timeout only
    when it struck while connecting: a query that times out may time out every
    time, so it is bounded.  The same errors from the handler's own work (an
    HTTP call, a file) are bounded like any other.
    """
    if isinstance(error, PermanentError):
        return Failure.PERMANENT
    if isinstance(error, PositionMoved):
        return Failure.CONCURRENT
    if isinstance(error, _SERVER_NOT_NOW):
        return Failure.TRANSIENT
    # TimeoutError is an OSError: ask about it first.
    if isinstance(error, TimeoutError):
        connecting = _raised_in(error, "asyncpg.connect_utils")
        return Failure.TRANSIENT if connecting else Failure.RETRYABLE
    if isinstance(error, OSError) and _raised_in(error, "asyncpg"):
        return Failure.TRANSIENT
    return Failure.RETRYABLE


def _raised_in(error: BaseException, package: str) -> bool:
    """Whether ``error``, or what caused it, passed through ``package`` (a module or package).

    Its cause counts: a timeout is raised where the deadline was set (a frame
    above the work it cut short), ``from`` the cancellation of that work.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        traceback = current.__traceback__
        while traceback is not None:
            module = traceback.tb_frame.f_globals.get("__name__", "")
            if isinstance(module, str) and (module == package or module.startswith(package + ".")):
                return True
            traceback = traceback.tb_next
        # Only an explicit cause: an error the handler raised while handling a
        # database error is still the handler's own.
        current = current.__cause__
    return False


def halves(items: Sequence[T]) -> tuple[Sequence[T], Sequence[T]]:
    """Split a failing chunk so the bad event ends up alone (in about log2(n) steps)."""
    middle = (len(items) + 1) // 2
    return items[:middle], items[middle:]


class _Item(msgspec.Struct, frozen=True, gc=False):
    """A consumed record and its decoded event (one per event: a Struct, outside the GC)."""

    record: ConsumerRecord
    delivery: Delivery


@dataclass(frozen=True)
class _Letter:
    """What a dead letter is made of: a consumed record, or a parked event's stored message."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]


@dataclass
class _Outcome:
    """What one transaction's sequencing saw, read by the runner even when it failed."""

    released: int = 0  # parked events it applied after the chunk's own
    replayed_keys: list[str] = field(default_factory=list)  # keys of redelivered events


class _Stopping(Exception):
    pass


@dataclass
class _Partition:
    pending: list[ConsumerRecord] = field(default_factory=list)
    worker: asyncio.Task[None] | None = None
    backing_off: bool = False
    paused: bool = False
    # Set when a lingering worker should take its chunk now: the chunk is full,
    # or the consumer stops.
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class BatchConsumer:
    def __init__(
        self,
        *,
        name: str,
        bootstrap: str,
        topics: Sequence[str],
        registry: EventRegistry,
        handler: BatchHandler,
        pool: Pool,
        producer: AIOKafkaProducer,
        group_id: str | None = None,
        topic_prefix: str = "",
        security: KafkaSecurity = PLAINTEXT,
        retry: RetryPolicy | None = None,
        max_batch: int = 500,
        sequencing: Sequencing | None = None,
        parked_gauge_seconds: float = 15.0,
        linger_seconds: float = 0.0,
    ) -> None:
        """``topics`` are the contracts' bare names; ``topic_prefix`` namespaces a deployment.

        The prefix goes on the topics and on the consumer group alike (the group
        defaults to ``name``): two deployments, or two test runs, sharing one
        cluster never share a group, so neither rebalances nor commits offsets
        for the other.  ``name`` itself, the key of the dedupe rows in the
        service's own database, stays bare.

        ``linger_seconds``: how long a partition's worker waits for more events
        before taking a chunk smaller than ``max_batch``, as a producer's linger
        does.  A transaction costs about ten statements whatever its size, so
        when events trickle in, waiting makes fewer, larger chunks for a bounded
        delay; a full chunk, a stop or a revocation ends the wait at once.  Off
        (0) by default: the chunk is taken as soon as there is one.
        """
        self.name = name
        self.topics = [topic_prefix + topic for topic in topics]
        self.group_id = topic_prefix + (group_id or name)
        self._registry = registry
        self._handler = handler
        self._pool = pool
        self._producer = producer
        self._retry = retry or RetryPolicy()
        self._max_batch = max_batch
        self._sequencing = sequencing
        self._parked_gauge_seconds = parked_gauge_seconds
        self._linger_seconds = linger_seconds
        # Events per transaction; the per-event consumer sets 1.
        self._per_transaction = max_batch
        self._stopping = asyncio.Event()
        self._partitions: dict[TopicPartition, _Partition] = {}
        self._crash: BaseException | None = None
        # How many times this member was handed partitions; more than once means
        # a rebalance happened (tests and logs read it).
        self.assignments = 0
        # Offsets of committed chunks, sent to Kafka by one committer in the
        # background: a partition's next chunk never waits for the broker.
        self._to_commit: dict[TopicPartition, int] = {}
        self._commit_wanted = asyncio.Event()
        self._commit_lock = asyncio.Lock()
        self._bootstrap = bootstrap
        self._security = security
        # Dead letters go through ``producer`` until a send shows its batch numbers
        # have a gap; then through a producer of the consumer's own (``_renew_producer``).
        self._own_producer = False
        self._consumer = AIOKafkaConsumer(
            **client_options(bootstrap, security),
            group_id=self.group_id,
            client_id=name,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # The poll loop never waits for a handler, so this is never reached
            # by slow work; it only bounds a wedged process.
            max_poll_interval_ms=300_000,
        )

    def stop(self) -> None:
        self._stopping.set()
        for state in self._partitions.values():
            state.wake.set()

    async def run(self) -> None:
        self._consumer.subscribe(self.topics, listener=_Revocations(self))
        await self._consumer.start()
        committer = asyncio.create_task(self._committer())
        watcher = asyncio.create_task(self._export_parked())
        try:
            while not self._stopping.is_set():
                batches = await self._consumer.getmany(
                    timeout_ms=200, max_records=self._max_batch * 4
                )
                for partition, records in batches.items():
                    state = self._partitions.setdefault(partition, _Partition())
                    state.pending.extend(records)
                    if len(state.pending) >= self._max_batch:
                        state.wake.set()
                    if state.worker is None:
                        state.worker = asyncio.create_task(self._drain(partition, state))
                        state.worker.add_done_callback(self._worker_done)
                    self._update_pause(partition, state)
                if self._crash is not None:
                    raise self._crash
        finally:
            # Workers end at their next step: a transaction in flight commits and
            # its offsets are committed before the consumer leaves the group.
            self.stop()
            await self._finish(list(self._partitions))
            committer.cancel()
            watcher.cancel()
            await asyncio.gather(committer, watcher, return_exceptions=True)
            await self._flush_commits()
            await self._consumer.stop()
            if self._own_producer:
                await self._producer.stop()

    async def _export_parked(self) -> None:
        """Every replica exports what the consumer holds back, as the database counts it.

        Parked events wait for a gap that may never fill (its event was
        dead-lettered): an operator must see them grow, and on every replica alike.
        """
        if self._sequencing != "strict":
            return
        while True:
            try:
                async with self._pool.acquire() as conn:
                    EVENTS_PARKED.labels(self.name).set(await parked_count(conn, self.name))
            except Exception as exc:  # a gauge left stale must not stop the consumer
                log.warning(
                    "could not count parked events",
                    extra={"consumer": self.name, "error": repr(exc)},
                )
            if await sleep_or_stop(self._stopping, self._parked_gauge_seconds):
                return

    def _worker_done(self, worker: asyncio.Task[None]) -> None:
        if not worker.cancelled() and worker.exception() is not None:
            # A bug in the runner itself (handler failures never get here): the
            # poll loop re-raises it so the service dies loudly.
            self._crash = worker.exception()

    async def _finish(self, partitions: list[TopicPartition]) -> None:
        workers = []
        for partition in partitions:
            state = self._partitions.pop(partition, None)
            if state is not None and state.worker is not None:
                workers.append(state.worker)
        await asyncio.gather(*workers, return_exceptions=True)

    async def _revoke(self, partitions: list[TopicPartition]) -> None:
        # The new owner re-reads whatever was not committed; a transaction cut
        # short rolls back, and dedupe covers one that committed unseen.
        for partition in partitions:
            state = self._partitions.get(partition)
            if state is not None and state.worker is not None:
                state.worker.cancel()
        await self._finish(partitions)
        await self._flush_commits()

    def _update_pause(self, partition: TopicPartition, state: _Partition) -> None:
        # Pausing drops what the fetcher holds for the partition, so pause only
        # when its buffer is full or it is backing off.
        want_paused = state.backing_off or len(state.pending) >= 2 * self._max_batch
        if want_paused == state.paused or partition not in self._consumer.assignment():
            return
        if want_paused:
            self._consumer.pause(partition)
        else:
            self._consumer.resume(partition)
        state.paused = want_paused

    async def _drain(self, partition: TopicPartition, state: _Partition) -> None:
        try:
            while state.pending and not self._stopping.is_set():
                if await self._lingered_to_stop(state):
                    return  # what is pending is read again by the next owner
                chunk = state.pending[: self._max_batch]
                del state.pending[: self._max_batch]
                self._update_pause(partition, state)
                handled_up_to = await self._handle_chunk(partition, state, chunk)
                if handled_up_to is not None:
                    self._to_commit[partition] = handled_up_to + 1
                    self._commit_wanted.set()
                if handled_up_to != chunk[-1].offset:
                    return  # stopping midway
        finally:
            state.worker = None

    async def _lingered_to_stop(self, state: _Partition) -> bool:
        """Wait up to ``linger_seconds`` for a full chunk; True when stopping instead."""
        if self._linger_seconds <= 0 or len(state.pending) >= self._max_batch:
            return False
        state.wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(state.wake.wait(), self._linger_seconds)
        return self._stopping.is_set()

    async def _handle_chunk(
        self, partition: TopicPartition, state: _Partition, records: list[ConsumerRecord]
    ) -> int | None:
        """Apply or dead-letter ``records`` in order; the last offset handled."""
        handled_up_to: int | None = None
        run: list[_Item] = []
        try:
            for record in records:
                decoded = self._decode(record)
                if isinstance(decoded, Delivery):
                    run.append(_Item(record, decoded))
                    continue
                for group in self._groups(run):
                    await self._apply_isolating(partition, state, group)
                    handled_up_to = group[-1].record.offset
                run = []
                await self._dead_letter(record, decoded)
                handled_up_to = record.offset
            for group in self._groups(run):
                await self._apply_isolating(partition, state, group)
                handled_up_to = group[-1].record.offset
        except _Stopping:
            pass
        return handled_up_to

    def _groups(self, items: list[_Item]) -> list[list[_Item]]:
        size = self._per_transaction
        return [items[start : start + size] for start in range(0, len(items), size)]

    def _decode(self, record: ConsumerRecord) -> Delivery | Exception:
        try:
            if record.value is None:
                raise UnknownEvent("a tombstone (null value): no event to apply")
            envelope = decode_envelope(record.value)
            return Delivery(envelope, self._registry.decode(envelope))
        except (msgspec.DecodeError, UnknownEvent, ValueError, TypeError, KeyError) as exc:
            # Whatever fails while decoding (upcasters included) is this message's fault.
            return exc

    def _decode_stored(self, message: bytes) -> Delivery:
        envelope = decode_envelope(message)
        return Delivery(envelope, self._registry.decode(envelope))

    async def _apply_isolating(
        self, partition: TopicPartition, state: _Partition, items: Sequence[_Item]
    ) -> None:
        """Apply ``items`` in one transaction, or split them until the bad one is alone."""
        outcome = _Outcome()
        error = await self._settle(partition, state, lambda: self._try_transaction(items, outcome))
        if error is None:
            await self._release_behind(partition, state, items, outcome.replayed_keys)
            return
        if len(items) > 1:
            first, second = halves(items)
            await self._apply_isolating(partition, state, first)
            await self._apply_isolating(partition, state, second)
            return
        (item,) = items
        release = True
        if outcome.released:
            # The failure may be a released successor's: apply this event
            # alone, then release its successors one per transaction.
            release = False
            error = await self._settle(
                partition, state, lambda: self._try_transaction(items, _Outcome(), release=False)
            )
        if error is not None:
            error = await self._settle(
                partition,
                state,
                lambda: self._try_transaction(items, _Outcome(), release=release),
                bounded=True,
                failed_with=error,
            )
        if error is None:
            if not release:
                await self._release_behind(partition, state, items, [item.delivery.envelope.key])
            return
        await self._give_up(item.record, item.delivery.envelope.event_id, error)

    async def _settle(
        self,
        partition: TopicPartition,
        state: _Partition,
        attempt: Callable[[], Awaitable[Exception | None]],
        *,
        bounded: bool = False,
        failed_with: Exception | None = None,
    ) -> Exception | None:
        """Run ``attempt`` until it succeeds or fails for good; the error it failed with.

        A key's position moved by a concurrent member is retried at once (it is
        no failure), the database being unavailable waited out without limit.  Any other
        failure ends it at once, unless ``bounded``: then it is retried until
        ``RetryPolicy.max_attempts`` failures, unless the error is a
        ``PermanentError``.  ``failed_with``: the error of an attempt already
        made, which counts as the first.
        """
        failures = outages = 0
        error = failed_with
        while True:
            if error is None:
                error = await attempt()
            if error is None:
                return None
            kind = classify(error)
            if kind is Failure.CONCURRENT:
                # Nothing failed: another transaction committed first, and the
                # next attempt reads what it wrote.  Each one is progress, so it is
                # retried at once and counts neither as a failure nor as an outage.
                log.info(
                    "position moved by a concurrent member, retrying",
                    extra={"consumer": self.name, "error": str(error)},
                )
                error = None
                continue
            if kind is Failure.TRANSIENT:
                log.warning(
                    "database unavailable, will retry",
                    extra={"consumer": self.name, "error": repr(error)},
                )
                outages += 1
                await self._back_off(partition, state, self._retry.backoff(min(outages, 10)))
                error = None
                continue
            failures += 1
            if not bounded or kind is Failure.PERMANENT or failures >= self._retry.max_attempts:
                return error
            await self._back_off(partition, state, self._retry.backoff(failures))
            error = None

    async def _give_up(self, record: _Letter, event_id: str, error: Exception) -> None:
        if classify(error) is not Failure.PERMANENT:
            log.error(
                "giving up on event",
                exc_info=error,
                extra={"consumer": self.name, "event_id": event_id},
            )
        await self._dead_letter(record, error)

    async def _release_behind(
        self,
        partition: TopicPartition,
        state: _Partition,
        items: Sequence[_Item],
        keys: Sequence[str],
    ) -> None:
        """Apply what waits parked behind ``keys``, each event in its own transaction.

        Called for the keys of an event just applied without releasing its
        successors, and of a redelivered one: a crash between applying an
        event and releasing its successors redelivers that event (its offset
        was not committed), and this releases them then.  An event that cannot
        apply is dead-lettered; its successors stay parked, waiting for its number.
        """
        record = items[-1].record
        for key in dict.fromkeys(keys):
            while True:
                taken: list[tuple[str, bytes]] = []
                error = await self._settle(
                    partition,
                    state,
                    functools.partial(self._try_release, record.topic, key, taken),
                    bounded=True,
                )
                if error is None:
                    if not taken:
                        break  # nothing more waits for its turn
                    continue
                if not taken:
                    raise error  # not the event's failure: the runner's own
                event_id, message = taken[-1]
                # Where the gap-filler came from: the parked event's own record is gone.
                letter = _Letter(
                    topic=record.topic,
                    partition=record.partition,
                    offset=record.offset,
                    key=key.encode(),
                    value=message,
                    headers=(("event-id", event_id.encode()),),
                )
                await self._give_up(letter, event_id, error)
                dropped = await self._settle(
                    partition,
                    state,
                    functools.partial(self._try_drop_parked, record.topic, event_id),
                )
                if dropped is not None:
                    raise dropped  # not the event's failure: the runner's own
                break

    async def _try_drop_parked(self, topic: str, event_id: str) -> Exception | None:
        async def drop() -> None:
            async with self._pool.acquire() as conn:
                await drop_parked(conn, consumer=self.name, topic=topic, event_id=event_id)

        return await self._try(drop)

    async def _try_release(
        self, topic: str, key: str, taken: list[tuple[str, bytes]]
    ) -> Exception | None:
        return await self._try(lambda: self._release_next(topic, key, taken))

    async def _release_next(self, topic: str, key: str, taken: list[tuple[str, bytes]]) -> None:
        taken.clear()
        async with self._pool.acquire() as conn, conn.transaction():
            ready = await take_ready(conn, consumer=self.name, topic=topic, key=key)
            if ready is None:
                return
            taken.append(ready)
            await self._handler(conn, [self._decode_stored(ready[1])])
        _count("applied", self.name, 1)

    @staticmethod
    async def _try(work: Callable[[], Awaitable[None]]) -> Exception | None:
        # The error is returned, not handled inside ``except``, so that later
        # attempts' own failures do not chain onto it.
        try:
            await work()
        except Exception as exc:
            return exc
        return None

    async def _try_transaction(
        self, items: Sequence[_Item], outcome: _Outcome, *, release: bool = True
    ) -> Exception | None:
        return await self._try(lambda: self._transaction(items, outcome, release))

    async def _transaction(self, items: Sequence[_Item], outcome: _Outcome, release: bool) -> None:
        first_seen: dict[str, _Item] = {}
        for item in items:
            first_seen.setdefault(item.delivery.envelope.event_id, item)
        single = items[0].delivery.envelope if len(items) == 1 else None
        token = logs.correlation_id.set(
            (single.correlation_id or single.event_id) if single is not None else None
        )
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                fresh = await self._dedupe(conn, list(first_seen.values()))
                new = len(fresh)
                stale = parked = duplicate = 0
                if self._sequencing is not None and fresh:
                    admission = await admit(
                        conn,
                        consumer=self.name,
                        topic=items[0].record.topic,
                        mode=self._sequencing,
                        fresh=fresh,
                        messages={
                            i.delivery.envelope.event_id: i.record.value
                            for i in first_seen.values()
                        },
                        decode=self._decode_stored,
                        release=release,
                    )
                    fresh, stale, parked = admission.apply, admission.stale, admission.parked
                    duplicate = admission.duplicate  # strict: redelivered, known by position
                    outcome.released = admission.released
                    if self._sequencing == "strict":
                        outcome.replayed_keys = admission.stale_keys
                if fresh:
                    await self._handler(conn, fresh)
        finally:
            logs.correlation_id.reset(token)
        _count("applied", self.name, len(fresh))
        _count("duplicate", self.name, len(items) - new + duplicate)
        _count("stale", self.name, stale)
        _count("parked", self.name, parked)

    async def _dedupe(self, conn: Connection, items: Sequence[_Item]) -> list[Delivery]:
        """The events of ``items`` (distinct ids, offset order) not applied before.

        An event is recorded in ``processed_events`` (one row per event id)
        unless the consumer is ``strict`` and the event carries a sequence:
        then its key's position is its dedupe.  ``admit`` applies an event only
        if its number is the position's next, and moves the position onto it in
        the same transaction as its effects, conditionally on the position it
        read (``PositionMoved``: a concurrent writer is waited for, then
        retried against).  So an event at or below the position was applied,
        exactly once, and anything redelivered, duplicated (a second event id
        with the same number included) or replayed from offset 0 is skipped
        (counted as a duplicate); one still parked is skipped as already waiting.  A row per
        event would only repeat that, at ~12 us of PostgreSQL per event.
        Events without a sequence, and every event of other consumers, keep
        their dedupe row.
        """
        by_position = self._sequencing == "strict"
        recorded = [
            i.delivery.envelope.event_id
            for i in items
            if not (by_position and i.delivery.envelope.sequence is not None)
        ]
        new_ids: set[str] = set()
        if recorded:
            rows = await conn.fetch(
                "INSERT INTO processed_events (consumer, event_id)"
                " SELECT $1, unnest($2::text[]) ON CONFLICT DO NOTHING RETURNING event_id",
                self.name,
                recorded,
            )
            new_ids = {row[0] for row in rows}
        return [
            i.delivery
            for i in items
            if (by_position and i.delivery.envelope.sequence is not None)
            or i.delivery.envelope.event_id in new_ids
        ]

    async def _back_off(self, partition: TopicPartition, state: _Partition, seconds: float) -> None:
        state.backing_off = True
        self._update_pause(partition, state)
        try:
            if await sleep_or_stop(self._stopping, seconds):
                raise _Stopping
        finally:
            state.backing_off = False
            self._update_pause(partition, state)

    async def _committer(self) -> None:
        while True:
            await self._commit_wanted.wait()
            self._commit_wanted.clear()
            await self._flush_commits()

    async def _flush_commits(self) -> None:
        async with self._commit_lock:
            offsets, self._to_commit = self._to_commit, {}
            if not offsets:
                return
            try:
                await self._consumer.commit(offsets)
            except KafkaError as exc:
                # Typically a partition moved to another member during a rebalance.
                # Its new owner re-reads these events and the dedupe rows make that a no-op.
                log.warning(
                    "offset commit failed",
                    extra={
                        "consumer": self.name,
                        "partitions": sorted(map(str, offsets)),
                        "error": repr(exc),
                    },
                )

    async def _renew_producer(self) -> None:
        """Dead letters from now on through a fresh producer (the shared one keeps its gap)."""
        fresh = await started(
            new_producer(
                self._bootstrap, client_id=f"{self.name}-dead-letters", security=self._security
            )
        )
        replaced, self._producer = self._producer, fresh
        if self._own_producer:
            await replaced.stop()
        self._own_producer = True
        log.info("dead letters go through a fresh producer", extra={"consumer": self.name})

    async def _dead_letter(self, record: _Letter | ConsumerRecord, error: BaseException) -> None:
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
        renew = False
        while True:
            attempt += 1
            try:
                if renew:
                    await self._renew_producer()
                    renew = False
                delivery = await self._producer.send(
                    f"{record.topic}.dlq", value=record.value, key=record.key, headers=headers
                )
                await delivery
                break
            except KafkaError as exc:
                log.warning("dead-letter send failed, retrying", extra={"error": repr(exc)})
                # A gap in the producer's batch numbers would refuse every retry.
                renew = renew or isinstance(exc, BATCH_NUMBER_GAP)
                if await sleep_or_stop(self._stopping, self._retry.backoff(min(attempt, 10))):
                    raise _Stopping from exc
        EVENTS_DEAD_LETTERED.labels(self.name, record.topic).inc()
        _count("dead_lettered", self.name, 1)
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


def _count(outcome: str, consumer: str, events: int) -> None:
    if events:
        EVENTS_CONSUMED.labels(consumer, outcome).inc(events)


class _Revocations(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, runner: BatchConsumer) -> None:
        self._runner = runner

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self._runner._revoke(list(revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self._runner.assignments += 1
        log.info(
            "partitions assigned",
            extra={"consumer": self._runner.name, "partitions": sorted(map(str, assigned))},
        )


class IdempotentConsumer(BatchConsumer):
    """The same runner, one event per transaction: ``handler(conn, envelope, event)``."""

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
        topic_prefix: str = "",
        security: KafkaSecurity = PLAINTEXT,
        retry: RetryPolicy | None = None,
        max_batch: int = 200,
        sequencing: Sequencing | None = None,
        parked_gauge_seconds: float = 15.0,
    ) -> None:
        async def each(conn: Connection, deliveries: Sequence[Delivery]) -> None:
            for delivery in deliveries:
                await handler(conn, delivery.envelope, delivery.event)

        super().__init__(
            name=name,
            bootstrap=bootstrap,
            topics=topics,
            registry=registry,
            handler=each,
            pool=pool,
            producer=producer,
            group_id=group_id,
            topic_prefix=topic_prefix,
            security=security,
            retry=retry,
            max_batch=max_batch,
            sequencing=sequencing,
            parked_gauge_seconds=parked_gauge_seconds,
        )
        self._per_transaction = 1
