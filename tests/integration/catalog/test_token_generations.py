"""The cached token generations stay right across replicas and over time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from services.catalog import handlers, store
from shared import db
from shared.migrations import PLUMBING_MIGRATIONS, migrate
from shared.token_generations import TokenGenerations
from shared.tokens import Principal, TokenIssuer
from tests.support.keys import TokenKeys
from tests.support.waiting import wait_for

MIGRATIONS = Path(__file__).parents[3] / "services" / "catalog" / "migrations"


@pytest.fixture
async def pool(fresh_database: str) -> AsyncIterator[db.Pool]:
    conn = await asyncpg.connect(fresh_database)
    try:
        await migrate(conn, [("plumbing", PLUMBING_MIGRATIONS), ("catalog", MIGRATIONS)])
    finally:
        await conn.close()
    created = await db.create_pool(fresh_database, min_size=1, max_size=6)
    yield created
    await created.close()


def _catalog_cache(
    pool: db.Pool, *, ttl_seconds: float, clock: Callable[[], float] = time.monotonic
) -> TokenGenerations:
    return TokenGenerations(
        pool, store.token_generation, accept_unknown=False, ttl_seconds=ttl_seconds, clock=clock
    )


async def _partner(pool: db.Pool, issuer: TokenIssuer) -> Principal:
    async with db.unit_of_work(pool) as conn:
        partner, _ = await handlers.register_partner(
            conn, issuer, name="Replica test", kind="isv", now=datetime.now(UTC)
        )
    return Principal(partner.id, "partner", partner.token_generation)


async def test_a_rotation_in_another_replica_reaches_this_ones_cache(
    pool: db.Pool, token_keys: TokenKeys
) -> None:
    issuer = TokenIssuer(token_keys.private_pem, ttl=timedelta(hours=1))
    principal = await _partner(pool, issuer)
    replica = _catalog_cache(pool, ttl_seconds=3600)
    listening = asyncio.create_task(replica.run())
    try:
        await wait_for(replica.listening.is_set, message="the listener never started")
        assert not await replica.superseded(principal)
        # Another replica rotates: only its NOTIFY can tell this one, the TTL is an hour.
        async with db.unit_of_work(pool) as conn:
            await handlers.rotate_partner_token(
                conn, issuer, principal, principal.subject, datetime.now(UTC)
            )

        async def refused() -> bool:
            return await replica.superseded(principal)

        await wait_for(refused, timeout=10, message="the old token stayed accepted")
        assert not await replica.superseded(
            Principal(principal.subject, "partner", principal.generation + 1)
        )
    finally:
        replica.stop()
        await listening


async def test_an_entry_is_trusted_only_for_its_time_to_live(
    pool: db.Pool, token_keys: TokenKeys
) -> None:
    issuer = TokenIssuer(token_keys.private_pem, ttl=timedelta(hours=1))
    principal = await _partner(pool, issuer)
    now = [0.0]
    cache = _catalog_cache(pool, ttl_seconds=30, clock=lambda: now[0])
    assert not await cache.superseded(principal)
    # Rotated behind the cache's back, with no listener running.
    await pool.execute(
        "UPDATE partners SET token_generation = token_generation + 1 WHERE id = $1",
        principal.subject,
    )
    now[0] = 29.0
    assert not await cache.superseded(principal), "within its TTL the entry is trusted"
    now[0] = 31.0
    assert await cache.superseded(principal), "after its TTL the entry is read again"


async def test_a_rotation_that_lands_while_the_cache_fills_is_not_overwritten(
    pool: db.Pool, token_keys: TokenKeys
) -> None:
    issuer = TokenIssuer(token_keys.private_pem, ttl=timedelta(hours=1))
    principal = await _partner(pool, issuer)
    rotations = 0

    async def racing_read(conn: db.Connection, role: str, subject: str) -> int | None:
        nonlocal rotations
        read = await store.token_generation(conn, role, subject)
        if rotations == 0:
            # The rotation commits after the read and is announced before the fill stores.
            rotations += 1
            async with db.unit_of_work(pool) as rotating:
                await handlers.rotate_partner_token(
                    rotating, issuer, principal, subject, datetime.now(UTC)
                )
            cache.forget(subject)
        return read

    cache = TokenGenerations(pool, racing_read, accept_unknown=False, ttl_seconds=3600)
    assert not await cache.superseded(principal), "the raced fill answers what it read"
    assert await cache.superseded(principal), "but must not be kept past the rotation"
