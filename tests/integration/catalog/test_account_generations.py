"""Orders refuses tokens a rotation superseded, from its own projection of catalog.accounts.

The real catalog publishes to Kafka; the real orders service (its composition
as it ships) projects the topic into its own database.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest_asyncio

from shared import account_generations, db
from shared.contracts.catalog_accounts import (
    CustomerRegistered,
    CustomerState,
    CustomerTokenRotated,
)
from shared.contracts.envelope import new_envelope
from shared.settings import Secret
from shared.tokens import Principal, TokenVerifier
from tests.integration.catalog.conftest import Catalog
from tests.support.infra import Infra, temporary_database
from tests.support.keys import TokenKeys
from tests.support.running import running_orders
from tests.support.waiting import wait_for


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def orders_pool(
    infra: Infra, token_keys: TokenKeys, catalog: Catalog
) -> AsyncIterator[db.Pool]:
    """The orders service's database while orders runs beside the catalog."""
    async with (
        temporary_database(infra, "orders") as dsn,
        running_orders(infra, token_keys, dsn, topic_prefix=catalog.topic_prefix),
    ):
        pool = await db.create_pool(dsn, min_size=1, max_size=4)
        try:
            yield pool
        finally:
            await pool.close()


def _principal(token: str, keys: TokenKeys) -> Principal:
    return TokenVerifier(keys.public_pem, Secret(keys.operator_token)).verify(token)


async def _known(pool: db.Pool, subject: str, generation: int) -> bool:
    async with pool.acquire() as conn:
        known = await account_generations.known_generation(conn, "customer", subject)
    return known == generation


async def test_orders_refuses_a_token_once_the_catalog_rotated_it(
    catalog: Catalog, orders_pool: db.Pool, token_keys: TokenKeys
) -> None:
    customer = await catalog.sign_up_customer()
    first = _principal(customer.token, token_keys)
    revocations = account_generations.revocations(orders_pool, ttl_seconds=0)
    assert not await revocations.superseded(first), "a token the projection has not seen is valid"
    await wait_for(
        lambda: _known(orders_pool, customer.id, 1), message="orders never saw the sign-up"
    )
    assert not await revocations.superseded(first)

    rotated = await catalog.call(
        "POST", f"/v1/customers/{customer.id}/rotate-token", token=customer.token
    )
    second = _principal(rotated.expect(200)["token"], token_keys)

    async def refused() -> bool:
        return await revocations.superseded(first)

    await wait_for(refused, timeout=20, message="orders kept accepting the superseded token")
    assert not await revocations.superseded(second)


async def test_a_replica_cache_forgets_when_the_projection_moves(
    catalog: Catalog, orders_pool: db.Pool, token_keys: TokenKeys
) -> None:
    customer = await catalog.sign_up_customer()
    first = _principal(customer.token, token_keys)
    await wait_for(
        lambda: _known(orders_pool, customer.id, 1), message="orders never saw the sign-up"
    )
    # An hour-long TTL: only the projection's NOTIFY can make this replica re-read.
    replica = account_generations.revocations(orders_pool, ttl_seconds=3600)
    listening = asyncio.create_task(replica.run())
    try:
        await wait_for(replica.listening.is_set, message="the listener never started")
        assert not await replica.superseded(first)
        await catalog.call(
            "POST", f"/v1/customers/{customer.id}/rotate-token", token=customer.token
        )

        async def refused() -> bool:
            return await replica.superseded(first)

        await wait_for(refused, timeout=20, message="the replica kept its stale generation")
    finally:
        replica.stop()
        await listening


async def test_an_older_event_never_lowers_a_known_generation(orders_pool: db.Pool) -> None:
    subject = f"cus_{uuid.uuid4().hex}"

    def state(generation: int) -> CustomerState:
        return CustomerState(
            customer_id=subject,
            name="Late event",
            token_generation=generation,
            registered_at=datetime.now(UTC),
        )

    # Compaction and redelivery can bring the sign-up after a later rotation.
    for event in (CustomerTokenRotated(customer=state(3)), CustomerRegistered(customer=state(1))):
        async with db.unit_of_work(orders_pool) as conn:
            envelope = new_envelope(event, key=subject, producer="catalog")
            await account_generations.apply(conn, envelope, event)
    assert await _known(orders_pool, subject, 3)
    revocations = account_generations.revocations(orders_pool, ttl_seconds=0)
    assert await revocations.superseded(Principal(subject, "customer", 2))
    assert not await revocations.superseded(Principal(subject, "customer", 3))


async def test_the_catalog_has_no_projection_of_its_own(catalog: Catalog) -> None:
    async with catalog.database() as conn:
        found = await conn.fetchval("SELECT to_regclass('account_generations') IS NOT NULL")
    assert found is False, "the catalog's tables are the truth; it must not project itself"
