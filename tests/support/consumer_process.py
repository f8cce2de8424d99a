"""``python -m tests.support.consumer_process <dsn> <bootstrap> <topic> <name> <work_s> [batch]``.

Runs the production consumer for ``Ping`` events: ``IdempotentConsumer`` by
default, ``BatchConsumer`` (chunks of 50) with ``batch``.  Its effect is one
row in ``effects`` per event, after ``work_s`` seconds of (database) work per
transaction inside it, so that a SIGKILL lands in the middle of a batch.
SIGTERM stops it cleanly (exit 0).
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Sequence

from shared import db, kafka, logs
from shared.consumer import BatchConsumer, Delivery, IdempotentConsumer
from shared.contracts.envelope import Envelope, Event, EventRegistry
from tests.support.events import Ping

BATCH = 50


async def main(
    dsn: str, bootstrap: str, topic: str, name: str, work_seconds: float, batch: bool
) -> None:
    logs.configure_logging("test-consumer", "INFO")
    pool = await db.create_pool(dsn, min_size=1, max_size=4)
    producer = kafka.new_producer(bootstrap, client_id=name)

    async def apply(conn: db.Connection, envelope: Envelope, event: Event) -> None:
        assert isinstance(event, Ping)
        await conn.execute(
            "INSERT INTO effects (event_id, n) VALUES ($1, $2)", envelope.event_id, event.n
        )
        await conn.execute("SELECT pg_sleep($1)", work_seconds)

    async def apply_all(conn: db.Connection, deliveries: Sequence[Delivery]) -> None:
        pings = [d.event for d in deliveries if isinstance(d.event, Ping)]
        await conn.execute(
            "INSERT INTO effects (event_id, n) SELECT unnest($1::text[]), unnest($2::int[])",
            [d.envelope.event_id for d in deliveries],
            [ping.n for ping in pings],
        )
        await conn.execute("SELECT pg_sleep($1)", work_seconds)

    try:
        await producer.start()
        registry = EventRegistry([Ping])
        consumer: BatchConsumer
        if batch:
            consumer = BatchConsumer(
                name=name,
                bootstrap=bootstrap,
                topics=[topic],
                registry=registry,
                handler=apply_all,
                pool=pool,
                producer=producer,
                max_batch=BATCH,
            )
        else:
            consumer = IdempotentConsumer(
                name=name,
                bootstrap=bootstrap,
                topics=[topic],
                registry=registry,
                handler=apply,
                pool=pool,
                producer=producer,
            )
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, consumer.stop)
        await consumer.run()
    finally:
        await producer.stop()
        await pool.close()


if __name__ == "__main__":
    dsn, bootstrap, topic, name, work = sys.argv[1:6]
    asyncio.run(main(dsn, bootstrap, topic, name, float(work), sys.argv[6:7] == ["batch"]))
