"""Applying an aggregate's events in its own sequence (1, 2, 3 ... per key).

A consumer that asks for sequencing keeps, per ``(consumer, topic, key)``, the
last sequence number it applied (``consumer_positions``), written in the same
transaction as the effects.  Two modes:

* ``"strict"`` (a topic whose consumers need every step, such as the orders
  topic keyed by order id): the next number applies; an older or repeated one
  was applied already (the outbox gives a number to one event only), so the
  event is a duplicate and skipped; a later one is *parked* (``parked_events``), never
  applied out of order, and released, in order and in the same transaction,
  as soon as the missing one applies.  A gap that never fills (its event was
  dead-lettered, say) keeps its successors parked for an operator to see with
  ``parked_events``.
* ``"latest"`` (compacted full-state topics such as ``catalog.*``): an event
  applies only if it is newer than the last applied for its key; gaps are
  normal (compaction removed the steps between), so nothing is parked.

Parking while another member applies.  Two members (or one and a redelivery)
can meet on a key at position n-1: one parks n+1, the other applies n.
Unlocked, each reads before the other commits: the parker sees n-1 and parks,
the applier sees nothing parked and releases nothing, and n+1 waits for an
event that never comes again (an order's last event would wait for ever).  So
both take the key's position row, and whoever takes it second sees the
other's work.  The applier takes it by moving the position (the conditional
write of ``_move_positions``); the parker by the same write, from the number
it read to that same number (a key without a row gets one at 0, which the
applier's insert then meets).  Under READ COMMITTED a statement sees what was
committed before it began; one that waited for a row lock then sees that
row's newest version, and nothing else the other transaction wrote.  Hence:

* the applier wrote first: the parker's write waits, then finds the position
  moved (n, not n-1): ``PositionMoved``; retried, it reads n and applies n+1;
* the parker wrote first: the applier's write waits until the parker commits,
  and its next statement (``_refuse_parked_meanwhile``: a statement of its
  own, for the reason above) sees n+1 parked: ``PositionMoved``; retried, the
  chunk reads n+1 and releases it with n.

``take_ready`` moves a position the same way, and its caller takes again, in a
new transaction, until nothing is ready: an event parked behind it is seen.
The cost falls on parking (one row write) and on one indexed read per chunk
that moved positions.

When a transaction that released parked events fails, the runner cannot tell
which event failed: it applies the gap-filler alone (``release=False``), then
releases its successors one per transaction (``take_ready``), so a successor
that cannot apply is the one retried or dead-lettered, not the event before it.

Events without a sequence (older producers, topics without one) pass through
untouched, except in strict mode once their key has a numbered event applied:
then they are out of order (numbering began after them, or they are forged) and
skipped as stale.  The decisions are pure functions (``verdict``, ``plan``); ``admit``
wraps them in the queries.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

import msgspec

from shared.contracts.envelope import Envelope, Event
from shared.db import Connection

Sequencing = Literal["strict", "latest"]


class Delivery(msgspec.Struct, frozen=True, gc=False):
    """One event handed to a consumer's handler, with the envelope it came in.

    A Struct outside the cyclic GC: one is made per event consumed (thousands a
    chunk), and it holds no cycles (an envelope and a decoded event).
    """

    envelope: Envelope
    event: Event


class Verdict(enum.Enum):
    APPLY = "apply"
    DUPLICATE = "duplicate"  # strict: its number applied already, so this event did: skip
    STALE = "stale"  # latest: older than what applied, superseded: skip
    PARK = "park"  # ahead of a gap: keep until the gap fills


def verdict(mode: Sequencing, last_applied: int, sequence: int) -> Verdict:
    """What to do with ``sequence`` when ``last_applied`` (0: none yet) is the key's position.

    In strict order every number up to the position applied, and a number
    belongs to one event: one at or below it is a redelivery (a strict
    consumer keeps no per-event dedupe row to tell it otherwise).  In latest
    order numbers are skipped, and events reaching here passed the event-id
    dedupe: one at or below the position is older news, stale.
    """
    if sequence <= last_applied:
        return Verdict.DUPLICATE if mode == "strict" else Verdict.STALE
    if mode == "latest" or sequence == last_applied + 1:
        return Verdict.APPLY
    return Verdict.PARK


@dataclass
class Plan:
    """What one transaction does with a chunk's new events, in the order to apply them."""

    apply: list[Delivery] = field(default_factory=list)
    positions: dict[str, int] = field(default_factory=dict)  # key -> new last applied
    park: list[Delivery] = field(default_factory=list)
    released: list[tuple[str, int]] = field(default_factory=list)  # parked rows now applied
    stale: int = 0  # older than what applied (latest), or out of order without a number
    duplicate: int = 0  # applied already, or waiting already as this very event
    # Keys of the events skipped as applied or waiting already (or claiming a
    # number that is): most are redeliveries, whose parked successors the
    # runner releases.
    stale_keys: list[str] = field(default_factory=list)


