"""Schemathesis against the running settlement's own ``/openapi.json``: no 5xx, no off-schema reply.

Each documented operation is fuzzed with data that fits its schema and with
data that does not, with a token of a role the operation admits; half of the
cases aim at a partner with money on the ledger and a reconciliation that
exists, so the handlers behind the 404s run too.  Schemathesis calls with
blocking ``requests``, so the fuzzing runs in a worker thread.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
import schemathesis
from schemathesis import GenerationMode

from services.settlement.http import SettlementHttp, build_api
from shared.ids import new_id
from tests.integration.settlement.conftest import Settlement
from tests.integration.settlement.order_events import OrderScript, Part
from tests.support import fuzzing as fuzzing_support

MAX_EXAMPLES = 40
_ENDPOINTS = build_api(SettlementHttp()).endpoints
ROLES = fuzzing_support.roles_of(_ENDPOINTS)
OPERATIONS = fuzzing_support.operations(_ENDPOINTS)


@dataclass(frozen=True)
class Fuzzing:
    schema: Any
    base_url: str
    partner_token: str
    operator_token: str
    existing: dict[str, str]

    def token_for(self, method: str, path: str) -> str | None:
        roles = ROLES.get((method, path), frozenset())
        if "operator" in roles:
            return self.operator_token
        if "partner" in roles:
            return self.partner_token
        return None


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def fuzzing(settlement: Settlement) -> Fuzzing:
    partner = new_id("ptr")
    order = OrderScript(customer_id=new_id("cus"), owner_id=partner)
    charge = order.charge(Part(partner, "isv", 10_000), 10_000, 0)
    await settlement.settle([order.placed(10_000), order.confirmed([charge]), order.fulfilled()])
    reconciliation = await settlement.operator(
        "POST",
        "/v1/reconciliations",
        body={
            "lines": [{"reference": "MP-FUZZ", "amount": 1, "booked_at": "2026-01-01T00:00:00Z"}]
        },
    )
    schema = await asyncio.to_thread(
        schemathesis.openapi.from_url, f"{settlement.base_url}/openapi.json", timeout=10
    )
    return Fuzzing(
        schema=schema,
        base_url=settlement.base_url,
        partner_token=settlement.partner_token(partner),
        operator_token=settlement.operator_token,
        existing={
            "partner_id": partner,
            "reconciliation_id": reconciliation.expect(201)["id"],
        },
    )


def fuzz(fuzzing: Fuzzing, method: str, path: str, mode: GenerationMode) -> None:
    fuzzing_support.fuzz(
        fuzzing.schema,
        fuzzing.base_url,
        (method, path, mode),
        token=fuzzing.token_for(method, path),
        existing=fuzzing.existing,
        aim=lambda case: case,
    )


@pytest.mark.parametrize(
    ("method", "path", "mode"), OPERATIONS, ids=fuzzing_support.operation_ids(OPERATIONS)
)
async def test_the_service_keeps_to_its_own_schema(
    fuzzing: Fuzzing, method: str, path: str, mode: GenerationMode
) -> None:
    await asyncio.to_thread(fuzz, fuzzing, method, path, mode)


async def test_every_route_is_documented(fuzzing: Fuzzing) -> None:
    assert {(method, path) for method, path, _ in OPERATIONS} == fuzzing_support.documented(
        fuzzing.schema
    )
