"""While PostgreSQL is down, a valid request gets a 5xx (the service's trouble), never a 4xx.

A 4xx tells a client its request was wrong and not to send it again; a client
told so during a database restart would drop a perfectly good order.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tests.e2e.marketplace import Marketplace, Unanswered, onboard
from tests.support.infra import Infra
from tests.support.keys import TokenKeys
from tests.support.processes import Processes
from tests.support.stack import OwnServer, running_stack
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(240)

# One read per service that cannot be answered without its database.
READS = [
    ("catalog", "/v1/offerings"),
    ("orders", "/v1/orders"),
    ("settlement", "/v1/ledger/trial-balance"),
]


async def test_requests_while_postgresql_is_down_are_answered_as_the_services_trouble(
    own_postgres: tuple[Infra, OwnServer], token_keys: TokenKeys, processes: Processes
) -> None:
    infra, postgres = own_postgres
    async with (
        running_stack(infra, token_keys, processes) as stack,
        aiohttp.ClientSession() as session,
    ):
        mp = Marketplace(session, stack)
        for service, path in READS:
            reply = await mp.call("GET", service, path, token=stack.operator_token)
            reply.expect(200)
        await asyncio.to_thread(postgres.stop)
        try:
            answers: dict[str, str] = {}
            for service, path in READS:
                try:
                    reply = await mp.call("GET", service, path, token=stack.operator_token)
                except Unanswered as unanswered:  # a 5xx or no answer: not the client's fault
                    answers[service] = f"5xx/none ({unanswered})"
                else:
                    answers[service] = f"{reply.status} {reply.body.get('detail')}"
        finally:
            await asyncio.to_thread(postgres.start)
        blamed_the_client = {s: a for s, a in answers.items() if not a.startswith("5xx")}
        assert not blamed_the_client, blamed_the_client


async def test_every_relay_publishes_again_after_postgresql_restarts(
    own_postgres: tuple[Infra, OwnServer], token_keys: TokenKeys, processes: Processes
) -> None:
    infra, postgres = own_postgres
    async with (
        running_stack(infra, token_keys, processes) as stack,
        aiohttp.ClientSession() as session,
    ):
        mp = Marketplace(session, stack)
        await asyncio.to_thread(postgres.stop)
        await asyncio.to_thread(postgres.start)
        await asyncio.gather(*(service.wait_ready() for service in stack.services.values()))
        # A new partner is an event in the catalog's outbox, and one in each other
        # service's once they project it (catalog.accounts feeds their token checks).
        await onboard(mp, "After the restart", "isv")
        for name in stack.services:

            async def sent(name: str = name) -> bool:
                return await stack.unsent_outbox_rows(name) == 0

            await wait_for(
                sent, timeout=30, message=f"{name}'s relay never published again:\n{stack.logs()}"
            )
