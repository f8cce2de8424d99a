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

import pytest
import pytest_asyncio
import schemathesis
from schemathesis import GenerationMode

from services.catalog.http import CatalogHttp, build_api
from shared.tokens import TokenIssuer, generate_keypair
from tests.integration.catalog.conftest import Catalog
from tests.support import fuzzing as fuzzing_support

_ENDPOINTS = build_api(
    CatalogHttp(issuer=TokenIssuer(generate_keypair()[0], ttl=timedelta(days=1)))
).endpoints
ROLES = fuzzing_support.roles_of(_ENDPOINTS)
OPERATIONS = fuzzing_support.operations(_ENDPOINTS)


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
async def test_the_service_keeps_to_its_own_schema(
    fuzzing: Fuzzing, method: str, path: str, mode: GenerationMode
) -> None:
    await asyncio.to_thread(fuzz, fuzzing, method, path, mode)


async def test_every_route_is_documented(fuzzing: Fuzzing) -> None:
    assert {(method, path) for method, path, _ in OPERATIONS} == fuzzing_support.documented(
        fuzzing.schema
    )
