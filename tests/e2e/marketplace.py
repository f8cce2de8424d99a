"""The marketplace as its users reach it: HTTP calls with their tokens, and one co-sell deal.

Everything here goes through the public contract only; nothing reads a
service's database or imports a service's code.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from tests.support.stack import Stack
from tests.support.waiting import wait_for

# Transient answers while a service is killed, paused or restarting.
UNAVAILABLE = frozenset({502, 503, 504})
CALL_TIMEOUT = aiohttp.ClientTimeout(total=10)
# Shares the co-sell deal is made with (basis points of the net after the fee).
ISV_SHARE_BPS = 7000
INTEGRATOR_SHARE_BPS = 9000


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any
    request: str = ""  # "METHOD /path", for failure messages

    def expect(self, status: int) -> Any:
        assert self.status == status, (
            f"{self.request}: expected {status}, got {self.status}: {self.body}"
        )
        return self.body


class Unanswered(Exception):
    """The service could not be reached or answered 5xx: the call may or may not have happened."""


class Marketplace:
    """HTTP calls to one stack's services, each as some caller (a bearer token)."""

    def __init__(self, session: aiohttp.ClientSession, stack: Stack) -> None:
        self.session = session
        self.stack = stack
        self.urls = {name: service.base_url for name, service in stack.services.items()}

    @staticmethod
    def idempotency_key() -> str:
        """Unguessable, as public endpoints require (a key must not let others replay it)."""
        return str(uuid.uuid4())

    async def call(
        self,
        method: str,
        service: str,
        path: str,
        *,
        token: str | None,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        base_url: str | None = None,
    ) -> Reply:
        """One request; ``Unanswered`` if the service could not be reached or answered 5xx."""
        headers: dict[str, str] = {}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        url = (base_url or self.urls[service]) + path
        try:
            async with self.session.request(
                method, url, json=json, params=params, headers=headers, timeout=CALL_TIMEOUT
            ) as response:
                body: Any = (
                    await response.json(content_type=None) if response.content_length != 0 else None
                )
                status = response.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise Unanswered(f"{method} {path}: {exc!r}") from None
        if status >= 500:
            raise Unanswered(f"{method} {path}: {status} {body}")
        return Reply(status, body, f"{method} {path}")

    async def answered(
        self,
        method: str,
        service: str,
        path: str,
        *,
        token: str | None,
        timeout: float = 60,  # noqa: ASYNC109 - a deadline for the retries
        **kwargs: Any,
    ) -> Reply:
        """The call retried (same idempotency key, if any) until the service answers 2xx/4xx."""
        last: list[str] = []

        async def attempt() -> Reply | None:
            try:
                return await self.call(method, service, path, token=token, **kwargs)
            except Unanswered as exc:
                last[:] = [str(exc)]
                return None

        try:
            return await wait_for(
                attempt, timeout=timeout, interval=0.2, message=f"{method} {path} never answered"
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last: {last}") from None

    async def pages(self, service: str, path: str, *, token: str, **params: str) -> list[Any]:
        """Every item of a paginated list."""
        items: list[Any] = []
        cursor: str | None = None
        while True:
            query = {**params, "limit": "500", **({"cursor": cursor} if cursor else {})}
            page = (await self.call("GET", service, path, token=token, params=query)).expect(200)
            items.extend(page["items"])
            cursor = page["next_cursor"]
            if cursor is None:
                return items


@dataclass(frozen=True)
class Party:
    id: str
    token: str


@dataclass(frozen=True)
class Deal:
    """Three partners co-selling one joint offering, plus a listing of one partner's own."""

    isv: Party
    msp: Party  # the managed-service provider: owns the joint offering, accountable for it
    integrator: Party
    customers: tuple[Party, ...]
    joint_offering_id: str
    listing_id: str  # the integrator's single-partner listing

    @property
    def partners(self) -> dict[str, Party]:
        return {"isv": self.isv, "msp": self.msp, "integrator": self.integrator}


# Odd amounts, so splits have remainders to round.
LICENSE_MONTHLY = 12_345  # the ISV's subscription, per month
SETUP_FEE = 49_999  # the integrator's one-time setup
OPERATIONS_PER_GB_HOUR = 37  # the managed-service provider's metered operations
WORKSHOP_FEE = 8_001  # the integrator's own listing


async def onboard(mp: Marketplace, name: str, kind: str) -> Party:
    body = (
        await mp.answered(
            "POST", "catalog", "/v1/partners",
            token=mp.stack.operator_token, json={"name": name, "kind": kind},
            idempotency_key=mp.idempotency_key(),
        )
    ).expect(201)  # fmt: skip
    return Party(body["id"], body["token"])


async def sign_up(mp: Marketplace, name: str) -> Party:
    email = f"{name.lower().replace(' ', '.')}@example.com"
    body = (
        await mp.answered(
            "POST", "catalog", "/v1/customers", token=None,
            json={"name": name, "email": email}, idempotency_key=mp.idempotency_key(),
        )
    ).expect(201)  # fmt: skip
    return Party(body["id"], body["token"])


async def grant(mp: Marketplace, grantor: Party, grantee: Party, role: str, share_bps: int) -> str:
    body = (
        await mp.answered(
            "POST", "catalog", "/v1/agreements", token=grantor.token,
            json={"grantee_id": grantee.id, "role": role, "share_bps": share_bps},
            idempotency_key=mp.idempotency_key(),
        )
    ).expect(201)  # fmt: skip
    assert body["status"] == "active", body
    return str(body["id"])


async def publish(mp: Marketplace, owner: Party, draft: dict[str, Any]) -> str:
    created = (
        await mp.answered(
            "POST", "catalog", "/v1/offerings", token=owner.token, json=draft,
            idempotency_key=mp.idempotency_key(),
        )
    ).expect(201)  # fmt: skip
    offering_id = str(created["id"])
    published = (
        await mp.answered(
            "POST", "catalog", f"/v1/offerings/{offering_id}/publish", token=owner.token
        )
    ).expect(200)
    assert published["status"] == "published", published
    return offering_id


async def make_deal(mp: Marketplace, customers: int = 3) -> Deal:
    """The operator onboards three partners; they agree terms and publish a joint offering."""
    isv = await onboard(mp, "Acme Database", "isv")
    msp = await onboard(mp, "Northwind Managed Cloud", "managed_service")
    integrator = await onboard(mp, "Contoso Integration", "integrator")
    isv_agreement = await grant(mp, isv, msp, "isv", ISV_SHARE_BPS)
    integrator_agreement = await grant(mp, integrator, msp, "integrator", INTEGRATOR_SHARE_BPS)
    joint = await publish(
        mp,
        msp,
        {
            "name": "Managed Acme Database",
            "description": "Acme's database, set up by Contoso, run by Northwind",
            "currency": "USD",
            "components": [
                {
                    "partner_id": isv.id, "role": "isv", "name": "Acme licence",
                    "pricing": {
                        "model": "subscription", "unit_amount": LICENSE_MONTHLY,
                        "interval": "month",
                    },
                    "agreement_id": isv_agreement,
                },
                {
                    "partner_id": integrator.id, "role": "integrator", "name": "Setup",
                    "pricing": {"model": "one_time", "unit_amount": SETUP_FEE},
                    "agreement_id": integrator_agreement,
                },
                {
                    "partner_id": msp.id, "role": "managed_service", "name": "Operations",
                    "pricing": {
                        "model": "usage", "unit_amount": OPERATIONS_PER_GB_HOUR,
                        "unit": "GB-hour",
                    },
                },
            ],
        },
    )  # fmt: skip
    listing = await publish(
        mp,
        integrator,
        {
            "name": "Database migration workshop",
            "currency": "USD",
            "components": [
                {
                    "partner_id": integrator.id, "role": "integrator", "name": "Workshop",
                    "pricing": {"model": "one_time", "unit_amount": WORKSHOP_FEE},
                }
            ],
        },
    )  # fmt: skip
    people = [await sign_up(mp, f"Customer {n}") for n in range(customers)]
    return Deal(isv, msp, integrator, tuple(people), joint, listing)


async def place_when_known(
    mp: Marketplace,
    customer: Party,
    lines: list[dict[str, Any]],
    timeout: float = 60,  # noqa: ASYNC109 - a deadline for the retries
) -> dict[str, Any]:
    """Place an order once orders' copy of the catalog knows its offerings.

    Orders learns offerings from the catalog's events, so just after publishing
    it answers 422 (unknown offering) for a moment, as a customer would see.
    """
    key = mp.idempotency_key()

    async def placed() -> dict[str, Any] | None:
        reply = await mp.answered(
            "POST", "orders", "/v1/orders", token=customer.token,
            json={"lines": lines}, idempotency_key=key,
        )  # fmt: skip
        if reply.status == 422:
            return None
        body: dict[str, Any] = reply.expect(201)
        return body

    return await wait_for(
        placed, timeout=timeout, interval=0.2, message=f"orders never accepted {lines}"
    )


async def offerings_known_to_orders(mp: Marketplace, deal: Deal) -> str:
    """Wait until orders knows both offerings; the probe order is cancelled at once.

    Returns the probe's id: it is an order like any other for the checks.
    """
    customer = deal.customers[0]
    probe = await place_when_known(
        mp,
        customer,
        [
            {"offering_id": deal.joint_offering_id, "quantity": 1},
            {"offering_id": deal.listing_id, "quantity": 1},
        ],
    )
    cancelled = await mp.answered(
        "POST", "orders", f"/v1/orders/{probe['id']}/cancel", token=customer.token
    )
    assert cancelled.expect(200)["status"] == "cancelled", cancelled.body
    return str(probe["id"])
