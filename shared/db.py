"""PostgreSQL pools and the unit of work."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
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


async def create_pool(dsn: str, *, min_size: int = 2, max_size: int = 10) -> Pool:
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        # A connection that died with the server is replaced, not handed out.
        max_inactive_connection_lifetime=60,
        command_timeout=30,
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
