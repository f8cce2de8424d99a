"""``python -m tests.support.relay_process <dsn> <bootstrap>``: an outbox relay, alone.

Runs the production ``OutboxRelay`` against the database until SIGTERM (exit 0)
or until the test SIGKILLs it.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from shared import db, kafka, logs
from shared.outbox import OutboxRelay


async def main(dsn: str, bootstrap: str) -> None:
    logs.configure_logging("test-relay", "INFO")
    pool = await db.create_pool(dsn, min_size=1, max_size=3)
    producer = kafka.new_producer(bootstrap, client_id="test-relay")
    try:
        await producer.start()
        relay = OutboxRelay(pool, producer, idle_poll_seconds=0.2)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, relay.stop)
        await relay.run()
    finally:
        await producer.stop()
        await pool.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
