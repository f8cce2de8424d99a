"""``python -m tests.support.timer_process <dsn>``: one replica's timer loop, alone.

Fires ``test.mark`` timers with the real clock: the handler records the key in
``timer_effects`` and then takes the key's row in ``timer_gate`` (if there is
one) ``FOR UPDATE``, so a test holding that row keeps the handler mid-transaction
for as long as it likes.  Runs until SIGTERM (exit 0) or SIGKILL.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from shared import db, logs
from shared.timers import TimerHandler, TimerLoop

TIMER_TABLES = """
CREATE TABLE IF NOT EXISTS timer_effects (
    key      text NOT NULL,
    fired_by text NOT NULL
);
CREATE TABLE IF NOT EXISTS timer_gate (key text PRIMARY KEY);
"""


def marking_handler(replica: str) -> TimerHandler:
    async def mark(conn: db.Connection, key: str) -> None:
        await conn.execute(
            "INSERT INTO timer_effects (key, fired_by) VALUES ($1, $2)", key, replica
        )
        await conn.execute("SELECT key FROM timer_gate WHERE key = $1 FOR UPDATE", key)

    return mark


async def main(dsn: str, replica: str) -> None:
    logs.configure_logging("test-timers", "INFO")
    pool = await db.create_pool(dsn, min_size=1, max_size=2)
    try:
        loop = TimerLoop(pool, {"test.mark": marking_handler(replica)}, poll_seconds=0.05)
        for signum in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(signum, loop.stop)
        await loop.run()
    finally:
        await pool.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
