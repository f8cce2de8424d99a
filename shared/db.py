"""PostgreSQL pools and the unit of work."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

# Handlers get either a pooled connection or a plain one; both speak the same API.
if TYPE_CHECKING:
    Connection: TypeAlias = asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]
else:
    Connection = asyncpg.Connection | PoolConnectionProxy
Pool = asyncpg.Pool

# Errors after which the same work may well succeed if simply tried again.
TRANSIENT_DB_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.InterfaceError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
)


async def _keep_session(_conn: asyncpg.Connection[asyncpg.Record]) -> None:
    """Return a connection to the pool without asyncpg's reset query.

    asyncpg's default sends ``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *;
    RESET ALL`` on every release: one more round trip per request, about a
    fifth of an order placement's.  Our code leaves no session state on a
    pooled connection: whoever takes a session advisory lock (the relay,
    migrations) or LISTENs (``shared.listening``) undoes it before releasing
    (``release_undone``), and we use no SET or cursors outside a transaction.
    An open transaction is still rolled back by asyncpg before this runs.
    """


async def release_undone(
    pool: Pool,
    conn: PoolConnectionProxy[asyncpg.Record],
    undo: Callable[[], Awaitable[object]],
) -> None:
    """Undo a connection's session state (a lock, a LISTEN), then give it back to the pool.

    If undoing fails, the connection is closed instead: ending the session is
    what surely ends its lock or LISTEN, and the pool resets nothing itself.
    """
    try:
        await undo()
    except Exception:
        conn.terminate()
    with contextlib.suppress(Exception):  # the connection may be gone with the server
        await pool.release(conn)


async def create_pool(dsn: str, *, min_size: int = 2, max_size: int = 10) -> Pool:
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        # A connection that died with the server is replaced, not handed out.
        max_inactive_connection_lifetime=60,
        command_timeout=30,
        reset=_keep_session,
        # asyncpg hands out timestamps in UTC whatever the session's zone, but
        # timestamps PostgreSQL renders as JSON (the orders store reads orders
        # that way) carry the session's: UTC here too, so both agree.
        server_settings={"timezone": "UTC"},
    )
    assert pool is not None
    return pool


@asynccontextmanager
async def unit_of_work(pool: Pool) -> AsyncIterator[Connection]:
    """One transaction: everything inside commits together or not at all."""
    async with pool.acquire() as conn, conn.transaction():
        yield conn


async def database_reachable(pool: Pool, within: float = 2.0) -> None:
    async with asyncio.timeout(within):
        async with pool.acquire() as conn:
            await conn.fetchval("SELECT 1")