def plan(
    mode: Sequencing,
    positions: dict[str, int],
    parked: dict[str, dict[int, Delivery]],
    fresh: Sequence[Delivery],
    *,
    release: bool = True,
) -> Plan:
    """Decide, for events in offset order, which apply (and in what order), skip or park.

    ``positions`` holds the keys' last applied sequences, ``parked`` what each
    key has waiting already; neither is modified.  Without ``release``, events
    parked before stay parked even when their turn has come.
    """
    result = Plan()
    last = dict(positions)
    waiting = {key: dict(by_sequence) for key, by_sequence in parked.items()}
    parked_now: dict[tuple[str, int], Delivery] = {}
    for delivery in fresh:
        sequence = delivery.envelope.sequence
        key = delivery.envelope.key
        if sequence is None:
            # Unnumbered events predate numbering: in strict order, one after a numbered
            # event of its key is out of order (or forged), never a step still to apply.
            if mode == "strict" and last.get(key):
                result.stale += 1
            else:
                result.apply.append(delivery)
            continue
        decision = verdict(mode, last.get(key, 0), sequence)
        if decision is Verdict.STALE or decision is Verdict.DUPLICATE:
            result.stale_keys.append(key)
            if decision is Verdict.STALE:
                result.stale += 1
            else:
                result.duplicate += 1
        elif decision is Verdict.PARK:
            if (copy := waiting.setdefault(key, {}).get(sequence)) is not None:
                result.stale_keys.append(key)
                if copy.envelope.event_id == delivery.envelope.event_id:
                    result.duplicate += 1  # parked already: redelivered
                else:
                    result.stale += 1  # a second event claiming a number already waiting
            else:
                waiting[key][sequence] = delivery
                parked_now[(key, sequence)] = delivery
        else:
            result.apply.append(delivery)
            last[key] = sequence
            if key not in waiting:  # most keys have nothing waiting
                continue
            # Its own copy may wait parked (parked, then redelivered): applied now.
            copy = waiting[key].pop(sequence, None)
            if copy is not None and parked_now.pop((key, sequence), None) is None:
                result.released.append((key, sequence))
            if release:
                _release_successors(key, last, waiting[key], parked_now, result)
    result.positions = {key: seq for key, seq in last.items() if positions.get(key) != seq}
    result.park = list(parked_now.values())
    return result


def _release_successors(
    key: str,
    last: dict[str, int],
    waiting: dict[int, Delivery],
    parked_now: dict[tuple[str, int], Delivery],
    result: Plan,
) -> None:
    while (successor := waiting.pop(last[key] + 1, None)) is not None:
        last[key] += 1
        result.apply.append(successor)
        if parked_now.pop((key, last[key]), None) is None:
            result.released.append((key, last[key]))


@dataclass(frozen=True)
class Admission:
    """``plan`` carried out: what the handler applies, and what was skipped or parked."""

    apply: list[Delivery]
    stale: int
    parked: int
    released: int
    stale_keys: list[str] = field(default_factory=list)
    duplicate: int = 0


class PositionMoved(Exception):
    """A key's position changed under this transaction (another one applied its events).

    Retried: the next attempt reads the new position and skips what was applied.
    """


Decode = Callable[[bytes], Delivery]


