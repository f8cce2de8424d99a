"""Which token generation is current for each account, cached in the process.

Every authenticated request must know whether its token was superseded by a
rotation; asking PostgreSQL each time cost about 40 % of a small browse
request's time (see ``bench/catalog_browse.py``).  So the answer is cached,
and kept right three ways: a rotation in this process forgets the account at
once; a rotation in another replica reaches this one through
``NOTIFY token_rotated``; and an entry is trusted for ``ttl_seconds`` at most,
which bounds staleness even while the listener reconnects (on reconnect the
whole cache is dropped, since notifications may have been missed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from services.catalog import store
from shared.db import Connection, Pool
from shared.tokens import Principal

log = logging.getLogger(__name__)

ROTATED_CHANNEL = store.ROTATION_CHANNEL


class TokenGenerations:
    def __init__(
        self,
        pool: Pool,
        *,
        ttl_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pool = pool
        self._ttl = ttl_seconds
        self._clock = clock
        self._current: dict[tuple[str, str], tuple[int | None, float]] = {}
        self._stopping = asyncio.Event()
        # Set while rotations in other replicas reach this cache.
        self.listening = asyncio.Event()

    async def superseded(self, principal: Principal) -> bool:
        key = (principal.role, principal.subject)
        cached = self._current.get(key)
        now = self._clock()
        if cached is not None and now - cached[1] < self._ttl:
            generation = cached[0]
        else:
            async with self._pool.acquire() as conn:
                generation = await store.token_generation(conn, principal.role, principal.subject)
            self._current[key] = (generation, now)
        return generation is None or principal.generation < generation

    def forget(self, subject: str) -> None:
        for role in ("partner", "customer"):
            self._current.pop((role, subject), None)

    def _on_notify(self, _conn: Connection, _pid: int, _channel: str, subject: object, /) -> None:
        self.forget(str(subject))

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self._listen_until_stopped_or_lost()
            except Exception as exc:
                log.warning("token rotation listener lost", extra={"error": repr(exc)})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), 1.0)

    async def _listen_until_stopped_or_lost(self) -> None:
        conn = await self._pool.acquire()
        try:
            await conn.add_listener(ROTATED_CHANNEL, self._on_notify)
            self._current.clear()
            self.listening.set()
            while not self._stopping.is_set() and not conn.is_closed():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), 1.0)
                await conn.fetchval("SELECT 1")  # notices a dead connection promptly
        finally:
            self.listening.clear()
            with contextlib.suppress(Exception):
                await conn.remove_listener(ROTATED_CHANNEL, self._on_notify)
            await self._pool.release(conn)
