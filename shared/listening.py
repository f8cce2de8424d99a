"""The one LISTEN loop: a PostgreSQL notification channel that survives lost connections.

LISTEN lives on one connection, outside any transaction, for as long as the
connection lives.  When the connection dies (server restart, network), any
notification sent meanwhile is lost; so after every (re)connect the owner's
``on_connect`` runs, and it must assume it missed something (drop a cache,
make one extra pass).  The loop checks the connection every ``probe_seconds``,
so a dead one is noticed even when no notification is due.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from shared.db import Pool, release_undone
from shared.retry import RetryPolicy
from shared.runtime import sleep_or_stop

log = logging.getLogger(__name__)

_RECONNECT = RetryPolicy(first_backoff=0.2, max_backoff=5.0)


class Listener:
    def __init__(
        self,
        pool: Pool,
        channel: str,
        on_notify: Callable[[str], None],
        *,
        on_connect: Callable[[], None] = lambda: None,
        probe_seconds: float = 1.0,
    ) -> None:
        self.channel = channel
        self._pool = pool
        self._on_notify = on_notify
        self._on_connect = on_connect
        self._probe_seconds = probe_seconds
        self._stopping = asyncio.Event()
        # Set while notifications reach ``on_notify``; tests and readiness wait on it.
        self.listening = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                await self._listen_until_stopped_or_lost()
                failures = 0
            except Exception as exc:
                failures += 1
                log.warning(
                    "listener lost its connection",
                    extra={"channel": self.channel, "error": repr(exc)},
                )
            if await sleep_or_stop(self._stopping, _RECONNECT.backoff(max(failures, 1))):
                return

    def _deliver(self, _conn: object, _pid: int, _channel: str, payload: object, /) -> None:
        self._on_notify(str(payload))

    async def _listen_until_stopped_or_lost(self) -> None:
        conn = await self._pool.acquire()
        try:
            await conn.add_listener(self.channel, self._deliver)
            self._on_connect()
            self.listening.set()
            while not await sleep_or_stop(self._stopping, self._probe_seconds):
                if conn.is_closed():
                    return
                await conn.fetchval("SELECT 1")  # notices a dead connection promptly
        finally:
            self.listening.clear()

            async def unlisten() -> None:
                await conn.remove_listener(self.channel, self._deliver)
                # A LISTEN cut short after the server ran it is unknown to asyncpg,
                # which then skips its own UNLISTEN: end every one this session has.
                await conn.execute("UNLISTEN *")

            await release_undone(self._pool, conn, unlisten)
