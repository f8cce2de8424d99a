"""Items 1 and 9: an Idempotency-Key on a public endpoint is a secret; a lost rotation reply."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import pytest

from tests.integration.catalog.conftest import Catalog, unique

PROBLEM = "application/problem+json"


def sign_up_body() -> dict[str, Any]:
    return {"name": unique("customer"), "email": f"{uuid.uuid4().hex}@example.com"}


@pytest.mark.parametrize(
    "guessable",
    ["1", "signup-1", "2026-11-22", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
     "00000000-0000-4000-8000-000000000000", "customer-signup-key-number-0001"],
)  # fmt: skip
async def test_a_guessable_key_on_sign_up_gets_nothing(catalog: Catalog, guessable: str) -> None:
    body = sign_up_body()
    first = await catalog.call(
        "POST", "/v1/customers", body=body, headers={"Idempotency-Key": guessable}
    )
    assert first.status == 422, first.body
    assert first.headers["Content-Type"].startswith(PROBLEM)
    assert first.fields == ["Idempotency-Key"]
    # Whoever guesses the same key and body afterwards gets no one's token either.
    second = await catalog.call(
        "POST", "/v1/customers", body=body, headers={"Idempotency-Key": guessable}
    )
    assert second.status == 422
    assert "token" not in (second.body or {})


async def test_the_database_holds_neither_the_key_nor_a_plain_digest_of_it(
    catalog: Catalog,
) -> None:
    key = str(uuid.uuid4())
    reply = await catalog.call(
        "POST", "/v1/customers", body=sign_up_body(), headers={"Idempotency-Key": key}
    )
    reply.expect(201)
    plain_digests = {
        key,
        hashlib.sha256(key.encode()).hexdigest(),
        hashlib.sha256(b"idempotency-key:" + key.encode()).hexdigest(),
    }
    async with catalog.database() as conn:
        stored = {row["key"] for row in await conn.fetch("SELECT key FROM idempotency_keys")}
        sealed = [row["body"] for row in await conn.fetch("SELECT body FROM idempotency_keys")]
    assert stored, "the key was not stored at all"
    assert not stored & plain_digests, "a database reader could look the key up"
    assert all(reply.body["token"].encode() not in (body or b"") for body in sealed)


async def test_a_reply_that_holds_a_token_is_replayed_only_briefly(catalog: Catalog) -> None:
    body = sign_up_body()
    key = str(uuid.uuid4())
    created = await catalog.call(
        "POST", "/v1/customers", body=body, headers={"Idempotency-Key": key}
    )
    token = created.expect(201)["token"]
    async with catalog.database() as conn:
        await conn.execute(
            "UPDATE idempotency_keys SET created_at = now() - interval '16 minutes'"
            " WHERE principal = 'anonymous'"
        )
    late = await catalog.call("POST", "/v1/customers", body=body, headers={"Idempotency-Key": key})
    assert late.status == 409, late.body
    assert token not in str(late.body)


async def test_a_lost_rotation_reply_is_replayed_to_the_retry_with_the_old_token(
    catalog: Catalog,
) -> None:
    customer = await catalog.sign_up_customer()
    path = f"/v1/customers/{customer.id}/rotate-token"
    key = str(uuid.uuid4())
    rotated = await catalog.call(
        "POST", path, token=customer.token, headers={"Idempotency-Key": key}
    )
    new_token = rotated.expect(200)["token"]
    # The reply was lost; the client retries as it should: same key, the token it still has.
    retried = await catalog.call(
        "POST", path, token=customer.token, headers={"Idempotency-Key": key}
    )
    assert retried.expect(200) == {"token": new_token}
    assert retried.headers.get("Idempotent-Replayed") == "true"
    # The old token opens nothing else, and no other key replays anything for it.
    read = await catalog.call("GET", f"/v1/customers/{customer.id}", token=customer.token)
    assert read.status == 401
    other_key = await catalog.call(
        "POST", path, token=customer.token, headers={"Idempotency-Key": str(uuid.uuid4())}
    )
    assert other_key.status == 401
    assert (
        await catalog.call("GET", f"/v1/customers/{customer.id}", token=new_token)
    ).status == 200
