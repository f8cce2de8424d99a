"""While PostgreSQL is down, a valid request gets a 5xx (the service's trouble), never a 4xx.

A 4xx tells a client its request was wrong and not to send it again; a client
told so during a database restart would drop a perfectly good order.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tests.e2e.marketplace import Marketplace, Unanswered
from tests.support.infra import Infra
from tests.support.keys import TokenKeys
from tests.support.processes import Processes
from tests.support.stack import OwnServer, running_stack

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
