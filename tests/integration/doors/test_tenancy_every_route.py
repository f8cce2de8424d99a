"""Every route of every service, tried by another tenant's partner and customer.

Tenant A owns real resources (partners, an agreement, a draft and a published
offering, a customer, an order with its fulfilment, a ledger balance); tenant B
holds a partner token and a customer token of its own.  ``ROUTES`` says, for
every (service, method, path) in the three live ``/openapi.json`` documents,
how to aim the request at A's resources and what B may get back.  A route in
a document without an entry fails the suite: a new route needs a tenancy case.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest

from shared.ids import new_id
from tests.integration.catalog.conftest import Account, Catalog, Reply
from tests.integration.doors.conftest import Marketplace
from tests.support.waiting import wait_for

pytestmark = pytest.mark.asyncio(loop_scope="session")

_NO_BODY = object()


@dataclass(frozen=True)
class TenantA:
    isv: Account
    msp: Account
    customer: Account
    agreement_id: str
    draft_id: str
    draft_name: str
    published_id: str
    order_id: str
    fulfillment_id: str

    def private(self) -> list[str]:
        """What no one outside tenant A may ever read back."""
        return [
            self.agreement_id,
            self.draft_id,
            self.draft_name,
            self.order_id,
            self.fulfillment_id,
            self.customer.id,
            self.customer.name,
            self.isv.token,
            self.msp.token,
            self.customer.token,
        ]


Request = tuple[str, Any]  # the concrete path, and the JSON body (or _NO_BODY)
Fill = Callable[[TenantA], Request]

REFUSED = frozenset({404})
FORBIDDEN = frozenset({403})


@dataclass(frozen=True)
class Case:
    """How B's partner and customer are answered; ``None`` for a public route."""

    fill: Fill | None
    partner: frozenset[int] = FORBIDDEN
    customer: frozenset[int] = FORBIDDEN
    # Answers with the caller's own things only (a list, a create in its own name).
    scoped: bool = False
    reason: str = ""


def public(reason: str) -> Case:
    return Case(fill=None, reason=reason)


def at(path: str, body: Any = _NO_BODY) -> Fill:
    """A path template filled from tenant A's resources (``{a.order_id}`` and so on)."""
    return lambda a: (path.format(a=a), body)


def with_body(path: str, body: Callable[[TenantA], Any]) -> Fill:
    return lambda a: (path.format(a=a), body(a))


def _usage(a: TenantA) -> dict[str, Any]:
    return {
        "usage_id": f"use-{uuid.uuid4().hex}",
        "order_id": a.order_id,
        "quantity": 1,
        "occurred_at": datetime.now(UTC).isoformat(),
    }


def _offering_on_a_terms(a: TenantA) -> dict[str, Any]:
    # B tries to sell A's product under the agreement A granted its own MSP.
    return {
        "name": f"Hijack {uuid.uuid4().hex[:8]}",
        "description": "another tenant's product",
        "currency": "USD",
        "components": [
            {
                "partner_id": a.isv.id,
                "role": "isv",
                "name": "Stolen",
                "agreement_id": a.agreement_id,
                "pricing": {"model": "one_time", "unit_amount": 100},
            }
        ],
    }


_NOW = "2026-01-01T00:00:00+00:00"
_OPS = "operator only"

