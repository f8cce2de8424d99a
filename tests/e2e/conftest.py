"""End-to-end fixtures: a fresh stack of the three services per test, and a client for it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

from deploy.local import infra as local
from tests.e2e.marketplace import Marketplace
from tests.support.infra import Infra, local_state_dir
from tests.support.keys import TokenKeys
from tests.support.processes import Processes
from tests.support.stack import OwnServer, Stack, running_stack


@pytest.fixture
async def stack(infra: Infra, token_keys: TokenKeys, processes: Processes) -> AsyncIterator[Stack]:
    async with running_stack(infra, token_keys, processes) as started:
        yield started


@pytest.fixture
async def mp(stack: Stack) -> AsyncIterator[Marketplace]:
    async with aiohttp.ClientSession() as session:
        yield Marketplace(session, stack)


@pytest.fixture
def own_postgres(infra: Infra) -> Iterator[tuple[Infra, OwnServer]]:
    """The shared Kafka with a PostgreSQL of the test's own."""
    with local_state_dir() as state_dir:
        port = local.free_port()

        def start() -> local.PostgresServer:
            return local.start_postgres(state_dir, port, durable=False, databases=["postgres"])

        try:
            server = start()
            yield (
                Infra(infra.kafka_bootstrap, server.dsn("postgres"), "local"),
                OwnServer(lambda: local.stop_postgres(state_dir, 30.0), start),
            )
        finally:
            local.stop_postgres(state_dir, 30.0)


@pytest.fixture
def own_kafka(infra: Infra) -> Iterator[tuple[Infra, OwnServer]]:
    """The shared PostgreSQL with a Kafka broker of the test's own."""
    with local_state_dir() as state_dir:
        ports = (local.free_port(), local.free_port())

        def start() -> local.KafkaServer:
            return local.start_kafka(state_dir, *ports, heap_mb=384)

        try:
            server = start()
            yield (
                Infra(server.bootstrap, infra.admin_dsn, "local"),
                OwnServer(lambda: local.stop_kafka(state_dir, 30.0), start),
            )
        finally:
            local.stop_kafka(state_dir, 30.0)
