"""The catalog as an attacker meets it: the real service, real PostgreSQL and Kafka.

Each test in ``tests/security`` replays one hole of issue 6 as an HTTP client
would (aiohttp, or a raw socket where aiohttp would refuse to send it).  The
service runs with short read deadlines so the slow-client tests finish fast,
and with a generous rate limit, except ``limited_catalog`` which is the one
whose limit is under test.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from tests.integration.catalog.conftest import Catalog, running_catalog
from tests.support.infra import Infra
from tests.support.keys import TokenKeys

HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 1.0


class LogRecorder(logging.Handler):
    """Every record the service logs while a test runs, formatted as it would be written."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def at(self, level: int) -> list[logging.LogRecord]:
        # aiokafka's own complaints (a topic not there yet) are not the front door's.
        return [r for r in self.records if r.levelno >= level and not r.name.startswith("aiokafka")]

    def text(self) -> str:
        """All of it as one string, tracebacks and extra fields included."""
        formatter = logging.Formatter("%(levelname)s %(name)s %(message)s")
        parts = []
        for record in self.records:
            parts.append(formatter.format(record))
            parts.append(repr(record.__dict__))
        return "\n".join(parts)


@pytest.fixture
def service_log() -> Iterator[LogRecorder]:
    recorder = LogRecorder()
    root = logging.getLogger()
    root.addHandler(recorder)
    try:
        yield recorder
    finally:
        root.removeHandler(recorder)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def catalog(infra: Infra, token_keys: TokenKeys) -> AsyncIterator[Catalog]:
    async with running_catalog(
        infra,
        token_keys,
        public_rate_limit_per_minute=100_000,
        public_rate_limit_burst=10_000,
        principal_rate_limit_per_minute=600_000,
        principal_rate_limit_burst=100_000,
        http_header_timeout_seconds=HEADER_TIMEOUT,
        http_body_timeout_seconds=BODY_TIMEOUT,
    ) as running:
        yield running


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def limited_catalog(infra: Infra, token_keys: TokenKeys) -> AsyncIterator[Catalog]:
    async with running_catalog(
        infra, token_keys, public_rate_limit_per_minute=6, public_rate_limit_burst=5
    ) as running:
        yield running


def port_of(base_url: str) -> int:
    return int(base_url.rsplit(":", 1)[1])


async def raw_exchange(base_url: str, request: bytes, *, within: float = 10.0) -> bytes:
    """Send bytes as they are (aiohttp would refuse to send a malformed request); read all."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(base_url))
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), within)
    finally:
        writer.close()
