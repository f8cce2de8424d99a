"""Idempotency-Key on every creating POST: a retry replays, a different body conflicts."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from tests.integration.catalog.conftest import Catalog, unique


def key() -> dict[str, str]:
    return {"Idempotency-Key": str(uuid.uuid4())}


async def test_onboarding_a_partner_twice_with_one_key_makes_one_partner(
    catalog: Catalog,
) -> None:
    headers = key()
    body = {"name": unique("Once only"), "kind": "integrator"}
    first = await catalog.call(
        "POST", "/v1/partners", token=catalog.operator_token, body=body, headers=headers
    )
    again = await catalog.call(
        "POST", "/v1/partners", token=catalog.operator_token, body=body, headers=headers
    )
    assert first.status == again.status == 201
    assert again.body == first.body
    assert again.headers.get("Idempotent-Replayed") == "true"
    async with catalog.database() as conn:
        count = await conn.fetchval("SELECT count(*) FROM partners WHERE name = $1", body["name"])
    assert count == 1

    changed = await catalog.call(
        "POST",
        "/v1/partners",
        token=catalog.operator_token,
        body={**body, "kind": "reseller"},
        headers=headers,
    )
    assert changed.status == 409, changed.body
    assert changed.headers["Content-Type"].startswith("application/problem+json")


async def test_signing_up_twice_with_one_key_replays_the_sign_up(catalog: Catalog) -> None:
    headers = key()
    body = {"name": "Replay", "email": f"{uuid.uuid4().hex}@example.com"}
    first = await catalog.call("POST", "/v1/customers", body=body, headers=headers)
    again = await catalog.call("POST", "/v1/customers", body=body, headers=headers)
    assert first.status == again.status == 201
    assert again.body == first.body
    other_email = {**body, "email": f"{uuid.uuid4().hex}@example.com"}
    changed = await catalog.call("POST", "/v1/customers", body=other_email, headers=headers)
    assert changed.status == 409


async def test_granting_twice_with_one_key_makes_one_agreement(catalog: Catalog) -> None:
    isv = await catalog.onboard_partner("isv")
    msp = await catalog.onboard_partner("managed_service")
    headers = key()
    body = {"grantee_id": msp.id, "role": "isv", "share_bps": 1_234}
    replies = [
        await catalog.call("POST", "/v1/agreements", token=isv.token, body=body, headers=headers)
        for _ in range(3)
    ]
    assert [r.status for r in replies] == [201, 201, 201]
    assert replies[1].body == replies[2].body == replies[0].body
    listed = await catalog.call("GET", "/v1/agreements", token=isv.token)
    assert [a["id"] for a in listed.expect(200)["items"]] == [replies[0].body["id"]]
    changed = await catalog.call(
        "POST",
        "/v1/agreements",
        token=isv.token,
        body={**body, "share_bps": 4_321},
        headers=headers,
    )
    assert changed.status == 409


async def test_creating_an_offering_twice_with_one_key_makes_one_offering(
    catalog: Catalog,
) -> None:
    owner = await catalog.onboard_partner()
    headers = key()
    body = catalog.offering_body(owner)
    first = await catalog.call(
        "POST", "/v1/offerings", token=owner.token, body=body, headers=headers
    )
    again = await catalog.call(
        "POST", "/v1/offerings", token=owner.token, body=body, headers=headers
    )
    assert first.status == again.status == 201
    assert again.body == first.body
    async with catalog.database() as conn:
        count = await conn.fetchval("SELECT count(*) FROM offerings WHERE owner_id = $1", owner.id)
    assert count == 1
    changed = await catalog.call(
        "POST",
        "/v1/offerings",
        token=owner.token,
        body={**body, "name": "Something else"},
        headers=headers,
    )
    assert changed.status == 409


async def test_concurrent_retries_with_one_key_make_one_offering(catalog: Catalog) -> None:
    owner = await catalog.onboard_partner()
    headers = key()
    body = catalog.offering_body(owner)
    replies = await asyncio.gather(
        *(
            catalog.call("POST", "/v1/offerings", token=owner.token, body=body, headers=headers)
            for _ in range(5)
        )
    )
    assert [r.status for r in replies] == [201] * 5
    assert len({r.body["id"] for r in replies}) == 1
    async with catalog.database() as conn:
        count = await conn.fetchval("SELECT count(*) FROM offerings WHERE owner_id = $1", owner.id)
    assert count == 1


async def test_a_refused_request_does_not_use_up_its_key(catalog: Catalog) -> None:
    owner = await catalog.onboard_partner()
    headers = key()
    invalid: dict[str, Any] = catalog.offering_body(owner, currency="XTS")
    refused = await catalog.call(
        "POST", "/v1/offerings", token=owner.token, body=invalid, headers=headers
    )
    assert refused.status == 422
    valid = catalog.offering_body(owner)
    accepted = await catalog.call(
        "POST", "/v1/offerings", token=owner.token, body=valid, headers=headers
    )
    assert accepted.status == 201


async def test_keys_belong_to_the_caller(catalog: Catalog) -> None:
    """Two partners that happen to pick the same key do not see each other's replies."""
    first = await catalog.onboard_partner()
    second = await catalog.onboard_partner()
    headers = key()
    mine = await catalog.call(
        "POST",
        "/v1/offerings",
        token=first.token,
        body=catalog.offering_body(first),
        headers=headers,
    )
    theirs = await catalog.call(
        "POST",
        "/v1/offerings",
        token=second.token,
        body=catalog.offering_body(second),
        headers=headers,
    )
    assert mine.status == theirs.status == 201
    assert (mine.body["owner_id"], theirs.body["owner_id"]) == (first.id, second.id)


async def test_an_unusable_key_is_refused(catalog: Catalog) -> None:
    owner = await catalog.onboard_partner()
    reply = await catalog.call(
        "POST",
        "/v1/offerings",
        token=owner.token,
        body=catalog.offering_body(owner),
        headers={"Idempotency-Key": "k" * 256},
    )
    assert reply.status == 422
    assert reply.fields == ["Idempotency-Key"]


async def test_a_random_key_still_replays_to_its_owner(catalog: Catalog) -> None:
    body = {"name": unique("customer"), "email": f"{uuid.uuid4().hex}@example.com"}
    key = str(uuid.uuid4())
    first = await catalog.call("POST", "/v1/customers", body=body, headers={"Idempotency-Key": key})
    again = await catalog.call("POST", "/v1/customers", body=body, headers={"Idempotency-Key": key})
    assert first.expect(201) == again.expect(201)
    assert again.headers.get("Idempotent-Replayed") == "true"
