"""End-to-end fixtures: a fresh stack of the three services per test, and a client for it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.e2e.marketplace import Marketplace
from tests.support.infra import Infra
from tests.support.keys import TokenKeys
from tests.support.processes import Processes
from tests.support.stack import Stack, running_stack


@pytest.fixture
async def stack(infra: Infra, token_keys: TokenKeys, processes: Processes) -> AsyncIterator[Stack]:
    async with running_stack(infra, token_keys, processes) as started:
        yield started


@pytest.fixture
async def mp(stack: Stack) -> AsyncIterator[Marketplace]:
    async with aiohttp.ClientSession() as session:
        yield Marketplace(session, stack)