ROUTES: dict[tuple[str, str, str], Case] = {
    **{
        (service, "GET", path): public("operational: probes, metrics and the API document")
        for service in ("catalog", "orders", "settlement")
        for path in ("/healthz", "/readyz", "/metrics", "/openapi.json")
    },
    # catalog
    ("catalog", "POST", "/v1/partners"): Case(
        at("/v1/partners", {"name": "Intruder", "kind": "isv"}), reason=_OPS
    ),
    ("catalog", "GET", "/v1/partners/{partner_id}"): public("a partner's public profile"),
    ("catalog", "POST", "/v1/partners/{partner_id}/rotate-token"): Case(
        at("/v1/partners/{a.isv.id}/rotate-token"), partner=REFUSED
    ),
    ("catalog", "POST", "/v1/customers"): public("self-service sign-up"),
    ("catalog", "GET", "/v1/customers/{customer_id}"): Case(
        at("/v1/customers/{a.customer.id}"), customer=REFUSED
    ),
    ("catalog", "POST", "/v1/customers/{customer_id}/rotate-token"): Case(
        at("/v1/customers/{a.customer.id}/rotate-token"), customer=REFUSED
    ),
    ("catalog", "POST", "/v1/agreements"): Case(
        with_body(
            "/v1/agreements",
            lambda a: {"grantee_id": a.msp.id, "role": "isv", "share_bps": 5_000},
        ),
        partner=frozenset({201}),
        scoped=True,
        reason="the grantor is always the caller: B grants its own terms, never A's",
    ),
    ("catalog", "GET", "/v1/agreements"): Case(
        at("/v1/agreements"), partner=frozenset({200}), scoped=True, reason="the caller's own"
    ),
    ("catalog", "GET", "/v1/agreements/{agreement_id}"): Case(
        at("/v1/agreements/{a.agreement_id}"), partner=REFUSED, customer=REFUSED
    ),
    ("catalog", "POST", "/v1/agreements/{agreement_id}/revoke"): Case(
        at("/v1/agreements/{a.agreement_id}/revoke"), partner=REFUSED
    ),
    ("catalog", "POST", "/v1/offerings"): Case(
        with_body("/v1/offerings", _offering_on_a_terms),
        partner=frozenset({404, 422}),
        reason="B cannot sell A's product on terms A granted someone else",
    ),
    ("catalog", "PATCH", "/v1/offerings/{offering_id}"): Case(
        at("/v1/offerings/{a.draft_id}", {"name": "Renamed by B"}), partner=REFUSED
    ),
    ("catalog", "POST", "/v1/offerings/{offering_id}/publish"): Case(
        at("/v1/offerings/{a.draft_id}/publish"), partner=REFUSED
    ),
    ("catalog", "POST", "/v1/offerings/{offering_id}/retire"): Case(
        at("/v1/offerings/{a.published_id}/retire"), partner=REFUSED
    ),
    ("catalog", "GET", "/v1/offerings/{offering_id}"): Case(
        at("/v1/offerings/{a.draft_id}"), partner=REFUSED, customer=REFUSED
    ),
    ("catalog", "GET", "/v1/offerings/{offering_id}/versions/{version}"): Case(
        at("/v1/offerings/{a.draft_id}/versions/1"), partner=REFUSED, customer=REFUSED
    ),
    ("catalog", "GET", "/v1/offerings"): Case(
        at("/v1/offerings"),
        partner=frozenset({200}),
        customer=frozenset({200}),
        scoped=True,
        reason="public browse of published offerings; A's draft never shows",
    ),
    # orders
    ("orders", "POST", "/v1/orders"): Case(
        with_body("/v1/orders", lambda a: {"lines": [{"offering_id": a.draft_id, "quantity": 1}]}),
        customer=frozenset({404, 422}),
        reason="anyone may order a published offering; A's draft is not orderable",
    ),
    ("orders", "GET", "/v1/orders/{order_id}"): Case(
        at("/v1/orders/{a.order_id}"), partner=REFUSED, customer=REFUSED
    ),
    ("orders", "GET", "/v1/orders"): Case(
        at("/v1/orders"),
        partner=frozenset({200}),
        customer=frozenset({200}),
        scoped=True,
        reason="the caller's own orders",
    ),
    ("orders", "POST", "/v1/orders/{order_id}/cancel"): Case(
        at("/v1/orders/{a.order_id}/cancel"), customer=REFUSED
    ),
    ("orders", "GET", "/v1/fulfillments"): Case(
        at("/v1/fulfillments"), partner=frozenset({200}), scoped=True, reason="the caller's own"
    ),
    ("orders", "POST", "/v1/fulfillments/{fulfillment_id}/accept"): Case(
        at("/v1/fulfillments/{a.fulfillment_id}/accept"), partner=REFUSED
    ),
    ("orders", "POST", "/v1/fulfillments/{fulfillment_id}/reject"): Case(
        at("/v1/fulfillments/{a.fulfillment_id}/reject", {"reason": "B says no"}),
        partner=REFUSED,
    ),
    ("orders", "POST", "/v1/fulfillments/{fulfillment_id}/complete"): Case(
        at("/v1/fulfillments/{a.fulfillment_id}/complete"), partner=REFUSED
    ),
    ("orders", "POST", "/v1/usage"): Case(
        with_body("/v1/usage", _usage),
        partner=frozenset({404, 422}),
        reason="the order is named in the body: unknown to B, as any order B has no part in",
    ),
    # settlement
    ("settlement", "GET", "/v1/balances/{partner_id}"): Case(
        at("/v1/balances/{a.isv.id}"), partner=REFUSED
    ),
    ("settlement", "GET", "/v1/statements/{partner_id}"): Case(
        at("/v1/statements/{a.isv.id}"), partner=REFUSED
    ),
    ("settlement", "POST", "/v1/payouts/run"): Case(
        at("/v1/payouts/run", {"as_of": _NOW}), reason=_OPS
    ),
    ("settlement", "GET", "/v1/payouts"): Case(
        at("/v1/payouts"), partner=frozenset({200}), scoped=True, reason="the caller's own"
    ),
    ("settlement", "POST", "/v1/reconciliations"): Case(
        at("/v1/reconciliations", {"lines": []}), reason=_OPS
    ),
    ("settlement", "GET", "/v1/reconciliations/{reconciliation_id}"): Case(
        at("/v1/reconciliations/rec_0000000000"), reason=_OPS
    ),
    ("settlement", "GET", "/v1/checks/three-way"): Case(at("/v1/checks/three-way"), reason=_OPS),
    ("settlement", "GET", "/v1/ledger/trial-balance"): Case(
        at("/v1/ledger/trial-balance"), reason=_OPS
    ),
}


