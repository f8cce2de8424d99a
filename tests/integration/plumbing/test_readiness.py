"""A running service answers 503 on /readyz while its PostgreSQL is down, 200 once back."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from deploy.local import infra as local
from services.orders.__main__ import EXTRA_MIGRATIONS, TOPICS, OrdersSettings, compose
from shared.service import run_service
from shared.settings import Secret
from tests.support.infra import Infra, local_state_dir
from tests.support.keys import TokenKeys
from tests.support.waiting import wait_for

ORDERS_MIGRATIONS = Path(__file__).resolve().parents[3] / "services" / "orders" / "migrations"


@pytest.fixture
def own_logging() -> Iterator[None]:
    """run_service configures the root logger for a process; give the test run its own back."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    aiokafka_level = logging.getLogger("aiokafka").level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("aiokafka").setLevel(aiokafka_level)


async def status_of(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as response:
        return response.status


@pytest.fixture
def state_dir() -> Iterator[Path]:
    with local_state_dir() as folder:
        try:
            yield folder
        finally:
            local.stop_postgres(folder, 30.0)  # whatever happened in the test


@pytest.mark.usefixtures("own_logging")
async def test_readyz_follows_the_database_without_a_restart(
    infra: Infra, token_keys: TokenKeys, state_dir: Path
) -> None:
    # A PostgreSQL of this test's own, since the test stops it.
    pg_port = local.free_port()
    postgres = await asyncio.to_thread(
        local.start_postgres, state_dir, pg_port, durable=False, databases=["orders"]
    )
    http_port = local.free_port()
    settings = OrdersSettings(
        database_url=postgres.dsn("orders"),
        http_port=http_port,
        operator_token=Secret(token_keys.operator_token),
        token_public_key_file=token_keys.public_key_file,
        kafka_bootstrap=infra.kafka_bootstrap,
        shutdown_timeout_seconds=5,
        startup_timeout_seconds=20,
    )
    stop = asyncio.Event()
    service = asyncio.create_task(
        run_service(
            name="orders",
            settings=settings,
            migrations=ORDERS_MIGRATIONS,
            topics=TOPICS,
            compose=compose,
            extra_migrations=EXTRA_MIGRATIONS,
            stop=stop,
        )
    )
    base = f"http://127.0.0.1:{http_port}"
    try:
        async with aiohttp.ClientSession() as session:

            async def readyz_is(expected: int) -> bool:
                assert not service.done(), "the service stopped"
                return await status_of(session, f"{base}/readyz") == expected

            await wait_for(
                lambda: readyz_is(200),
                timeout=30,
                ignore=(aiohttp.ClientError, asyncio.TimeoutError),
                message="the service never became ready",
            )

            await asyncio.to_thread(postgres.stop)
            await wait_for(
                lambda: readyz_is(503),
                timeout=15,
                message="/readyz did not answer 503 with PostgreSQL stopped",
            )
            async with session.get(f"{base}/readyz") as response:
                body = await response.json()
            assert body["status"] == "unavailable"
            assert "database" in body["failing"]
            assert "kafka" not in body["failing"]
            assert await status_of(session, f"{base}/healthz") == 200  # alive all along

            postgres = await asyncio.to_thread(
                local.start_postgres, state_dir, pg_port, durable=False, databases=["orders"]
            )
            await wait_for(
                lambda: readyz_is(200),
                timeout=15,
                message="/readyz did not answer 200 once PostgreSQL was back",
            )
        assert not service.done()
    finally:
        stop.set()
        await asyncio.wait_for(service, 30)
        await asyncio.to_thread(postgres.stop)
