"""Partners and customers: onboarding, sign-up, tokens (expiry, rotation) and their events."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from shared.contracts import catalog_accounts
from shared.contracts.catalog_accounts import (
    CustomerRegistered,
    CustomerTokenRotated,
    PartnerRegistered,
    PartnerTokenRotated,
)
from shared.tokens import TokenIssuer, generate_keypair
from tests.integration.catalog.conftest import Catalog, TopicEvent, unique
from tests.support.keys import TokenKeys

PARTNER_KINDS = ["isv", "managed_service", "integrator", "reseller"]


# Partners


@pytest.mark.parametrize("kind", PARTNER_KINDS)
async def test_the_operator_onboards_a_partner_of_every_kind(catalog: Catalog, kind: str) -> None:
    name = unique("Acme")
    reply = await catalog.call(
        "POST", "/v1/partners", token=catalog.operator_token, body={"name": name, "kind": kind}
    )
    created = reply.expect(201)
    assert created["id"].startswith("ptn_")
    assert (created["name"], created["kind"]) == (name, kind)
    assert created["token"]
    profile = await catalog.call("GET", f"/v1/partners/{created['id']}", token=created["token"])
    assert profile.expect(200) == {"id": created["id"], "name": name, "kind": kind}


async def test_a_partner_profile_is_public_to_everyone_signed_in_and_never_shows_a_token(
    catalog: Catalog,
) -> None:
    partner = await catalog.onboard_partner("managed_service")
    other = await catalog.onboard_partner()
    customer = await catalog.sign_up_customer()
    for token in (other.token, customer.token, catalog.operator_token):
        reply = await catalog.call("GET", f"/v1/partners/{partner.id}", token=token)
        profile = reply.expect(200)
        assert profile == {"id": partner.id, "name": partner.name, "kind": "managed_service"}
        assert partner.token not in str(reply.body)


async def test_an_unknown_partner_is_not_found(catalog: Catalog) -> None:
    partner = await catalog.onboard_partner()
    for missing in ("ptn_00000000000000000000000000", "nonsense", "ptn_" + "x" * 80):
        reply = await catalog.call("GET", f"/v1/partners/{missing}", token=partner.token)
        assert reply.status == 404
        assert reply.headers["Content-Type"].startswith("application/problem+json")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "Acme", "kind": "vendor"}, "kind"),
        ({"name": "Acme"}, "kind"),
        ({"kind": "isv"}, "name"),
        ({"name": "", "kind": "isv"}, "name"),
        ({"name": "x" * 201, "kind": "isv"}, "name"),
        ({"name": "nul\u0000byte", "kind": "isv"}, "name"),
        ({"name": "Acme", "kind": "isv", "token": "mine"}, "token"),
    ],
)
async def test_an_invalid_partner_is_refused_naming_the_field(
    catalog: Catalog, body: dict[str, str], field: str
) -> None:
    reply = await catalog.call("POST", "/v1/partners", token=catalog.operator_token, body=body)
    assert reply.status == 422, reply.body
    assert reply.fields == [field]
    assert reply.body["type"] == "urn:problem:marketplace:validation-failed"
    assert reply.body["status"] == 422
    assert field in reply.body["detail"]


async def test_malformed_json_is_a_bad_request(catalog: Catalog) -> None:
    for raw in (b'{"name": "Acme", "kind": ', b"", b"\xff\xfe"):
        reply = await catalog.call("POST", "/v1/partners", token=catalog.operator_token, raw=raw)
        assert reply.status == 400, (raw, reply.body)
        assert reply.body["status"] == 400


async def test_a_body_that_is_not_json_is_an_unsupported_media_type(catalog: Catalog) -> None:
    reply = await catalog.call(
        "POST",
        "/v1/partners",
        token=catalog.operator_token,
        raw=b"name=Acme&kind=isv",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert reply.status == 415


async def test_only_the_operator_onboards_partners(catalog: Catalog) -> None:
    partner = await catalog.onboard_partner()
    customer = await catalog.sign_up_customer()
    body = {"name": unique("Sneaky"), "kind": "isv"}
    for token in (partner.token, customer.token):
        reply = await catalog.call("POST", "/v1/partners", token=token, body=body)
        assert reply.status == 403, reply.body
    assert (await catalog.call("POST", "/v1/partners", body=body)).status == 401
    async with catalog.database() as conn:
        assert (
            await conn.fetchval("SELECT count(*) FROM partners WHERE name = $1", body["name"]) == 0
        )


# Customers


async def test_a_customer_signs_up_without_a_token_and_reads_its_own_account(
    catalog: Catalog,
) -> None:
    email = f"Ada.{uuid.uuid4().hex}@Example.com"
    reply = await catalog.call("POST", "/v1/customers", body={"name": "Ada", "email": email})
    created = reply.expect(201)
    assert created["id"].startswith("cus_")
    assert created["name"] == "Ada"
    assert created["token"]
    own = await catalog.call("GET", f"/v1/customers/{created['id']}", token=created["token"])
    assert own.expect(200) == {"id": created["id"], "name": "Ada", "email": email}
    by_operator = await catalog.call(
        "GET", f"/v1/customers/{created['id']}", token=catalog.operator_token
    )
    assert by_operator.expect(200)["email"] == email


async def test_one_account_per_email_whatever_its_case(catalog: Catalog) -> None:
    email = f"grace.{uuid.uuid4().hex}@example.com"
    first = await catalog.call("POST", "/v1/customers", body={"name": "Grace", "email": email})
    first.expect(201)
    again = await catalog.call(
        "POST", "/v1/customers", body={"name": "Grace", "email": email.upper()}
    )
    assert again.status == 409, again.body


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "Bob", "email": "not-an-email"}, "email"),
        ({"name": "Bob", "email": "bob@" + "x" * 250 + ".com"}, "email"),
        ({"name": "Bob"}, "email"),
        ({"email": "bob@example.com"}, "name"),
        ({"name": "x" * 201, "email": "bob@example.com"}, "name"),
    ],
)
async def test_an_invalid_sign_up_is_refused_naming_the_field(
    catalog: Catalog, body: dict[str, str], field: str
) -> None:
    reply = await catalog.call("POST", "/v1/customers", body=body)
    assert reply.status == 422, reply.body
    assert reply.fields == [field]


async def test_a_customer_cannot_read_another_customer(catalog: Catalog) -> None:
    alice = await catalog.sign_up_customer()
    bob = await catalog.sign_up_customer()
    reply = await catalog.call("GET", f"/v1/customers/{bob.id}", token=alice.token)
    assert reply.status == 404
    unknown = await catalog.call(
        "GET", "/v1/customers/cus_00000000000000000000000000", token=alice.token
    )
    assert unknown.status == 404
    assert reply.body["title"] == unknown.body["title"]


async def test_a_partner_cannot_read_customer_accounts(catalog: Catalog) -> None:
    customer = await catalog.sign_up_customer()
    partner = await catalog.onboard_partner()
    reply = await catalog.call("GET", f"/v1/customers/{customer.id}", token=partner.token)
    assert reply.status == 403


# Tokens


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Bearer not-a-token",
        "Basic dXNlcjpwYXNz",
        "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.",
    ],
)
async def test_a_missing_or_invalid_token_is_unauthorized(
    catalog: Catalog, authorization: str | None
) -> None:
    partner = await catalog.onboard_partner()
    headers = {} if authorization is None else {"Authorization": authorization}
    reply = await catalog.call("GET", f"/v1/partners/{partner.id}", headers=headers)
    assert reply.status == 401, reply.body
    assert reply.headers["WWW-Authenticate"].startswith("Bearer")
    assert reply.body["status"] == 401


async def test_a_token_signed_by_another_key_is_unauthorized(catalog: Catalog) -> None:
    partner = await catalog.onboard_partner()
    forger = TokenIssuer(generate_keypair()[0], ttl=timedelta(hours=1))
    forged = forger.issue(partner.id, "partner", 1)
    reply = await catalog.call("GET", f"/v1/partners/{partner.id}", token=forged)
    assert reply.status == 401


async def test_an_expired_token_is_unauthorized(catalog: Catalog, token_keys: TokenKeys) -> None:
    partner = await catalog.onboard_partner()
    customer = await catalog.sign_up_customer()
    expired = TokenIssuer(token_keys.private_pem, ttl=timedelta(seconds=-10))
    issued_long_ago = TokenIssuer(token_keys.private_pem, ttl=timedelta(days=90))
    for token in (
        expired.issue(partner.id, "partner", 1),
        expired.issue(customer.id, "customer", 1),
        issued_long_ago.issue(partner.id, "partner", 1, now=datetime.now(UTC) - timedelta(days=91)),
    ):
        reply = await catalog.call("GET", f"/v1/partners/{partner.id}", token=token)
        assert reply.status == 401, reply.body
        assert "expired" in reply.body["detail"]
    # The same claims, still valid, are accepted: only the expiry made the difference.
    fresh = TokenIssuer(token_keys.private_pem, ttl=timedelta(minutes=5))
    reply = await catalog.call(
        "GET", f"/v1/partners/{partner.id}", token=fresh.issue(partner.id, "partner", 1)
    )
    assert reply.status == 200


async def test_a_token_for_an_account_that_does_not_exist_is_unauthorized(
    catalog: Catalog, token_keys: TokenKeys
) -> None:
    partner = await catalog.onboard_partner()
    issuer = TokenIssuer(token_keys.private_pem, ttl=timedelta(minutes=5))
    ghost = issuer.issue("ptn_00000000000000000000000000", "partner", 1)
    reply = await catalog.call("GET", f"/v1/partners/{partner.id}", token=ghost)
    assert reply.status == 401


async def test_rotating_a_partner_token_retires_the_old_one(catalog: Catalog) -> None:
    partner = await catalog.onboard_partner()
    path = f"/v1/partners/{partner.id}"
    reply = await catalog.call("POST", f"{path}/rotate-token", token=partner.token)
    new_token = reply.expect(200)["token"]
    assert new_token != partner.token
    assert (await catalog.call("GET", path, token=partner.token)).status == 401
    assert (await catalog.call("GET", path, token=new_token)).status == 200
    # The operator rotates on the partner's behalf, e.g. after a leak.
    by_operator = await catalog.call("POST", f"{path}/rotate-token", token=catalog.operator_token)
    newest = by_operator.expect(200)["token"]
    assert (await catalog.call("GET", path, token=new_token)).status == 401
    assert (await catalog.call("GET", path, token=newest)).status == 200


async def test_a_partner_cannot_rotate_another_partners_token(catalog: Catalog) -> None:
    partner = await catalog.onboard_partner()
    other = await catalog.onboard_partner()
    reply = await catalog.call("POST", f"/v1/partners/{partner.id}/rotate-token", token=other.token)
    assert reply.status == 404
    still = await catalog.call("GET", f"/v1/partners/{partner.id}", token=partner.token)
    assert still.status == 200


async def test_rotating_a_customer_token_retires_the_old_one(catalog: Catalog) -> None:
    customer = await catalog.sign_up_customer()
    other = await catalog.sign_up_customer()
    path = f"/v1/customers/{customer.id}"
    refused = await catalog.call("POST", f"{path}/rotate-token", token=other.token)
    assert refused.status == 404
    reply = await catalog.call("POST", f"{path}/rotate-token", token=customer.token)
    new_token = reply.expect(200)["token"]
    assert (await catalog.call("GET", path, token=customer.token)).status == 401
    assert (await catalog.call("GET", path, token=new_token)).expect(200)["id"] == customer.id
    assert (await catalog.call("GET", f"/v1/customers/{other.id}", token=other.token)).status == 200


# Events


def _of_key(events: list[TopicEvent], key: str) -> list[TopicEvent]:
    return [e for e in events if e.key == key]


async def test_registrations_and_rotations_are_published_without_tokens(catalog: Catalog) -> None:
    partner = await catalog.onboard_partner("integrator")
    customer = await catalog.sign_up_customer()
    rotated = await catalog.call(
        "POST", f"/v1/partners/{partner.id}/rotate-token", token=partner.token
    )
    new_token = rotated.expect(200)["token"]
    customer_rotated = await catalog.call(
        "POST", f"/v1/customers/{customer.id}/rotate-token", token=customer.token
    )
    new_customer_token = customer_rotated.expect(200)["token"]

    events = await catalog.wait_for_events(
        catalog_accounts.TOPIC,
        lambda read: len(_of_key(read, partner.id)) >= 2 and len(_of_key(read, customer.id)) >= 2,
        message="the account events did not arrive",
    )
    registered, partner_rotated = (e.event for e in _of_key(events, partner.id))
    assert isinstance(registered, PartnerRegistered)
    assert registered.partner.partner_id == partner.id
    assert registered.partner.name == partner.name
    assert registered.partner.kind == "integrator"
    assert registered.partner.token_generation == 1
    assert isinstance(partner_rotated, PartnerTokenRotated)
    assert partner_rotated.partner.token_generation == 2

    signed_up, customer_rotated_event = (e.event for e in _of_key(events, customer.id))
    assert isinstance(signed_up, CustomerRegistered)
    assert signed_up.customer.customer_id == customer.id
    assert signed_up.customer.name == customer.name
    assert isinstance(customer_rotated_event, CustomerTokenRotated)
    assert customer_rotated_event.customer.token_generation == 2

    secrets = (partner.token, new_token, customer.token, new_customer_token)
    for event in _of_key(events, partner.id) + _of_key(events, customer.id):
        assert event.envelope.producer == "catalog"
        assert b'"token"' not in event.value
        assert not any(secret.encode() in event.value for secret in secrets)


async def test_issued_tokens_are_never_stored(catalog: Catalog) -> None:
    """Only hashes of secrets may be stored: no table holds a token, not even for a replay."""
    retry = {"Idempotency-Key": str(uuid.uuid4())}
    partner = (
        await catalog.call(
            "POST",
            "/v1/partners",
            token=catalog.operator_token,
            body={"name": unique("Keeps secrets"), "kind": "isv"},
            headers=retry,
        )
    ).expect(201)
    customer = (
        await catalog.call(
            "POST",
            "/v1/customers",
            body={"name": "Secretive", "email": f"{uuid.uuid4().hex}@example.com"},
            headers=retry,
        )
    ).expect(201)
    rotated = (
        await catalog.call(
            "POST",
            f"/v1/partners/{partner['id']}/rotate-token",
            token=partner["token"],
            headers=retry,
        )
    ).expect(200)
    tokens = [partner["token"], customer["token"], rotated["token"], catalog.operator_token]

    async with catalog.database() as conn:
        tables = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        holding_a_token = set()
        for table in (row["tablename"] for row in tables):
            # A row as text shows bytea columns in hex: look for both spellings.
            for row in await conn.fetch(f'SELECT t::text AS row FROM "{table}" t'):
                if any(t in row["row"] or t.encode().hex() in row["row"] for t in tokens):
                    holding_a_token.add(table)
    assert holding_a_token == set()


async def test_a_rotation_under_an_idempotency_key_refuses_the_old_token_at_once(
    catalog: Catalog,
) -> None:
    partner = await catalog.onboard_partner()
    path = f"/v1/partners/{partner.id}"

    async def read_with_old_token() -> int:
        return (await catalog.call("GET", path, token=partner.token)).status

    # Readers with the old token keep the generation cache busy while the rotation commits.
    readers = [asyncio.create_task(read_with_old_token()) for _ in range(20)]
    rotated = await catalog.call(
        "POST",
        f"{path}/rotate-token",
        token=partner.token,
        headers={"Idempotency-Key": str(uuid.uuid4())},
    )
    rotated.expect(200)
    await asyncio.gather(*readers)
    for _ in range(5):
        assert await read_with_old_token() == 401