async def _set_up_tenant_a(market: Marketplace) -> TenantA:
    catalog, orders = market.catalog, market.orders
    isv = await catalog.onboard_partner("isv")
    msp = await catalog.onboard_partner("managed_service")
    customer = await catalog.sign_up_customer()
    terms = await catalog.grant(isv, msp, share_bps=7_000)
    draft = await catalog.create_offering(
        msp, components=[catalog.component(isv, agreement=terms, name="Database")]
    )
    published = await catalog.publish_new(isv, components=[catalog.component(isv)])
    await orders.wait_until_known(published["id"])

    async def placed() -> dict[str, Any] | None:
        reply = await orders.place(customer, [{"offering_id": published["id"], "quantity": 1}])
        return None if reply.status == 422 else reply.expect(201)

    order = await wait_for(placed, timeout=30, message="orders never took A's offering")
    fulfillment = await orders.fulfillment_of(isv, order["id"])
    await orders.answer(isv, fulfillment["id"], "accept")

    async def booked() -> bool:
        return (await market.settlement.balance(isv.id))["pending"] > 0

    await wait_for(booked, timeout=30, message="settlement never booked A's order")
    return TenantA(
        isv=isv,
        msp=msp,
        customer=customer,
        agreement_id=terms["id"],
        draft_id=draft["id"],
        draft_name=draft["name"],
        published_id=published["id"],
        order_id=order["id"],
        fulfillment_id=fulfillment["id"],
    )


def _client(market: Marketplace, service: str) -> Catalog:
    base = {
        "catalog": market.catalog.base_url,
        "orders": market.orders.base_url,
        "settlement": market.settlement.base_url,
    }[service]
    return Catalog(
        base_url=base,
        operator_token=market.catalog.operator_token,
        database_url="",
        kafka_bootstrap=market.catalog.kafka_bootstrap,
        topic_prefix=market.topic_prefix,
        session=market.catalog.session,
    )


async def _documented_routes(market: Marketplace) -> set[tuple[str, str, str]]:
    routes: set[tuple[str, str, str]] = set()
    for service in ("catalog", "orders", "settlement"):
        document = (await _client(market, service).call("GET", "/openapi.json")).expect(200)
        for path, operations in document["paths"].items():
            for method in operations:
                if method in ("get", "post", "put", "patch", "delete"):
                    routes.add((service, method.upper(), path))
    return routes


async def _send(client: Catalog, method: str, request: Request, token: str | None) -> Reply:
    path, body = request
    if body is _NO_BODY:
        return await client.call(method, path, token=token)
    return await client.call(method, path, token=token, body=body)


def _ghosts(a: TenantA) -> dict[str, str]:
    """Each of A's ids, and an id of the same shape that names nothing."""
    ids = [a.isv.id, a.msp.id, a.customer.id, a.agreement_id, a.draft_id]
    ids += [a.published_id, a.order_id, a.fulfillment_id]
    return {i: new_id(i.split("_", 1)[0]) for i in ids}


def _replaced(text: str, mapping: dict[str, str]) -> str:
    for old, new in mapping.items():
        text = text.replace(old, new)
    return text


