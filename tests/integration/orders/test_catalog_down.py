"""Orders are still placed while the catalog service is stopped: orders never call it."""

from __future__ import annotations

import dataclasses
import uuid

import aiohttp
import pytest

from deploy.local.infra import free_port
from services.catalog.__main__ import MIGRATIONS, TOPICS, CatalogSettings, composer
from shared.settings import Secret
from tests.integration.catalog.conftest import Catalog
from tests.integration.orders.conftest import publish_joint_offering, start_orders
from tests.support.infra import Infra, temporary_database
from tests.support.keys import TokenKeys
from tests.support.running import running_service

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_orders_for_known_offerings_are_placed_with_the_catalog_stopped(
    infra: Infra, token_keys: TokenKeys
) -> None:
    async with (
        temporary_database(infra, "catalog_down") as catalog_dsn,
        temporary_database(infra, "orders_catalog_down") as orders_dsn,
        aiohttp.ClientSession() as session,
    ):
        settings = CatalogSettings(
            database_url=catalog_dsn,
            http_port=free_port(),
            operator_token=Secret(token_keys.operator_token),
            token_public_key_file=token_keys.public_key_file,
            token_signing_key_file=token_keys.private_key_file,
            kafka_bootstrap=infra.kafka_bootstrap,
            topic_prefix=f"t{uuid.uuid4().hex[:10]}.",
            shutdown_timeout_seconds=5,
        )
        async with running_service(
            "catalog", settings, migrations=MIGRATIONS, topics=TOPICS, compose=composer(settings)
        ) as catalog_url:
            catalog = Catalog(
                base_url=catalog_url,
                operator_token=token_keys.operator_token,
                database_url=catalog_dsn,
                kafka_bootstrap=infra.kafka_bootstrap,
                topic_prefix=settings.topic_prefix,
                session=session,
            )
            async with start_orders(catalog, token_keys, orders_dsn) as orders:
                offering = await publish_joint_offering(catalog, orders)
                customer = await catalog.sign_up_customer()
        # The catalog has stopped; a fresh orders process starts without it.
        with pytest.raises(aiohttp.ClientConnectionError):
            await catalog.call("GET", "/healthz")
        stopped = dataclasses.replace(catalog, base_url="http://127.0.0.1:9")
        async with start_orders(stopped, token_keys, orders_dsn) as orders:
            placed = await orders.place(customer, [{"offering_id": offering.id, "quantity": 1}])
            order = placed.expect(201)
            assert order["total"]["amount"] == 8_000
            isv = await orders.fulfillment_of(offering.isv, order["id"])
            assert isv["status"] == "requested"
