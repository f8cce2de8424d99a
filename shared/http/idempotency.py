"""``Idempotency-Key`` for POST: the first successful reply, replayed.

The key is claimed by inserting its row in the same transaction that the
handler's effect runs in, and the reply is stored in that transaction before
it commits.  So the effect and its replay record exist together or not at
all: a crash leaves either nothing (the retry runs anew) or both (the retry
gets the stored reply).  A concurrent request with the same key waits on the
row's unique index until the first commits, then replays it.  Failed requests
(4xx, 5xx) roll back with their effect and do not consume the key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable

from aiohttp import web

from shared.db import Connection, Pool
from shared.http.problems import conflict, invalid

RETENTION_HOURS = 24
MAX_KEY_LENGTH = 255


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
    async with pool.acquire() as conn, conn.transaction():
        # Keys older than the retention window are forgotten, as if swept.
        await conn.execute(
            "DELETE FROM idempotency_keys WHERE principal = $1 AND key = $2"
            " AND created_at < now() - make_interval(hours => $3)",
            subject,
            key,
            RETENTION_HOURS,
        )
        claimed = await conn.fetchval(
            "INSERT INTO idempotency_keys (principal, key, fingerprint) VALUES ($1, $2, $3)"
            " ON CONFLICT DO NOTHING RETURNING true",
            subject,
            key,
            fingerprint,
        )
        if claimed:
            response = await respond(conn)
            await conn.execute(
                "UPDATE idempotency_keys SET status = $3, content_type = $4, body = $5"
                " WHERE principal = $1 AND key = $2",
                subject,
                key,
                response.status,
                response.content_type,
                response.body,
            )
            return response
        stored = await conn.fetchrow(
            "SELECT fingerprint, status, content_type, body FROM idempotency_keys"
            " WHERE principal = $1 AND key = $2",
            subject,
            key,
        )
    if stored is None or stored["fingerprint"] != fingerprint:
        raise conflict("this Idempotency-Key was already used with a different request")
    replay = web.Response(
        status=stored["status"], body=stored["body"], content_type=stored["content_type"]
    )
    replay.headers["Idempotent-Replayed"] = "true"
    return replay


async def sweep_expired(pool: Pool) -> int:
    deleted: str = await pool.execute(
        "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(hours => $1)",
        RETENTION_HOURS * 2,
    )
    return int(deleted.split()[-1])
