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

from services.settlement.http import SettlementHttp, build_api
from shared.ids import new_id
from tests.integration.settlement.conftest import Settlement
from tests.integration.settlement.order_events import OrderScript, Part

MAX_EXAMPLES = 40
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]

_ENDPOINTS = build_api(SettlementHttp()).endpoints
ROLES = {(e.method, e.path): e.roles for e in _ENDPOINTS}
TAKES_INPUT = sorted(
    (e.method, e.path)
    for e in _ENDPOINTS
    if e.body is not None or e.query is not None or "{" in e.path or e.method == "POST"
)
OPERATIONS = [
    *[(method, path, GenerationMode.POSITIVE) for method, path in sorted(ROLES)],
    *[(method, path, GenerationMode.NEGATIVE) for method, path in TAKES_INPUT],
    ("GET", "/healthz", GenerationMode.POSITIVE),
    ("GET", "/readyz", GenerationMode.POSITIVE),
    ("GET", "/metrics", GenerationMode.POSITIVE),
    ("GET", "/openapi.json", GenerationMode.POSITIVE),
]


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
    operation = fuzzing.schema[path][method]
    existing = {name: value for name, value in fuzzing.existing.items() if f"{{{name}}}" in path}
    strategy = st.one_of(
        operation.as_strategy(generation_mode=mode),
        operation.as_strategy(generation_mode=mode, path_parameters=existing),
    )
    token = fuzzing.token_for(method, path)
    headers = {"Authorization": f"Bearer {token}"} if token else {}

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
async def test_the_service_keeps_to_its_own_schema(
    fuzzing: Fuzzing, method: str, path: str, mode: GenerationMode
) -> None:
    await asyncio.to_thread(fuzz, fuzzing, method, path, mode)


async def test_every_route_is_documented(fuzzing: Fuzzing) -> None:
    documented = {
        (method.upper(), path)
        for path, operations in fuzzing.schema.raw_schema["paths"].items()
        for method in operations
    }
    assert {(method, path) for method, path, _ in OPERATIONS} == documented
