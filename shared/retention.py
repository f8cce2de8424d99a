"""How long the plumbing tables keep what they no longer need, and the pruning.

* ``outbox``: a sent row only answers "was this event published, and when?";
  it goes after ``outbox_retention_hours``.  Unsent rows are never pruned.
* ``processed_events``: a consumer's dedupe row must outlive every chance of
  the event being delivered again.  On a compacted or retain-forever topic
  that chance never ends (a rebuild reads from offset 0), so those rows are
  kept.  On a topic whose messages Kafka deletes after ``retention.ms``, a row
  older than that retention plus the longest a consumer may lag is dead
  weight: such consumers opt in (``Composition.pruned_consumers``) and their
  rows go after ``processed_events_retention_hours``, which must exceed the
  topic's retention.

Each delete removes a bounded batch, so no statement holds many row locks or
writes a burst of WAL; the loop runs hourly.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from shared.db import Connection

_BATCH = 10_000


def _deleted(status: str) -> int:
    return int(status.split()[-1])  # "DELETE <n>"


async def prune_sent_events(
    conn: Connection, *, sent_before: datetime, batch_size: int = _BATCH
) -> int:
    """Delete outbox rows sent before ``sent_before``; return how many."""
    deleted = 0
    while True:
        count = _deleted(
            await conn.execute(
                "DELETE FROM outbox WHERE id = ANY(ARRAY(SELECT id FROM outbox"
                " WHERE published_at < $1 ORDER BY published_at LIMIT $2))",
                sent_before,
                batch_size,
            )
        )
        deleted += count
        if count < batch_size:
            return deleted


async def prune_processed_events(
    conn: Connection,
    *,
    consumers: Sequence[str],
    processed_before: datetime,
    batch_size: int = _BATCH,
) -> int:
    """Delete the dedupe rows of ``consumers`` older than ``processed_before``; return how many.

    Only for consumers whose topics delete messages by time (see the module).
    """
    deleted = 0
    for consumer in consumers:
        while True:
            count = _deleted(
                await conn.execute(
                    "DELETE FROM processed_events WHERE consumer = $1 AND event_id = ANY(ARRAY("
                    " SELECT event_id FROM processed_events"
                    # Oldest first, as the index (consumer, processed_at) hands
                    # them out: unordered, a generic plan that guesses a third
                    # of the rows match prefers reading the whole table.
                    " WHERE consumer = $1 AND processed_at < $2 ORDER BY processed_at LIMIT $3))",
                    consumer,
                    processed_before,
                    batch_size,
                )
            )
            deleted += count
            if count < batch_size:
                break
    return deleted
