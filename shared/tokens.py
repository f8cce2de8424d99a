"""Signed bearer tokens: issued by the catalog, verified locally by every service.

Tokens are Ed25519-signed JWTs.  Only the catalog holds the private key;
every service holds the public key and verifies without a network call.
``gen`` is the subject's token generation: rotating a token raises the
generation, and a service that knows the current generation (the catalog from
its tables, others from the ``catalog.accounts`` topic) refuses older tokens.

A client sends the same token with every request, and checking an Ed25519
signature cost 6-10 % of an order placement's CPU.  So ``TokenVerifier`` keeps
the principals of the tokens it verified lately (a bounded LRU keyed by the
token's digest, never the token) until each token's own expiry.  What it
caches is only what the signature proves, which cannot change; whether a
rotation superseded the token is asked on every request after this
(``shared.http.api.superseded``), so a rotated token is refused at once,
cached or not.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, cast

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from shared.ids import new_id
from shared.settings import Secret

Role = Literal["operator", "partner", "customer"]
ROLES: frozenset[str] = frozenset({"operator", "partner", "customer"})
ISSUER = "partner-marketplace"
OPERATOR_SUBJECT = "operator"
MAX_GENERATION = 2**31 - 1  # a PostgreSQL integer
_SUBJECT = re.compile(r"[a-z]{2,5}_[0-9a-z]{1,40}")
# Tokens in use at once by one process's callers; the least recently used is dropped.
DEFAULT_CACHE_SIZE = 4096


class InvalidToken(Exception):
    """Why a token was refused; the reason is safe to show, the token never is."""


@dataclass(frozen=True)
class Principal:
    subject: str
    role: Role
    generation: int = 0


class TokenIssuer:
    def __init__(self, private_key_pem: bytes, *, ttl: timedelta) -> None:
        key = serialization.load_pem_private_key(private_key_pem, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError("the token signing key must be an Ed25519 private key")
        self._key = key
        self._ttl = ttl

    def issue(
        self, subject: str, role: Role, generation: int, *, now: datetime | None = None
    ) -> str:
        issued_at = now or datetime.now(UTC)
        claims = {
            "iss": ISSUER,
            "sub": subject,
            "role": role,
            "gen": generation,
            "iat": int(issued_at.timestamp()),
            "exp": int((issued_at + self._ttl).timestamp()),
            "jti": new_id("tok"),
        }
        return jwt.encode(claims, self._key, algorithm="EdDSA")


class TokenVerifier:
    def __init__(
        self,
        public_key_pem: bytes,
        operator_token: Secret,
        *,
        cache_size: int = DEFAULT_CACHE_SIZE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        key = serialization.load_pem_public_key(public_key_pem)
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError("the token public key must be an Ed25519 public key")
        self._key = key
        # Compared by digest in constant time, so the configured token is never
        # held in a form that a timing difference or a stray repr could reveal.
        self._operator_digest = hashlib.sha256(operator_token.reveal().encode()).digest()
        self._cache_size = cache_size
        self._clock = clock
        # token digest -> (principal, expiry as a POSIX timestamp)
        self._verified: OrderedDict[bytes, tuple[Principal, float]] = OrderedDict()

    def verify(
        self, token: str, *, before_signature_check: Callable[[], None] | None = None
    ) -> Principal:
        """``before_signature_check`` runs only when the token's signature must be
        checked (not the operator's, not one verified before): it may refuse by raising."""
        digest = hashlib.sha256(token.encode()).digest()
        if hmac.compare_digest(digest, self._operator_digest):
            return Principal(OPERATOR_SUBJECT, "operator")
        cached = self._verified.get(digest)
        if cached is not None:
            principal, expires_at = cached
            if self._clock() < expires_at:
                self._verified.move_to_end(digest)
                return principal
            del self._verified[digest]  # expired: verified again below, and refused
        if before_signature_check is not None:
            before_signature_check()
        principal, expires_at = self._verify_signed(token)
        self._verified[digest] = (principal, expires_at)
        if len(self._verified) > self._cache_size:
            self._verified.popitem(last=False)
        return principal

    def _verify_signed(self, token: str) -> tuple[Principal, float]:
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=["EdDSA"],
                issuer=ISSUER,
                # Expiry is checked below against ``clock``, the one the cache obeys too.
                options={"require": ["exp", "iat", "sub", "iss"], "verify_exp": False},
            )
        except jwt.PyJWTError:
            raise InvalidToken("the token is not valid") from None
        expires_at = claims["exp"]
        if type(expires_at) is not int:
            raise InvalidToken("the token is not valid")
        if self._clock() >= expires_at:
            raise InvalidToken("the token has expired")
        role = claims.get("role")
        generation = claims.get("gen", 0)
        subject = claims["sub"]
        # Only ever what the catalog signs; anything else (a NUL, a huge number) would
        # fail later, deeper, as a 500 instead of a 401.
        if (
            role not in ("partner", "customer")
            or type(generation) is not int
            or not 0 <= generation <= MAX_GENERATION
            or not isinstance(subject, str)
            or not _SUBJECT.fullmatch(subject)
        ):
            raise InvalidToken("the token is not valid")
        return Principal(subject, cast(Role, role), generation), float(expires_at)


def generate_keypair() -> tuple[bytes, bytes]:
    """A fresh Ed25519 key pair as (private PEM, public PEM)."""
    private = Ed25519PrivateKey.generate()
    private_pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_pem, public_pem