async def admit(
    conn: Connection,
    *,
    consumer: str,
    topic: str,
    mode: Sequencing,
    fresh: Sequence[Delivery],
    messages: dict[str, bytes],
    decode: Decode,
    release: bool = True,
) -> Admission:
    """Sequence ``fresh`` (one topic, offset order) inside the caller's transaction.

    ``messages`` maps event ids to the raw messages, stored when an event is
    parked; ``decode`` turns a stored message back into a ``Delivery``.
    """
    # Strict: unnumbered events' keys too, one after its key's numbered events is skipped.
    keys = sorted(
        {d.envelope.key for d in fresh if mode == "strict" or d.envelope.sequence is not None}
    )
    if not keys:
        return Admission(list(fresh), stale=0, parked=0, released=0)
    # One index lookup per key (the LATERAL ... LIMIT 1 keeps the planner from
    # a join): ``key = ANY($3)`` was planned as a scan of every position of the
    # consumer filtered by the array, a cost that grew with the topic's history
    # (~100 ms a chunk at 60,000 orders).
    rows = await conn.fetch(
        "SELECT p.key, p.sequence FROM unnest($3::text[]) AS wanted(key)"
        " CROSS JOIN LATERAL (SELECT c.key, c.sequence FROM consumer_positions c"
        "  WHERE c.consumer = $1 AND c.topic = $2 AND c.key = wanted.key LIMIT 1) p",
        consumer,
        topic,
        keys,
    )
    positions: dict[str, int] = {row["key"]: row["sequence"] for row in rows}
    waiting: dict[str, dict[int, Delivery]] = {}
    if mode == "strict":
        for row in await conn.fetch(
            "SELECT key, sequence, message FROM parked_events"
            " WHERE consumer = $1 AND topic = $2 AND key = ANY($3::text[])",
            consumer,
            topic,
            keys,
        ):
            waiting.setdefault(row["key"], {})[row["sequence"]] = decode(row["message"])
    decided = plan(mode, positions, waiting, fresh, release=release)
    # A key that parks takes its position row too, writing back the number it
    # read (a key without one gets one at 0): see "Parking while another
    # member applies" above.
    held = dict(decided.positions)
    for delivery in decided.park:
        held.setdefault(delivery.envelope.key, positions.get(delivery.envelope.key, 0))
    if held:
        await _move_positions(conn, consumer, topic, positions, held)
    if release and decided.positions and mode == "strict":
        await _refuse_parked_meanwhile(conn, consumer, topic, decided.positions)
    if decided.park:
        await conn.execute(
            "INSERT INTO parked_events (consumer, topic, key, sequence, event_id, message)"
            " SELECT $1, $2, unnest($3::text[]), unnest($4::bigint[]),"
            " unnest($5::text[]), unnest($6::bytea[])",
            consumer,
            topic,
            [d.envelope.key for d in decided.park],
            [d.envelope.sequence for d in decided.park],
            [d.envelope.event_id for d in decided.park],
            [messages[d.envelope.event_id] for d in decided.park],
        )
    if decided.released:
        await conn.execute(
            "DELETE FROM parked_events WHERE consumer = $1 AND topic = $2"
            " AND (key, sequence) IN (SELECT unnest($3::text[]), unnest($4::bigint[]))",
            consumer,
            topic,
            [key for key, _ in decided.released],
            [sequence for _, sequence in decided.released],
        )
    return Admission(
        decided.apply,
        stale=decided.stale,
        parked=len(decided.park),
        released=len(decided.released),
        stale_keys=decided.stale_keys,
        duplicate=decided.duplicate,
    )


async def _move_positions(
    conn: Connection,
    consumer: str,
    topic: str,
    read: dict[str, int],
    moved: dict[str, int],
) -> None:
    """Write the keys' new positions, only where they are still what ``admit`` read.

    The positions were read without a lock, so another transaction (a second
    member of the group still working on a partition it lost) may have moved
    one since.  Each update is conditional on the position read, and a key
    read as new is inserted only if it is still new; a write that does not
    happen raises ``PositionMoved`` and the whole transaction is retried.  A
    concurrent writer holds the row (or its unique-index entry) until it ends,
    so the check sees its outcome: positions are a dedupe as safe as a unique
    row per event.  Keys in order, so two such transactions lock alike.
    """
    existing = sorted(key for key in moved if key in read)
    new = sorted(key for key in moved if key not in read)
    written = 0
    if existing:
        written += len(
            await conn.fetch(
                "UPDATE consumer_positions c SET sequence = w.sequence, updated_at = now()"
                " FROM unnest($3::text[], $4::bigint[], $5::bigint[]) AS w(key, sequence, was)"
                " WHERE c.consumer = $1 AND c.topic = $2 AND c.key = w.key AND c.sequence = w.was"
                " RETURNING c.key",
                consumer,
                topic,
                existing,
                [moved[key] for key in existing],
                [read[key] for key in existing],
            )
        )
    if new:
        written += len(
            await conn.fetch(
                "INSERT INTO consumer_positions (consumer, topic, key, sequence)"
                " SELECT $1, $2, unnest($3::text[]), unnest($4::bigint[])"
                " ON CONFLICT (consumer, topic, key) DO NOTHING RETURNING key",
                consumer,
                topic,
                new,
                [moved[key] for key in new],
            )
        )
    if written != len(moved):
        raise PositionMoved(f"{len(moved) - written} positions of {consumer} moved meanwhile")