def _haunted(request: Request, ghosts: dict[str, str]) -> Request:
    """The same request aimed at ids that exist nowhere.

    A partner named in a body stays: partners are public (their profiles), and
    an unknown one is refused for that, before the private id is looked at.
    """
    path, body = request
    if body is not _NO_BODY:
        private = {real: g for real, g in ghosts.items() if not real.startswith("ptn_")}
        body = json.loads(_replaced(json.dumps(body), private))
    return _replaced(path, ghosts), body


def _problem(reply: Reply, mapping: dict[str, str]) -> tuple[int, str]:
    """What a refusal says, the ids it echoes put back as ``mapping`` says."""
    body = reply.body if isinstance(reply.body, dict) else {}
    said = {k: body.get(k) for k in ("type", "title", "detail", "errors")}
    return reply.status, _replaced(json.dumps(said, sort_keys=True), mapping)


async def _what_a_has(market: Marketplace, a: TenantA) -> dict[str, Any]:
    """A's resources as the operator reads them; A's own tokens still work."""
    catalog, orders = market.catalog, market.orders
    operator = catalog.operator_token
    order = (await orders.call("GET", f"/v1/orders/{a.order_id}", token=operator)).expect(200)
    agreement = await catalog.call("GET", f"/v1/agreements/{a.agreement_id}", token=operator)
    return {
        "order": order,
        "agreement": agreement.expect(200),
        "draft": await catalog.offering(a.draft_id),
        "published": await catalog.offering(a.published_id),
        "balance": await market.settlement.balance(a.isv.id),
        "isv token": (await catalog.call("GET", "/v1/agreements", token=a.isv.token)).status,
        "customer token": (
            await catalog.call("GET", f"/v1/customers/{a.customer.id}", token=a.customer.token)
        ).status,
    }


async def test_every_documented_route_has_a_tenancy_case(marketplace: Marketplace) -> None:
    market = marketplace
    documented = await _documented_routes(market)
    missing = sorted(documented - ROUTES.keys())
    assert not missing, f"routes without a tenancy case in ROUTES: {missing}"
    stale = sorted(ROUTES.keys() - documented)
    assert not stale, f"ROUTES names routes no document has: {stale}"


async def test_another_tenant_is_refused_at_every_route(marketplace: Marketplace) -> None:
    market = marketplace
    a = await _set_up_tenant_a(market)
    b_partner = await market.catalog.onboard_partner("integrator")
    b_customer = await market.catalog.sign_up_customer()
    secrets = a.private()
    ghosts = _ghosts(a)
    before = await _what_a_has(market, a)
    failures: list[str] = []
    for (service, method, template), case in sorted(ROUTES.items()):
        if case.fill is None:
            assert case.reason, f"{method} {template}: a public route needs its reason"
            continue
        client = _client(market, service)
        request = case.fill(a)
        where = f"{service} {method} {template}"
        anonymous = await _send(client, method, request, None)
        if anonymous.status != 401:
            failures.append(f"{where} without a token: {anonymous.status}")
        for caller, token, allowed in (
            ("B's partner", b_partner.token, case.partner),
            ("B's customer", b_customer.token, case.customer),
        ):
            reply = await _send(client, method, request, token)
            text = json.dumps(reply.body)
            if reply.status not in allowed:
                failures.append(f"{where} as {caller}: {reply.status} not in {sorted(allowed)}")
            if reply.status >= 500:
                failures.append(f"{where} as {caller}: server error {reply.status}")
            # A refusal may echo what B sent (the id in the path); nothing else of A's.
            sent = request[0] + ("" if request[1] is _NO_BODY else json.dumps(request[1]))
            leaked = [s for s in secrets if s in text and s not in sent]
            if leaked:
                failures.append(f"{where} as {caller} read A's {leaked}")
            if reply.status in (200, 201) and not case.scoped:
                failures.append(f"{where} as {caller} succeeded on A's resource")
            if reply.status in (404, 422):
                # Refused exactly as if A's resource did not exist: the id tells B nothing.
                ghost = await _send(client, method, _haunted(request, ghosts), token)
                unghosted = {g: real for real, g in ghosts.items()}
                if _problem(ghost, unghosted) != _problem(reply, {}):
                    failures.append(
                        f"{where} as {caller}: A's id answers {_problem(reply, {})},"
                        f" an unknown one {_problem(ghost, unghosted)}"
                    )
    assert not failures, "\n".join(failures)
    assert await _what_a_has(market, a) == before, "B changed something of A's"
