"""Item 6: public endpoints are rate-limited per client address."""

from __future__ import annotations

import uuid

import aiohttp

from tests.integration.catalog.conftest import Catalog, unique


def _sign_up_body() -> dict[str, str]:
    return {"name": unique("customer"), "email": f"{uuid.uuid4().hex}@example.com"}


async def test_sign_ups_over_the_limit_answer_429_with_retry_after(
    limited_catalog: Catalog,
) -> None:
    # The limited catalog allows a burst of 5 sign-ups per address, then 6 a minute.
    replies = [
        await limited_catalog.call("POST", "/v1/customers", body=_sign_up_body()) for _ in range(8)
    ]
    statuses = [reply.status for reply in replies]
    assert statuses[:5] == [201] * 5, statuses
    assert 429 in statuses[5:], statuses
    refused = next(reply for reply in replies if reply.status == 429)
    assert refused.headers["Content-Type"].startswith("application/problem+json")
    assert int(refused.headers["Retry-After"]) >= 1

    # Another client address is not held back by this one.
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with (
        aiohttp.ClientSession(connector=connector) as other,
        other.post(limited_catalog.base_url + "/v1/customers", json=_sign_up_body()) as reply,
    ):
        assert reply.status == 201


async def test_refused_tokens_are_limited_per_address_without_holding_back_valid_ones(
    limited_catalog: Catalog,
) -> None:
    # 100 refused tokens at once per address (shared.http.app.DEFAULT_FAILED_AUTH_RATE_LIMIT).
    partner = await limited_catalog.onboard_partner("isv")
    assert (await limited_catalog.call("GET", "/v1/agreements", token=partner.token)).status == 200
    garbage = "eyJhbGciOiJFZERTQSJ9.e30.c2lnbmF0dXJl"
    statuses = []
    refused = None
    for _ in range(110):
        reply = await limited_catalog.call("GET", "/v1/agreements", token=garbage)
        statuses.append(reply.status)
        if reply.status == 429:
            refused = reply
            break
    assert statuses[:100] == [401] * 100, statuses[:100]
    assert statuses[-1] == 429, statuses[-5:]
    assert refused is not None
    assert refused.headers["Content-Type"].startswith("application/problem+json")
    assert int(refused.headers["Retry-After"]) >= 1

    # A token verified before, from the same address, is not held back (that one never
    # seen is refused unchecked meanwhile: tests/unit/shared/test_failed_auth_limit.py).
    assert (await limited_catalog.call("GET", "/v1/agreements", token=partner.token)).status == 200

    # Another address still hears why its token is refused.
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with (
        aiohttp.ClientSession(connector=connector) as other,
        other.get(
            limited_catalog.base_url + "/v1/agreements",
            headers={"Authorization": f"Bearer {garbage}"},
        ) as answer,
    ):
        assert answer.status == 401
