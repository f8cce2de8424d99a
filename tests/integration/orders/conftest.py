"""The real orders service beside the real catalog, in-process, on real PostgreSQL and Kafka.

The catalog produces its events on its own topics (under a per-module topic
prefix); orders runs with the same prefix, so its local copy of the catalog
is built from exactly what the catalog published.  ``orders`` is shared by a
module's tests; ``start_orders`` starts extra instances (a restart, a second
replica, a short acceptance deadline) on a database of the caller's choice.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from deploy.local.infra import free_port
from services.orders.__main__ import (
    EXTRA_MIGRATIONS,
    MIGRATIONS,
    TOPICS,
    OrdersSettings,
    composer,
)
from shared.clock import Clock, utc_now
from shared.migrations import PLUMBING_MIGRATIONS, migrate
from shared.settings import Secret
from tests.integration.catalog.conftest import (  # noqa: F401 - fixtures used by this package
    Account,
    Catalog,
    Reply,
    catalog,
)
from tests.support.infra import Infra, temporary_database
from tests.support.keys import TokenKeys
from tests.support.running import running_service
from tests.support.waiting import wait_for


@dataclass
class Orders:
    base_url: str
    database_url: str
    client: Catalog  # the catalog's test client, pointed at the orders service

    async def call(self, method: str, path: str, **kwargs: Any) -> Reply:
        return await self.client.call(method, path, **kwargs)

    async def place(
        self, customer: Account, lines: Sequence[Mapping[str, Any]], **kw: Any
    ) -> Reply:
        return await self.call(
            "POST", "/v1/orders", token=customer.token, body={"lines": lines}, **kw
        )

    async def answer(self, partner: Account, fulfillment_id: str, verb: str) -> Reply:
        body = {"reason": "no capacity"} if verb == "reject" else None
        kwargs: dict[str, Any] = {"body": body} if body is not None else {}
        return await self.call(
            "POST", f"/v1/fulfillments/{fulfillment_id}/{verb}", token=partner.token, **kwargs
        )

    async def fulfillment_of(self, partner: Account, order_id: str) -> dict[str, Any]:
        reply = await self.call(
            "GET", "/v1/fulfillments", token=partner.token, params={"limit": 500}
        )
        found = [f for f in reply.expect(200)["items"] if f["order_id"] == order_id]
        assert len(found) == 1, found
        item: dict[str, Any] = found[0]
        return item

    async def wait_until_known(self, offering_id: str, version: int = 1) -> None:
        """The local copy of the catalog holds ``version`` of the offering."""

        async def known() -> bool:
            conn = await asyncpg.connect(self.database_url)
            try:
                found = await conn.fetchval(
                    "SELECT true FROM offering_versions WHERE offering_id = $1 AND version >= $2",
                    offering_id,
                    version,
                )
            finally:
                await conn.close()
            return bool(found)

        await wait_for(known, timeout=20, message=f"orders never learnt of {offering_id}")

    @asynccontextmanager
    async def database(self) -> AsyncIterator[asyncpg.Connection[asyncpg.Record]]:
        conn: asyncpg.Connection[asyncpg.Record] = await asyncpg.connect(self.database_url)
        try:
            yield conn
        finally:
            await conn.close()


@asynccontextmanager
async def start_orders(
    catalog: Catalog,  # noqa: F811
    token_keys: TokenKeys,
    database_url: str,
    *,
    acceptance_deadline_seconds: float = 48 * 3600,
    timer_poll_seconds: float = 0.2,
    clock: Clock = utc_now,
) -> AsyncIterator[Orders]:
    settings = OrdersSettings(
        database_url=database_url,
        http_port=free_port(),
        operator_token=Secret(token_keys.operator_token),
        token_public_key_file=token_keys.public_key_file,
        kafka_bootstrap=catalog.kafka_bootstrap,
        topic_prefix=catalog.topic_prefix,
        shutdown_timeout_seconds=5,
        acceptance_deadline_seconds=acceptance_deadline_seconds,
        timer_poll_seconds=timer_poll_seconds,
        # Tests drive one token hard (concurrency, fuzzing); tests/security checks the limit.
        principal_rate_limit_per_minute=600_000,
        principal_rate_limit_burst=100_000,
    )
    async with running_service(
        "orders",
        settings,
        migrations=MIGRATIONS,
        topics=TOPICS,
        compose=composer(clock),
        extra_migrations=EXTRA_MIGRATIONS,
    ) as base_url:
        yield Orders(base_url, database_url, dataclasses.replace(catalog, base_url=base_url))


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def orders(infra: Infra, token_keys: TokenKeys, catalog: Catalog) -> AsyncIterator[Orders]:  # noqa: F811
    async with (
        temporary_database(infra, "orders") as dsn,
        start_orders(catalog, token_keys, dsn) as running,
    ):
        yield running


@pytest.fixture
async def migrated_orders_db(fresh_database: str) -> str:
    """A fresh database with the orders tables, for tests of handlers and queries alone."""
    conn: asyncpg.Connection[asyncpg.Record] = await asyncpg.connect(fresh_database)
    try:
        await migrate(
            conn, [("plumbing", PLUMBING_MIGRATIONS), *EXTRA_MIGRATIONS, ("orders", MIGRATIONS)]
        )
    finally:
        await conn.close()
    return fresh_database


@dataclass(frozen=True)
class JointOffering:
    """An offering owned by a managed-service provider with an ISV's and an integrator's part."""

    id: str
    isv: Account
    msp: Account
    integrator: Account

    @property
    def partners(self) -> tuple[Account, Account, Account]:
        return (self.isv, self.msp, self.integrator)


async def publish_joint_offering(
    catalog: Catalog,  # noqa: F811
    orders: Orders,
    *,
    currency: str = "USD",
    usage: bool = False,
) -> JointOffering:
    isv = await catalog.onboard_partner("isv")
    msp = await catalog.onboard_partner("managed_service")
    integrator = await catalog.onboard_partner("integrator")
    isv_terms = await catalog.grant(isv, msp, share_bps=7_000)
    integrator_terms = await catalog.grant(integrator, msp, share_bps=9_000)
    components = [
        catalog.component(
            isv,
            agreement=isv_terms,
            name="Database",
            pricing={"model": "subscription", "unit_amount": 5_000, "interval": "month"},
        ),
        catalog.component(
            msp, name="Operations", pricing={"model": "one_time", "unit_amount": 2_000}
        ),
        catalog.component(
            integrator,
            agreement=integrator_terms,
            name="Set-up",
            pricing={"model": "one_time", "unit_amount": 1_000},
        ),
    ]
    if usage:
        components.append(
            catalog.component(
                isv,
                agreement=isv_terms,
                name="Storage",
                pricing={"model": "usage", "unit_amount": 3, "unit": "GB-hour"},
            )
        )
    draft = await catalog.create_offering(msp, currency=currency, components=components)
    await catalog.publish(msp, draft["id"])
    await orders.wait_until_known(draft["id"])
    return JointOffering(draft["id"], isv, msp, integrator)