async def _refuse_parked_meanwhile(
    conn: Connection, consumer: str, topic: str, moved: dict[str, int]
) -> None:
    """Raise ``PositionMoved`` if an event now waits right behind a position just moved.

    The plan released every successor it read, so one there now was parked by
    a transaction that committed after that read: retried, the chunk reads it
    and releases it.  A statement of its own, after the positions were
    written: see "Parking while another member applies" above.
    """
    keys = sorted(moved)
    waiting = await conn.fetchval(
        "SELECT count(*) FROM parked_events WHERE consumer = $1 AND topic = $2"
        " AND (key, sequence) IN (SELECT unnest($3::text[]), unnest($4::bigint[]))",
        consumer,
        topic,
        keys,
        [moved[key] + 1 for key in keys],
    )
    if waiting:
        raise PositionMoved(f"{waiting} events of {consumer} were parked meanwhile")


async def take_ready(
    conn: Connection, *, consumer: str, topic: str, key: str
) -> tuple[str, bytes] | None:
    """Unpark the event whose turn has come for ``key``, if one waits: its id and message.

    In the caller's transaction the event leaves ``parked_events`` and the
    key's position moves onto it; the caller applies it there, so a failure
    rolls all three back.  The position moves only from the one the take read
    (``PositionMoved`` otherwise): another member may be applying a
    redelivered copy of the same event, deduped by that position alone.
    """
    row = await conn.fetchrow(
        "DELETE FROM parked_events p WHERE consumer = $1 AND topic = $2 AND key = $3"
        " AND sequence = 1 + coalesce((SELECT c.sequence FROM consumer_positions c"
        "  WHERE c.consumer = $1 AND c.topic = $2 AND c.key = $3), 0)"
        " RETURNING sequence, event_id, message",
        consumer,
        topic,
        key,
    )
    if row is None:
        return None
    before: int = row["sequence"] - 1
    await _move_positions(
        conn, consumer, topic, {key: before} if before else {}, {key: row["sequence"]}
    )
    return row["event_id"], row["message"]


async def drop_parked(conn: Connection, *, consumer: str, topic: str, event_id: str) -> None:
    """Forget a parked event that was dead-lettered; its successors keep waiting for it."""
    await conn.execute(
        "DELETE FROM parked_events WHERE consumer = $1 AND topic = $2 AND event_id = $3",
        consumer,
        topic,
        event_id,
    )


async def parked_count(conn: Connection, consumer: str) -> int:
    """How many events ``consumer`` holds back, for the ``events_parked`` gauge."""
    count: int = await conn.fetchval(
        "SELECT count(*) FROM parked_events WHERE consumer = $1", consumer
    )
    return count


@dataclass(frozen=True)
class ParkedEvent:
    topic: str
    key: str
    sequence: int
    event_id: str
    parked_at: datetime
    waiting_for: int  # the sequence number whose absence holds this event back


async def parked_events(conn: Connection, consumer: str) -> list[ParkedEvent]:
    """What ``consumer`` holds back, per aggregate in sequence order: for operators and tests."""
    rows = await conn.fetch(
        "SELECT p.topic, p.key, p.sequence, p.event_id, p.parked_at,"
        " coalesce(c.sequence, 0) + 1 AS waiting_for"
        " FROM parked_events p LEFT JOIN consumer_positions c"
        " ON c.consumer = p.consumer AND c.topic = p.topic AND c.key = p.key"
        " WHERE p.consumer = $1 ORDER BY p.topic, p.key, p.sequence",
        consumer,
    )
    return [
        ParkedEvent(
            topic=row["topic"],
            key=row["key"],
            sequence=row["sequence"],
            event_id=row["event_id"],
            parked_at=row["parked_at"],
            waiting_for=row["waiting_for"],
        )
        for row in rows
    ]
