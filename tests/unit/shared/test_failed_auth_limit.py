"""Once an address's bucket of refused tokens is empty, its next token not verified
before is refused without a signature check (the point of the limit)."""

from __future__ import annotations

from typing import Any, cast

import msgspec
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shared.http.api import ANY_ROLE, Api, Call
from shared.http.app import create_app
from shared.http.rate_limit import RateLimit
from shared.settings import Secret
from shared.tokens import Principal, TokenVerifier


class _Pong(msgspec.Struct):
    ok: bool


class _CountingVerifier(TokenVerifier):
    checks = 0

    def _verify_signed(self, token: str) -> tuple[Principal, float]:
        _CountingVerifier.checks += 1
        return super()._verify_signed(token)


async def test_a_limited_address_no_longer_buys_signature_checks() -> None:
    public_pem = (
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    verifier = _CountingVerifier(public_pem, Secret("operator-token-for-this-test"))
    api = Api("review")

    @api.route("GET", "/v1/ping", summary="ping", roles=ANY_ROLE, response=_Pong)
    async def ping(call: Call[Any, Any]) -> _Pong:
        return _Pong(ok=True)

    app = create_app(
        api=api,
        pool=cast(Any, None),
        verifier=verifier,
        readiness=[],
        failed_auth_rate_limit=RateLimit(per_minute=1, burst=3),
    )
    garbage = {"Authorization": "Bearer eyJhbGciOiJFZERTQSJ9.e30.c2lnbmF0dXJl"}
    async with TestClient(TestServer(app)) as client:
        statuses = []
        for _ in range(10):
            async with client.get("/v1/ping", headers=garbage) as reply:
                statuses.append(reply.status)
    assert statuses[:3] == [401, 401, 401], statuses
    assert set(statuses[3:]) == {429}, statuses
    # Three refused tokens fill the bucket; the seven after it are refused unchecked.
    assert _CountingVerifier.checks == 3, f"{_CountingVerifier.checks} signature checks"
    _ = ping
