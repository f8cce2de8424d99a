"""The three real services in-process on one topic namespace, as the marketplace runs them.

Catalog publishes on its topics, orders reads them and publishes orders
events, settlement books those: every event crosses the shared Kafka, so a
door tried here is the door a deployment has.  One stack per test module.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest_asyncio

from tests.integration.catalog.conftest import (  # noqa: F401 - fixtures used by this package
    Catalog,
    catalog,
)
from tests.integration.orders.conftest import Orders, start_orders
from tests.integration.settlement.conftest import Settlement, running_settlement
from tests.support.infra import Infra, temporary_database
from tests.support.keys import TokenKeys


@dataclass(frozen=True)
class Marketplace:
    catalog: Catalog
    orders: Orders
    settlement: Settlement

    @property
    def topic_prefix(self) -> str:
        return self.catalog.topic_prefix


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def marketplace(
    infra: Infra,
    token_keys: TokenKeys,
    catalog: Catalog,  # noqa: F811
) -> AsyncIterator[Marketplace]:
    async with (
        temporary_database(infra, "orders") as orders_dsn,
        start_orders(catalog, token_keys, orders_dsn) as orders,
        temporary_database(infra, "settlement") as settlement_dsn,
        running_settlement(
            infra,
            token_keys,
            database_url=settlement_dsn,
            topic_prefix=catalog.topic_prefix,
            consumer_group=f"settlement-{uuid.uuid4().hex[:10]}",
        ) as settlement,
    ):
        yield Marketplace(catalog, orders, settlement)
