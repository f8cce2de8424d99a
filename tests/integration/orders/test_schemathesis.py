"""Schemathesis against the running orders service's ``/openapi.json``: no 5xx, no off-schema reply.

Each documented operation is fuzzed with data that fits its schema and with
data that does not, with a real token of a role the operation admits; half of
the cases aim at an order, a fulfilment and an offering that exist, so the
saga's handlers run behind the refusals too.  Schemathesis calls with
blocking ``requests``, so the fuzzing runs in a worker thread.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
import pytest_asyncio
import schemathesis
from schemathesis import GenerationMode

from services.orders.http import OrdersHttp, build_api
from tests.integration.catalog.conftest import Catalog
from tests.integration.orders.conftest import Orders
from tests.support import fuzzing as fuzzing_support

MAX_EXAMPLES = 40
_ENDPOINTS = build_api(OrdersHttp(acceptance_window=timedelta(hours=48))).endpoints
ROLES = fuzzing_support.roles_of(_ENDPOINTS)
OPERATIONS = fuzzing_support.operations(_ENDPOINTS)


@dataclass(frozen=True)
class Fuzzing:
    schema: Any
    base_url: str
    tokens: dict[str, str]
    existing: dict[str, str]

    def token_for(self, method: str, path: str) -> str:
        roles = ROLES.get((method, path), frozenset())
        return self.tokens["customer"] if "customer" in roles else self.tokens["partner"]

    def aim(self, case: schemathesis.Case[Any]) -> schemathesis.Case[Any]:
        """Point generated bodies at an offering and an order that exist."""
        body = case.body
        if isinstance(body, dict):
            lines = body.get("lines")
            for line in lines if isinstance(lines, list) else []:
                if isinstance(line, dict) and "offering_id" in line:
                    line["offering_id"] = self.existing["offering_id"]
            if isinstance(body.get("order_id"), str):
                body["order_id"] = self.existing["order_id"]
        return case


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def fuzzing(catalog: Catalog, orders: Orders) -> Fuzzing:
    partner = await catalog.onboard_partner("isv")
    customer = await catalog.sign_up_customer()
    usage = {"model": "usage", "unit_amount": 7, "unit": "GB-hour"}
    offering = await catalog.publish_new(
        partner,
        components=[
            catalog.component(partner, name="Licence"),
            catalog.component(partner, name="Storage", pricing=usage),
        ],
    )
    await orders.wait_until_known(offering["id"])
    order = (await orders.place(customer, [{"offering_id": offering["id"], "quantity": 1}])).expect(
        201
    )
    fulfillment = await orders.fulfillment_of(partner, order["id"])
    schema = await asyncio.to_thread(
        schemathesis.openapi.from_url, f"{orders.base_url}/openapi.json", timeout=10
    )
    return Fuzzing(
        schema=schema,
        base_url=orders.base_url,
        tokens={"customer": customer.token, "partner": partner.token},
        existing={
            "offering_id": offering["id"],
            "order_id": order["id"],
            "fulfillment_id": fulfillment["id"],
        },
    )


def fuzz(fuzzing: Fuzzing, method: str, path: str, mode: GenerationMode) -> None:
    fuzzing_support.fuzz(
        fuzzing.schema,
        fuzzing.base_url,
        (method, path, mode),
        token=fuzzing.token_for(method, path),
        existing=fuzzing.existing,
        aim=fuzzing.aim,
    )


@pytest.mark.parametrize(
    ("method", "path", "mode"), OPERATIONS, ids=fuzzing_support.operation_ids(OPERATIONS)
)
async def test_orders_keeps_to_its_own_schema(
    fuzzing: Fuzzing, method: str, path: str, mode: GenerationMode
) -> None:
    await asyncio.to_thread(fuzz, fuzzing, method, path, mode)
