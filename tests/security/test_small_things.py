"""Item 12: the smaller holes, each as a client meets it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from shared.tokens import ISSUER
from tests.integration.catalog.conftest import Catalog, unique
from tests.support.keys import TokenKeys


async def test_replies_with_a_token_or_personal_data_are_not_stored_by_caches(
    catalog: Catalog,
) -> None:
    body = {"name": unique("customer"), "email": f"{uuid.uuid4().hex}@example.com"}
    created = await catalog.call("POST", "/v1/customers", body=body)
    customer = created.expect(201)
    read = await catalog.call("GET", f"/v1/customers/{customer['id']}", token=customer["token"])
    rotated = await catalog.call(
        "POST", f"/v1/customers/{customer['id']}/rotate-token", token=customer["token"]
    )
    partner = await catalog.call(
        "POST", "/v1/partners", token=catalog.operator_token, body={"name": "P", "kind": "isv"}
    )
    for reply in (created, read, rotated, partner):
        assert reply.status < 300
        assert "no-store" in reply.headers.get("Cache-Control", ""), reply.headers


async def test_no_server_banner_names_a_version(catalog: Catalog) -> None:
    for path in ("/healthz", "/v1/offerings", "/nowhere"):
        reply = await catalog.call("GET", path)
        server = reply.headers.get("Server", "").lower()
        assert "aiohttp" not in server, server
        assert "python" not in server, server


async def test_get_routes_answer_head(catalog: Catalog) -> None:
    partner = await catalog.onboard_partner()
    offering = await catalog.publish_new(partner)
    for path in (f"/v1/offerings/{offering['id']}", "/v1/offerings", f"/v1/partners/{partner.id}"):
        reply = await catalog.call("HEAD", path, token=partner.token)
        assert reply.status == 200, (path, reply.status)
        assert reply.body is None


@pytest.mark.parametrize(
    "name",
    ["evil\u202etxt.exe", "a\u200bb", "\u2066isolated\u2069", "a\x85b", "a\x9bb", "   ", "\t\n",
     "\ufeffbom"],
    ids=["bidi override", "zero width", "bidi isolate", "C1 NEL", "C1 CSI", "spaces", "blank",
         "BOM"],
)  # fmt: skip
async def test_names_refuse_hidden_and_blank_text(catalog: Catalog, name: str) -> None:
    body = {"name": name, "email": f"{uuid.uuid4().hex}@example.com"}
    reply = await catalog.call("POST", "/v1/customers", body=body)
    assert reply.status == 422, reply.body
    assert reply.fields == ["name"]
    partner = await catalog.call(
        "POST", "/v1/partners", token=catalog.operator_token, body={"name": name, "kind": "isv"}
    )
    assert partner.status == 422
    assert partner.fields == ["name"]


@pytest.mark.parametrize("limit", ["1e2", "10.0"])
async def test_a_count_is_written_in_digits(catalog: Catalog, limit: str) -> None:
    customer = await catalog.sign_up_customer()
    reply = await catalog.call(
        "GET", "/v1/offerings", token=customer.token, params={"limit": limit}
    )
    assert reply.status == 422, reply.body
    assert reply.fields == ["query.limit"]


async def test_a_charset_other_than_utf8_is_415(catalog: Catalog) -> None:
    body = f'{{"name":"Zo\u00eb","email":"{uuid.uuid4().hex}@example.com"}}'
    for charset in ("latin-1", "utf-16", "iso-8859-1"):
        reply = await catalog.call(
            "POST",
            "/v1/customers",
            raw=body.encode("latin-1"),
            headers={"Content-Type": f"application/json; charset={charset}"},
        )
        assert reply.status == 415, (charset, reply.body)
    utf8 = await catalog.call(
        "POST",
        "/v1/customers",
        raw=body.encode(),
        headers={"Content-Type": "application/json; charset=UTF-8"},
    )
    assert utf8.status == 201


def forged(keys: TokenKeys, **claims: object) -> str:
    """A token signed with the catalog's real key, holding claims it would never issue."""
    key = serialization.load_pem_private_key(keys.private_pem, password=None)
    now = datetime.now(UTC)
    payload = {
        "iss": ISSUER,
        "sub": "cus_" + "0" * 26,
        "role": "customer",
        "gen": 1,
        "iat": int(now.timestamp()),
        "exp": int((now + timedelta(hours=1)).timestamp()),
        **claims,
    }
    return jwt.encode(payload, key, algorithm="EdDSA")  # type: ignore[arg-type]


async def test_a_signed_token_whose_subject_holds_nul_is_401(
    catalog: Catalog, token_keys: TokenKeys
) -> None:
    token = forged(token_keys, sub="cus_\x00abc")
    for path in ("/v1/offerings", "/v1/customers/cus_" + "0" * 26):
        reply = await catalog.call("GET", path, token=token)
        assert reply.status == 401, (path, reply.body)
