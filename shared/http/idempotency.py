"""``Idempotency-Key`` for POST: the first successful reply, replayed.

The key is claimed by inserting its row in the same transaction that the
handler's effect runs in, and the reply is stored in that transaction before
it commits.  So the effect and its replay record exist together or not at
all: a crash leaves either nothing (the retry runs anew) or both (the retry
gets the stored reply).  A concurrent request with the same key waits on the
row's unique index until the first commits, then replays it.  Failed requests
(4xx, 5xx) roll back with their effect and do not consume the key.

Replies can hold secrets (a newly issued token is shown once), so neither
the key nor the reply is stored as sent: the row is found by a digest of the
key, and the reply is sealed with AES-GCM under a key derived from the
client's Idempotency-Key.  The database alone cannot reveal a stored reply;
only the client that holds the key can have it replayed.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Awaitable, Callable

from aiohttp import web
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from shared.db import Connection, Pool
from shared.http.problems import conflict, invalid

RETENTION_HOURS = 24
MAX_KEY_LENGTH = 255


_NONCE_BYTES = 12


def _key_digest(key: str) -> str:
    return hashlib.sha256(b"idempotency-key:" + key.encode()).hexdigest()


def _sealer(subject: str, key: str) -> AESGCM:
    derived = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=subject.encode(),
        info=b"idempotent-reply",
    ).derive(key.encode())
    return AESGCM(derived)


def _seal(subject: str, key: str, body: bytes) -> bytes:
    nonce = os.urandom(_NONCE_BYTES)
    return nonce + _sealer(subject, key).encrypt(nonce, body, None)


def _open(subject: str, key: str, sealed: bytes) -> bytes:
    nonce, ciphertext = sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:]
    return _sealer(subject, key).decrypt(nonce, ciphertext, None)


class _Refused(Exception):
    def __init__(self, response: web.Response) -> None:
        self.response = response


def fingerprint(method: str, path: str, body: bytes) -> bytes:
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode(), body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.digest()


async def run_once(
    pool: Pool,
    *,
    subject: str,
    key: str,
    fingerprint: bytes,
    respond: Callable[[Connection], Awaitable[web.Response]],
) -> web.Response:
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise invalid("Idempotency-Key", f"must be 1 to {MAX_KEY_LENGTH} printable characters")
    stored_key = _key_digest(key)
    try:
        async with pool.acquire() as conn, conn.transaction():
            # Keys older than the retention window are forgotten, as if swept.
            await conn.execute(
                "DELETE FROM idempotency_keys WHERE principal = $1 AND key = $2"
                " AND created_at < now() - make_interval(hours => $3)",
                subject,
                stored_key,
                RETENTION_HOURS,
            )
            claimed = await conn.fetchval(
                "INSERT INTO idempotency_keys (principal, key, fingerprint) VALUES ($1, $2, $3)"
                " ON CONFLICT DO NOTHING RETURNING true",
                subject,
                stored_key,
                fingerprint,
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
                    _seal(subject, key, body),
                )
                return response
            stored = await conn.fetchrow(
                "SELECT fingerprint, status, content_type, body FROM idempotency_keys"
                " WHERE principal = $1 AND key = $2",
                subject,
                stored_key,
            )
    except _Refused as refused:
        return refused.response
    if stored is None or stored["fingerprint"] != fingerprint:
        raise conflict("this Idempotency-Key was already used with a different request")
    try:
        body = _open(subject, key, stored["body"])
    except InvalidTag:
        raise conflict("this Idempotency-Key was already used with a different request") from None
    replay = web.Response(status=stored["status"], body=body, content_type=stored["content_type"])
    replay.headers["Idempotent-Replayed"] = "true"
    return replay


async def sweep_expired(pool: Pool) -> int:
    deleted: str = await pool.execute(
        "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(hours => $1)",
        RETENTION_HOURS * 2,
    )
    return int(deleted.split()[-1])
