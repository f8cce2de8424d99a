"""``Idempotency-Key`` for POST: the first successful reply, replayed.

The key is claimed by inserting its row in the same transaction that the
handler's effect runs in, and the reply is stored in that transaction before
it commits.  So the effect and its replay record exist together or not at
all: a crash leaves either nothing (the retry runs anew) or both (the retry
gets the stored reply).  A concurrent request with the same key waits on the
row's unique index until the first commits, then replays it.  Failed requests
(4xx, 5xx) roll back with their effect and do not consume the key.

Replies can hold secrets (a newly issued token is shown once), so neither
the key nor the reply is stored as sent.  The row is found by an HMAC of the
caller and key under a server-side secret, and the reply is sealed with
AES-GCM under a key derived from both that secret and the client's key: a
database reader can neither look a key up nor open a reply, and the server
alone cannot open one either without the client's key.  Replies that carry a
secret are replayed for ``SECRET_REPLY_MINUTES`` only.

On a public endpoint the key is the only thing that tells one anonymous
caller from another, so it must be unguessable (``require_unguessable``).
Keys never reach a log line.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import os
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import msgspec
from aiohttp import web
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from shared.db import Connection, Pool
from shared.http.problems import conflict, invalid
from shared.settings import Secret

RETENTION_HOURS = 24
SECRET_REPLY_MINUTES = 15
MAX_KEY_LENGTH = 255
HEADER = "Idempotency-Key"

_NONCE_BYTES = 12
_UNGUESSABLE = re.compile(r"^[A-Za-z0-9_-]{32,255}$")
_MIN_DISTINCT = 6
# A random key of 32+ characters repeats no 8 of them (for hex, about 1 in 10 million)
# and does not mostly count up or down by one; a pattern a person typed does either.
_LONGEST_REPEAT = 7


def require_unguessable(key: str) -> None:
    """A key that stands alone (no caller identity) must be a random one.

    At least 32 characters of ``A-Z a-z 0-9 - _`` with at least 6 different
    ones besides ``-``, no run of 8 characters twice, and not mostly counting
    up or down: a UUIDv4 (``uuid.uuid4()``), ``secrets.token_urlsafe(24)`` or
    ``secrets.token_hex(16)`` qualify; ``signup-1``, a run of zeros, ``abcdef``
    six times or the alphabet do not.
    """
    if not unguessable(key):
        raise invalid(
            HEADER,
            "on a public endpoint it must be unguessable: a UUIDv4 or at least 32 random"
            " characters of A-Z a-z 0-9 - _",
        )


def unguessable(key: str) -> bool:
    """Whether ``key`` looks random enough to stand in for a caller's identity."""
    return bool(_UNGUESSABLE.match(key)) and not (
        len(set(key) - {"-"}) < _MIN_DISTINCT or _repeats(key) or _counts(key)
    )


def _repeats(key: str) -> bool:
    size = _LONGEST_REPEAT + 1
    seen: set[str] = set()
    for start in range(len(key) - size + 1):
        if key[start : start + size] in seen:
            return True
        seen.add(key[start : start + size])
    return False


def _counts(key: str) -> bool:
    steps = sum(abs(ord(b) - ord(a)) <= 1 for a, b in itertools.pairwise(key))
    return 3 * steps > 2 * (len(key) - 1)


