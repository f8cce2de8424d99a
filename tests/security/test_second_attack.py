"""What a second black-box attack (after issue 6's fixes) still got through.

Each test is one reproduction, sent as an HTTP client would send it.
"""

from __future__ import annotations

import time
import uuid

import pytest

from tests.integration.catalog.conftest import Catalog, unique
from tests.security.conftest import raw_exchange

JSON = {"Content-Type": "application/json"}


def email() -> str:
    return f"{uuid.uuid4().hex}@example.com"


async def test_a_unit_name_with_a_trailing_newline_is_refused(catalog: Catalog) -> None:
    # Python's "$" also matches before a final newline, so "GB-hour\n" passed the unit's
    # pattern and reached the offering, its events and every statement line that names it.
    partner = await catalog.onboard_partner()
    pricing = {"model": "usage", "unit_amount": 1, "unit": "GB-hour\n"}
    body = catalog.offering_body(partner, components=[catalog.component(partner, pricing=pricing)])
    reply = await catalog.call("POST", "/v1/offerings", token=partner.token, body=body)
    assert reply.status == 422, reply.body
    assert reply.fields == ["components[0].pricing.unit"]


@pytest.mark.parametrize(
    "local",
    ["evil\u202eoc.x", "a\u200bb", "a\x85b", "a\x9bb", "a\ufeffb"],
    ids=["bidi override", "zero width", "C1 NEL", "C1 CSI", "BOM"],
)
async def test_an_email_refuses_hidden_characters(catalog: Catalog, local: str) -> None:
    body = {"name": unique("customer"), "email": f"{local}{uuid.uuid4().hex[:6]}@example.com"}
    reply = await catalog.call("POST", "/v1/customers", body=body)
    assert reply.status == 422, reply.body
    assert reply.fields == ["email"]


@pytest.mark.parametrize(
    "name",
    ["\u3164", "\u115f\u1160", "\uffa0", "\u2800", "a\u034fb"],
    ids=["hangul filler", "hangul choseong/jungseong fillers", "halfwidth filler",
         "braille blank", "combining grapheme joiner"],
)  # fmt: skip
async def test_a_name_refuses_blank_looking_fillers(catalog: Catalog, name: str) -> None:
    reply = await catalog.call("POST", "/v1/customers", body={"name": name, "email": email()})
    assert reply.status == 422, reply.body
    assert reply.fields == ["name"]


@pytest.mark.parametrize(
    "guessable",
    ["abcdef" * 6, "ABCDEFabcdef" * 3, "abcdefghijklmnopqrstuvwxyz012345",
     "0123456789abcdef0123456789abcdef", "customer-signup-0001-customer-signup-0002",
     "zyxwvutsrqponmlkjihgfedcba987654"],
    ids=["repeated 6", "repeated 12", "alphabet", "hex digits twice", "counter", "descending"],
)  # fmt: skip
async def test_a_patterned_key_on_sign_up_is_refused(catalog: Catalog, guessable: str) -> None:
    reply = await catalog.call(
        "POST",
        "/v1/customers",
        body={"name": unique("customer"), "email": email()},
        headers={"Idempotency-Key": guessable},
    )
    assert reply.status == 422, reply.body
    assert reply.fields == ["Idempotency-Key"]


@pytest.mark.parametrize("key", ["rotate", "1", "rotate-token-after-leak"])
async def test_a_leaked_token_cannot_fetch_its_replacement_by_guessing_the_rotation_key(
    catalog: Catalog, key: str
) -> None:
    # A token is rotated because it leaked. On an authenticated endpoint any key will do,
    # but once the token is superseded the key is all that tells the owner's retry from
    # the thief's: a guessable one must replay nothing, or the thief gets the new token.
    partner = await catalog.onboard_partner()
    path = f"/v1/partners/{partner.id}/rotate-token"
    rotated = await catalog.call(
        "POST", path, token=partner.token, headers={"Idempotency-Key": key}
    )
    new_token = rotated.expect(200)["token"]
    stolen = await catalog.call("POST", path, token=partner.token, headers={"Idempotency-Key": key})
    assert stolen.status == 401, stolen.body
    assert new_token not in str(stolen.body)
    # The owner, holding the new token, still gets its own rotation replayed.
    owner = await catalog.call("POST", path, token=new_token, headers={"Idempotency-Key": key})
    assert owner.expect(200) == {"token": new_token}


async def closed_within(catalog: Catalog, request: bytes, seconds: float) -> bytes:
    """The whole reply to ``request``, failing if the service keeps the connection longer."""
    started = time.monotonic()
    reply = await raw_exchange(catalog.base_url, request, within=seconds)
    assert time.monotonic() - started < seconds
    return reply


async def test_a_body_declared_larger_than_allowed_is_refused_at_once(
    limited_catalog: Catalog,
) -> None:
    # Declaring 2 MB and sending 2 bytes held the connection for the body deadline (30 s)
    # and then answered 408; the size is known from the head, so it is 413 at once, and
    # the rest of the body is not waited for either.
    head = (
        b"POST /v1/partners HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + limited_catalog.operator_token.encode() + b"\r\n"
        b"Content-Length: 2000000\r\n\r\n{}"
    )
    reply = await closed_within(limited_catalog, head, 5.0)
    assert reply.startswith(b"HTTP/1.1 413 "), reply[:200]
    assert b"application/problem+json" in reply


async def test_a_client_over_the_limit_cannot_hold_its_connection_open(
    limited_catalog: Catalog,
) -> None:
    # 429 is answered before the body is read; aiohttp then waited up to 30 s for the
    # body to drain, so a client over its limit still held a connection per request.
    # limited_catalog: the shipped read deadlines, a burst of 5 sign-ups, one per 10 s.
    statuses = [
        (await limited_catalog.call("POST", "/v1/customers", raw=b"{}", headers=JSON)).status
        for _ in range(6)
    ]
    assert statuses[-1] == 429, statuses
    head = (
        b"POST /v1/customers HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n{"
    )
    reply = await closed_within(limited_catalog, head, 5.0)
    assert reply.startswith(b"HTTP/1.1 429 "), reply[:200]
