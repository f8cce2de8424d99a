"""Schemathesis against the running catalog's own ``/openapi.json``: no 5xx, no off-schema reply.

Each documented operation is fuzzed with data that fits its schema and with
data that does not.  Requests carry a real token of a role the operation
admits, and half of the cases aim at resources that exist (an owned draft, an
agreement, a partner and a customer), so the handlers behind the 404s run too.

Schemathesis calls the service with blocking ``requests``; the service runs
on this test's event loop, so the fuzzing runs in a worker thread.
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

from services.catalog.http import CatalogHttp, build_api
from shared.tokens import TokenIssuer, generate_keypair
from tests.integration.catalog.conftest import Catalog

MAX_EXAMPLES = 50
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]

_ENDPOINTS = build_api(
    CatalogHttp(issuer=TokenIssuer(generate_keypair()[0], ttl=timedelta(days=1)))
).endpoints
ROLES = {(e.method, e.path): e.roles for e in _ENDPOINTS}
# Operations that take any input at all, so that there is something to get wrong.
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
    partner_id: str
    partner_token: str
    operator_token: str
    existing: dict[str, str]

    def token_for(self, method: str, path: str) -> str | None:
        roles = ROLES.get((method, path), frozenset())
        # The fuzzing partner never rotates its own token; the operator rotates a bystander's.
        if "partner" in roles and not path.endswith("/rotate-token"):
            return self.partner_token
        if "operator" in roles:
            return self.operator_token
        return None

    def aim(self, case: schemathesis.Case[Any]) -> schemathesis.Case[Any]:
        """Point a generated body at partners and a currency that exist: creating can succeed."""
        body = case.body
        if isinstance(body, dict):
            if isinstance(body.get("grantee_id"), str):
                body["grantee_id"] = self.existing["partner_id"]
            if isinstance(body.get("currency"), str):
                body["currency"] = "USD"
            components = body.get("components")
            for component in components if isinstance(components, list) else []:
                if isinstance(component, dict) and "partner_id" in component:
                    component["partner_id"] = self.partner_id
                    component.pop("agreement_id", None)
        return case


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def fuzzing(catalog: Catalog) -> Fuzzing:
    partner = await catalog.onboard_partner("managed_service")
    bystander = await catalog.onboard_partner("isv")
    customer = await catalog.sign_up_customer()
    agreement = await catalog.grant(partner, bystander)
    draft = await catalog.create_offering(partner)
    schema = await asyncio.to_thread(
        schemathesis.openapi.from_url, f"{catalog.base_url}/openapi.json", timeout=10
    )
    return Fuzzing(
        schema=schema,
        base_url=catalog.base_url,
        partner_id=partner.id,
        partner_token=partner.token,
        operator_token=catalog.operator_token,
        existing={
            "partner_id": bystander.id,
            "customer_id": customer.id,
            "agreement_id": agreement["id"],
            "offering_id": draft["id"],
            "version": "1",
        },
    )


def fuzz(fuzzing: Fuzzing, method: str, path: str, mode: GenerationMode) -> None:
    operation = fuzzing.schema[path][method]
    existing = {name: value for name, value in fuzzing.existing.items() if f"{{{name}}}" in path}
    strategy = st.one_of(
        operation.as_strategy(generation_mode=mode),
        operation.as_strategy(generation_mode=mode, path_parameters=existing).map(fuzzing.aim),
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