class KeySecret:
    """The server-side secret under which keys are digested and replies sealed."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the idempotency secret must be at least 16 bytes")
        self._digest_key = hmac.new(secret, b"idempotency-key-digest", hashlib.sha256).digest()
        self._seal_salt_key = hmac.new(secret, b"idempotency-reply-seal", hashlib.sha256).digest()

    @classmethod
    def configured(cls, secret: Secret | None, operator_token: Secret) -> KeySecret:
        """The configured secret, else one derived from the operator token (also secret)."""
        if secret is not None:
            return cls(secret.reveal().encode())
        return cls(
            HKDF(
                algorithm=hashes.SHA256(), length=32, salt=None, info=b"idempotency-key-secret"
            ).derive(operator_token.reveal().encode())
        )

    @classmethod
    def random(cls) -> KeySecret:
        """For a single process (tests): replicas must share one configured secret."""
        return cls(os.urandom(32))

    def digest(self, subject: str, key: str) -> str:
        message = len(subject).to_bytes(4, "big") + subject.encode() + key.encode()
        return hmac.new(self._digest_key, message, hashlib.sha256).hexdigest()

    def _sealer(self, subject: str, key: str) -> AESGCM:
        salt = hmac.new(self._seal_salt_key, subject.encode(), hashlib.sha256).digest()
        derived = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=salt, info=b"idempotent-reply"
        ).derive(key.encode())
        return AESGCM(derived)

    def seal(self, subject: str, key: str, body: bytes) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        return nonce + self._sealer(subject, key).encrypt(nonce, body, None)

    def open(self, subject: str, key: str, sealed: bytes) -> bytes:
        nonce, ciphertext = sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:]
        return self._sealer(subject, key).decrypt(nonce, ciphertext, None)


class _Refused(Exception):
    def __init__(self, response: web.Response) -> None:
        self.response = response


def fingerprint(method: str, path: str, body: bytes) -> bytes:
    """What the request asked, so that its retry in other bytes is still the same request.

    A client that re-serialises on retry (another JSON library, key order,
    whitespace) sends the same body in other bytes; like Stripe, which compares
    parameters, a JSON body is compared by its content (keys sorted), and any
    other body (a CSV statement) by its bytes.
    """
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode(), _canonical(body)):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.digest()


def _canonical(body: bytes) -> bytes:
    try:
        content = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return b"raw:" + body
    return b"json:" + msgspec.json.encode(content, order="sorted")


def check_shape(key: str) -> None:
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise invalid(HEADER, f"must be 1 to {MAX_KEY_LENGTH} printable characters")


@dataclass(frozen=True)
class KeyedRequest:
    """A POST under an Idempotency-Key: who sent it, the key, and what exactly was asked."""

    subject: str
    key: str
    fingerprint: bytes
    shows_secret: bool  # its reply carries a token, so it is replayed only briefly


async def run_once(
    pool: Pool,
    secret: KeySecret,
    request: KeyedRequest,
    respond: Callable[[Connection], Awaitable[web.Response]],
) -> tuple[web.Response, bool]:
    """The reply, and whether it is fresh (False: a replay of the stored one)."""
    subject, key, fingerprint = request.subject, request.key, request.fingerprint
    check_shape(key)
    stored_key = secret.digest(subject, key)
    try:
        async with pool.acquire() as conn, conn.transaction():
            # A key older than the retention window is forgotten, as if swept: it is
            # claimed anew, in the same statement (one round trip) as a new key is.  A
            # key a concurrent request holds makes this wait for that one's outcome.
            claimed = await conn.fetchval(
                "INSERT INTO idempotency_keys (principal, key, fingerprint) VALUES ($1, $2, $3)"
                " ON CONFLICT (principal, key) DO UPDATE SET fingerprint = EXCLUDED.fingerprint,"
                " status = NULL, content_type = NULL, body = NULL, created_at = now()"
                " WHERE idempotency_keys.created_at < now() - make_interval(hours => $4)"
                " RETURNING true",
                subject,
                stored_key,
                fingerprint,
                RETENTION_HOURS,
            )
            if claimed:
                response = await respond(conn)
                if response.status >= 400:
                    # A refusal returned rather than raised: undo it all, as for a raised one.
                    raise _Refused(response)
                body = response.body if isinstance(response.body, bytes) else b""
                await conn.execute(
                    "UPDATE idempotency_keys SET status = $3, content_type = $4, body = $5"
                    " WHERE principal = $1 AND key = $2",
                    subject,
                    stored_key,
                    response.status,
                    response.content_type,
                    secret.seal(subject, key, body),
                )
                return response, True
    except _Refused as refused:
        return refused.response, False
    replay = await replay_stored(pool, secret, request)
    if replay is None:
        raise conflict("this Idempotency-Key was already used with a different request")
    return replay, False


async def replay_stored(
    pool: Pool, secret: KeySecret, request: KeyedRequest
) -> web.Response | None:
    """The stored reply to this very request, if one is kept; None if there is none."""
    subject, key = request.subject, request.key
    stored_key = secret.digest(subject, key)
    async with pool.acquire() as conn:
        stored = await conn.fetchrow(
            "SELECT fingerprint, status, content_type, body,"
            " created_at > now() - make_interval(mins => $3) AS recent"
            " FROM idempotency_keys WHERE principal = $1 AND key = $2"
            " AND created_at >= now() - make_interval(hours => $4)",
            subject,
            stored_key,
            SECRET_REPLY_MINUTES,
            RETENTION_HOURS,
        )
        if stored is None or stored["fingerprint"] != request.fingerprint:
            return None
        if stored["body"] is None or (request.shows_secret and not stored["recent"]):
            # The request was carried out; the secret it returned is no longer kept.
            await conn.execute(
                "UPDATE idempotency_keys SET body = NULL WHERE principal = $1 AND key = $2",
                subject,
                stored_key,
            )
            raise conflict(
                "this Idempotency-Key's request was carried out, and its reply held a secret"
                f" that is replayed for {SECRET_REPLY_MINUTES} minutes only"
            )
    try:
        body = secret.open(subject, key, stored["body"])
    except InvalidTag:
        return None
    replay = web.Response(status=stored["status"], body=body, content_type=stored["content_type"])
    replay.headers["Idempotent-Replayed"] = "true"
    return replay


async def sweep_expired(pool: Pool) -> int:
    deleted: str = await pool.execute(
        "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(hours => $1)",
        RETENTION_HOURS * 2,
    )
    return int(deleted.split()[-1])
