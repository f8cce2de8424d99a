"""Signed bearer tokens: issued with the private key, verified locally with the public one."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime, timedelta

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.settings import Secret
from shared.tokens import (
    ISSUER,
    InvalidToken,
    Principal,
    Role,
    TokenIssuer,
    TokenVerifier,
    generate_keypair,
)

PRIVATE_PEM, PUBLIC_PEM = generate_keypair()
OTHER_PRIVATE_PEM, OTHER_PUBLIC_PEM = generate_keypair()
OPERATOR_TOKEN = "operator-token-for-unit-tests"

issuer = TokenIssuer(PRIVATE_PEM, ttl=timedelta(hours=1))
verifier = TokenVerifier(PUBLIC_PEM, Secret(OPERATOR_TOKEN))


@given(
    subject=st.from_regex(r"(prt|cus)_[0-9a-z]{1,26}", fullmatch=True),
    role=st.sampled_from(list[Role](["partner", "customer"])),
    generation=st.integers(0, 2**31 - 1),
)
@settings(max_examples=25)
def test_an_issued_token_verifies_to_its_principal(
    subject: str, role: Role, generation: int
) -> None:
    token = issuer.issue(subject, role, generation)
    assert verifier.verify(token) == Principal(subject, role, generation)


def test_an_expired_token_is_refused() -> None:
    token = issuer.issue("prt_1", "partner", 0, now=datetime.now(UTC) - timedelta(hours=2))
    with pytest.raises(InvalidToken, match="expired"):
        verifier.verify(token)


def test_a_token_signed_with_another_key_is_refused() -> None:
    forged = TokenIssuer(OTHER_PRIVATE_PEM, ttl=timedelta(hours=1)).issue("prt_1", "partner", 0)
    with pytest.raises(InvalidToken, match="not valid"):
        verifier.verify(forged)


def _reencode(part: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=").decode()


def test_a_tampered_token_is_refused() -> None:
    token = issuer.issue("cus_1", "customer", 0)
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["role"] = "partner"
    with pytest.raises(InvalidToken):
        verifier.verify(f"{header}.{_reencode(claims)}.{signature}")
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    with pytest.raises(InvalidToken):
        verifier.verify(f"{header}.{payload}.{flipped}")


def test_an_unsigned_token_is_refused() -> None:
    claims = {"iss": ISSUER, "sub": "prt_1", "role": "partner", "iat": 0, "exp": 2**40}
    unsigned = f"{_reencode({'alg': 'none', 'typ': 'JWT'})}.{_reencode(claims)}."
    with pytest.raises(InvalidToken):
        verifier.verify(unsigned)


@pytest.mark.parametrize(
    "claims",
    [
        {"role": "operator"},  # operators are recognised by the configured token only
        {"role": "admin"},
        {"role": None},
        {"gen": "1"},
        {"iss": "someone-else"},
        {"exp": None},
        {"sub": None},
    ],
)
def test_a_signed_token_with_bad_claims_is_refused(claims: dict[str, object]) -> None:
    now = int(datetime.now(UTC).timestamp())
    base: dict[str, object] = {
        "iss": ISSUER,
        "sub": "prt_1",
        "role": "partner",
        "gen": 0,
        "iat": now,
        "exp": now + 600,
    }
    base.update(claims)
    payload = {k: v for k, v in base.items() if v is not None}
    key = serialization.load_pem_private_key(PRIVATE_PEM, password=None)
    token = jwt.encode(payload, key, algorithm="EdDSA")  # type: ignore[arg-type]
    with pytest.raises(InvalidToken):
        verifier.verify(token)


def test_the_operator_token_is_the_operator() -> None:
    assert verifier.verify(OPERATOR_TOKEN) == Principal("operator", "operator")
    with pytest.raises(InvalidToken):
        verifier.verify(OPERATOR_TOKEN + "x")
    with pytest.raises(InvalidToken):
        verifier.verify("")


def test_only_ed25519_keys_are_accepted() -> None:
    ec_key = generate_private_key(SECP256R1())
    ec_private = ec_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    ec_public = ec_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(ValueError, match="Ed25519"):
        TokenIssuer(ec_private, ttl=timedelta(hours=1))
    with pytest.raises(ValueError, match="Ed25519"):
        TokenVerifier(ec_public, Secret("x"))


def test_a_refusal_never_repeats_the_token() -> None:
    token = issuer.issue("prt_1", "partner", 0, now=datetime.now(UTC) - timedelta(hours=2))
    with pytest.raises(InvalidToken) as caught:
        verifier.verify(token)
    assert token not in str(caught.value)


@pytest.mark.parametrize(
    "claims",
    [{"sub": "cus_\x00abc"}, {"sub": "cus_abc\n"}, {"sub": "x" * 5000}, {"gen": 2**63},
     {"gen": True}, {"gen": -1}, {"gen": 1.5}],
    ids=["NUL in sub", "newline in sub", "huge sub", "huge gen", "boolean gen", "negative gen",
         "fractional gen"],
)  # fmt: skip
def test_claims_the_catalog_never_signs_are_refused(claims: dict[str, object]) -> None:
    key = serialization.load_pem_private_key(PRIVATE_PEM, password=None)
    now = int(datetime.now(UTC).timestamp())
    payload = {"iss": ISSUER, "sub": "cus_abc", "role": "customer", "gen": 1, "iat": now,
               "exp": now + 600, **claims}  # fmt: skip
    token = jwt.encode(payload, key, algorithm="EdDSA")  # type: ignore[arg-type]
    with pytest.raises(InvalidToken, match="not valid"):
        verifier.verify(token)


class _Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC).timestamp()

    def __call__(self) -> float:
        return self.now


def test_a_verified_token_is_not_checked_again_until_it_expires() -> None:
    clock = _Clock()
    cached = TokenVerifier(PUBLIC_PEM, Secret(OPERATOR_TOKEN), clock=clock)
    token = issuer.issue("cus_1", "customer", 3)
    assert cached.verify(token) == Principal("cus_1", "customer", 3)
    checked = 0
    original = jwt.decode

    def counting(*args: object, **kwargs: object) -> object:
        nonlocal checked
        checked += 1
        return original(*args, **kwargs)  # type: ignore[arg-type]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(jwt, "decode", counting)
        assert cached.verify(token) == Principal("cus_1", "customer", 3)
        assert checked == 0, "the signature was checked again"
        clock.now += 3601  # past the hour the issuer gave it
        with pytest.raises(InvalidToken, match="expired"):
            cached.verify(token)
    assert checked == 1


def test_the_cache_holds_a_bounded_number_of_tokens() -> None:
    cached = TokenVerifier(PUBLIC_PEM, Secret(OPERATOR_TOKEN), cache_size=2)
    tokens = [issuer.issue(f"cus_{n}", "customer", 0) for n in range(3)]
    for token in tokens:
        cached.verify(token)
    assert len(cached._verified) == 2
    # The oldest went first; a refused token is never cached.
    assert hashlib.sha256(tokens[0].encode()).digest() not in cached._verified
    with pytest.raises(InvalidToken):
        cached.verify(tokens[1][:-2] + "AA")
    assert len(cached._verified) == 2
