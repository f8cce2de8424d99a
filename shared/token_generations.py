"""Which token generation is current for each account, cached in the process.

Every authenticated request must know whether its token was superseded by a
rotation; asking PostgreSQL each time cost about 40 % of a small browse
request's time (see ``bench/catalog_browse.py``).  So the answer is cached,
and kept right three ways: a rotation in this process forgets the account at
once; a rotation seen by another replica reaches this one through
``NOTIFY token_rotated``; and an entry is trusted for ``ttl_seconds`` at most,
which bounds staleness even while the listener reconnects (on reconnect the
whole cache is dropped, since notifications may have been missed).

Where the generation comes from is the owner's choice (``lookup``): the
catalog reads its own tables, orders and settlement their projection of
``catalog.accounts`` (``shared.account_generations``).

A fill races a rotation: it may read the old generation, then the rotation
commits and its NOTIFY empties the cache, then the fill stores what it read,
and the superseded token stays valid until the TTL.  So every forget bumps an
epoch, and a fill stores its answer only if no forget happened while it read.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from shared.db import Connection, Pool
from shared.listening import Listener
from shared.tokens import Principal

ROTATION_CHANNEL = "token_rotated"

# (connection, role, subject) -> the current generation, or None if the account is unknown.
Lookup = Callable[[Connection, str, str], Awaitable[int | None]]


async def announce_rotation(conn: Connection, subject: str) -> None:
    """Tells every replica, when ``conn``'s transaction commits, to forget ``subject``."""
    await conn.execute("SELECT pg_notify($1, $2)", ROTATION_CHANNEL, subject)


class TokenGenerations:
    def __init__(
        self,
        pool: Pool,
        lookup: Lookup,
        *,
        accept_unknown: bool,
        ttl_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``accept_unknown``: whether a token of an account ``lookup`` does not know is valid."""
        self._pool = pool
        self._lookup = lookup
        self._accept_unknown = accept_unknown
        self._ttl = ttl_seconds
        self._clock = clock
        self._current: dict[tuple[str, str], tuple[int | None, float]] = {}
        self._epoch = 0
        self.listener = Listener(
            pool, ROTATION_CHANNEL, self.forget, on_connect=self.forget_everything
        )

    @property
    def listening(self) -> asyncio.Event:
        """Set while rotations seen elsewhere reach this cache."""
        return self.listener.listening

    async def superseded(self, principal: Principal) -> bool:
        generation = await self._generation(principal.role, principal.subject)
        if generation is None:
            return not self._accept_unknown
        return principal.generation < generation

    async def _generation(self, role: str, subject: str) -> int | None:
        key = (role, subject)
        cached = self._current.get(key)
        now = self._clock()
        if cached is not None and now - cached[1] < self._ttl:
            return cached[0]
        epoch = self._epoch
        async with self._pool.acquire() as conn:
            generation = await self._lookup(conn, role, subject)
        if epoch == self._epoch:
            self._current[key] = (generation, now)
        return generation

    def forget(self, subject: str) -> None:
        self._epoch += 1
        for role in ("partner", "customer"):
            self._current.pop((role, subject), None)

    def forget_everything(self) -> None:
        self._epoch += 1
        self._current.clear()

    async def run(self) -> None:
        await self.listener.run()

    def stop(self) -> None:
        self.listener.stop()
