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

import hypothesis
import pytest
import pytest_asyncio
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from services.orders.http import OrdersHttp, build_api
from tests.integration.catalog.conftest import Catalog
from tests.integration.orders.conftest import Orders

MAX_EXAMPLES = 40
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]

_ENDPOINTS = build_api(OrdersHttp(acceptance_window=timedelta(hours=48))).endpoints
ROLES = {(e.method, e.path): e.roles for e in _ENDPOINTS}
OPERATIONS = [
    *[(method, path, GenerationMode.POSITIVE) for method, path in sorted(ROLES)],
    *[(method, path, GenerationMode.NEGATIVE) for method, path in sorted(ROLES)],
]


@dataclass(frozen=True)
class Fuzzing:
    schema: Any
    base_url: str
    tokens: dict[str, str]
    existing: dict[str, str]

    def token_for(self, method: str, path: str) -> str:
        roles = ROLES[(method, path)]
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
    operation = fuzzing.schema[path][method]
    existing = {name: value for name, value in fuzzing.existing.items() if f"{{{name}}}" in path}
    strategy = st.one_of(
        operation.as_strategy(generation_mode=mode),
        operation.as_strategy(generation_mode=mode, path_parameters=existing).map(fuzzing.aim),
    )
    headers = {"Authorization": f"Bearer {fuzzing.token_for(method, path)}"}

    @hypothesis.settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @given(case=strategy)
    def run(case: schemathesis.Case[Any]) -> None:
        case.call_and_validate(
            base_url=fuzzing.base_url, headers=headers, checks=CHECKS, timeout=15
        )

    run()


@pytest.mark.parametrize(
    ("method", "path", "mode"), OPERATIONS, ids=[f"{m} {p} {g}" for m, p, g in OPERATIONS]
)
async def test_orders_keeps_to_its_own_schema(
    fuzzing: Fuzzing, method: str, path: str, mode: GenerationMode
) -> None:
    await asyncio.to_thread(fuzz, fuzzing, method, path, mode)
