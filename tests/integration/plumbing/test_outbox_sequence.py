"""Per-key sequence numbers: the outbox refuses a second event with the same one."""

from __future__ import annotations

import asyncpg
import pytest

from shared import db
from shared.contracts.envelope import Topic, decode_envelope
from shared.outbox import append
from tests.support.events import TEST_PRODUCER, Ping, ping_topic

TOPIC = ping_topic("sequenced")
OTHER_TOPIC = ping_topic("other")


async def record(pool: db.Pool, key: str, sequence: int | None, topic: Topic = TOPIC) -> None:
    async with db.unit_of_work(pool) as conn:
        await conn.execute("INSERT INTO effects (event_id, n) VALUES ('state change', 0)")
        await append(
            conn, topic, Ping(n=sequence or 0), key=key, producer=TEST_PRODUCER, sequence=sequence
        )


async def test_a_duplicate_sequence_for_a_key_fails_with_its_state_change(pool: db.Pool) -> None:
    await record(pool, "order-1", 1)
    await record(pool, "order-1", 2)
    with pytest.raises(asyncpg.UniqueViolationError):
        await record(pool, "order-1", 2)
    # The same number is free for another key, another topic, and unsequenced events repeat.
    await record(pool, "order-2", 2)
    await record(pool, "order-1", 2, topic=OTHER_TOPIC)
    await record(pool, "order-1", None)
    await record(pool, "order-1", None)

    rows = await pool.fetch("SELECT key, sequence, payload FROM outbox ORDER BY id")
    assert [(row["key"], row["sequence"]) for row in rows] == [
        ("order-1", 1),
        ("order-1", 2),
        ("order-2", 2),
        ("order-1", 2),
        ("order-1", None),
        ("order-1", None),
    ]
    assert [decode_envelope(row["payload"]).sequence for row in rows] == [1, 2, 2, 2, None, None]
    # The refused event's state change was rolled back with it.
    assert await pool.fetchval("SELECT count(*) FROM effects") == len(rows)
