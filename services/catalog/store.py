"""The catalog's own tables: every query the service runs lives here."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, Literal

import asyncpg
import msgspec

from services.catalog.domain import (
    Agreement,
    ComponentDraft,
    Offering,
    OfferingContent,
    Partner,
)
from shared.contracts.catalog_offerings import ComponentState
from shared.db import Connection

_components_decoder = msgspec.json.Decoder(list[ComponentState])
_encoder = msgspec.json.Encoder()


# Accounts


def _partner(row: asyncpg.Record) -> Partner:
    return Partner(
        id=row["id"],
        name=row["name"],
        kind=row["kind"],
        token_generation=row["token_generation"],
        registered_at=row["registered_at"],
    )


async def insert_partner(conn: Connection, partner: Partner) -> None:
    await conn.execute(
        "INSERT INTO partners (id, name, kind, token_generation, registered_at)"
        " VALUES ($1, $2, $3, $4, $5)",
        partner.id,
        partner.name,
        partner.kind,
        partner.token_generation,
        partner.registered_at,
    )


async def partner(conn: Connection, partner_id: str, *, for_update: bool = False) -> Partner | None:
    lock = " FOR UPDATE" if for_update else ""
    row = await conn.fetchrow(
        "SELECT id, name, kind, token_generation, registered_at FROM partners WHERE id = $1" + lock,
        partner_id,
    )
    return _partner(row) if row else None


async def partners(conn: Connection, ids: Iterable[str]) -> dict[str, Partner]:
    rows = await conn.fetch(
        "SELECT id, name, kind, token_generation, registered_at FROM partners WHERE id = ANY($1)",
        list(set(ids)),
    )
    return {row["id"]: _partner(row) for row in rows}


async def raise_partner_token_generation(conn: Connection, partner_id: str) -> Partner | None:
    row = await conn.fetchrow(
        "UPDATE partners SET token_generation = token_generation + 1 WHERE id = $1"
        " RETURNING id, name, kind, token_generation, registered_at",
        partner_id,
    )
    return _partner(row) if row else None


async def insert_customer(
    conn: Connection,
    *,
    customer_id: str,
    name: str,
    email: str,
    email_key: str,
    registered_at: datetime,
) -> bool:
    """False if an account with this email exists already."""
    inserted = await conn.fetchval(
        "INSERT INTO customers (id, name, email, email_key, registered_at)"
        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (email_key) DO NOTHING RETURNING true",
        customer_id,
        name,
        email,
        email_key,
        registered_at,
    )
    return bool(inserted)


async def customer(conn: Connection, customer_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT id, name, email, token_generation, registered_at FROM customers WHERE id = $1",
        customer_id,
    )


async def raise_customer_token_generation(
    conn: Connection, customer_id: str
) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "UPDATE customers SET token_generation = token_generation + 1 WHERE id = $1"
        " RETURNING id, name, email, token_generation, registered_at",
        customer_id,
    )


async def token_generation(conn: Connection, role: str, subject: str) -> int | None:
    table = "partners" if role == "partner" else "customers"
    generation: int | None = await conn.fetchval(
        f"SELECT token_generation FROM {table} WHERE id = $1", subject
    )
    return generation


async def next_event_sequence(
    conn: Connection, table: Literal["partners", "customers", "agreements"], entity_id: str
) -> int:
    """The sequence number of the entity's next event (1, 2, 3 ...); call with its row locked
    or just inserted, in the transaction that records the event."""
    sequence: int = await conn.fetchval(
        f"UPDATE {table} SET event_sequence = event_sequence + 1 WHERE id = $1"
        " RETURNING event_sequence",
        entity_id,
    )
    return sequence


# Agreements

_AGREEMENT_COLUMNS = (
    "id, grantor_id, grantee_id, role, share_bps, status, created_at, expires_at, ended_at"
)


def _agreement(row: asyncpg.Record) -> Agreement:
    return Agreement(**dict(row))


async def insert_agreement(conn: Connection, agreement: Agreement) -> None:
    await conn.execute(
        f"INSERT INTO agreements ({_AGREEMENT_COLUMNS})"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        agreement.id,
        agreement.grantor_id,
        agreement.grantee_id,
        agreement.role,
        agreement.share_bps,
        agreement.status,
        agreement.created_at,
        agreement.expires_at,
        agreement.ended_at,
    )


async def update_agreement_status(conn: Connection, agreement: Agreement) -> None:
    await conn.execute(
        "UPDATE agreements SET status = $2, ended_at = $3 WHERE id = $1",
        agreement.id,
        agreement.status,
        agreement.ended_at,
    )


async def agreement(
    conn: Connection, agreement_id: str, *, for_update: bool = False
) -> Agreement | None:
    lock = " FOR UPDATE" if for_update else ""
    row = await conn.fetchrow(
        f"SELECT {_AGREEMENT_COLUMNS} FROM agreements WHERE id = $1{lock}", agreement_id
    )
    return _agreement(row) if row else None


async def agreements(
    conn: Connection, ids: Iterable[str], *, for_share: bool = False
) -> dict[str, Agreement]:
    lock = " ORDER BY id FOR SHARE" if for_share else ""
    rows = await conn.fetch(
        f"SELECT {_AGREEMENT_COLUMNS} FROM agreements WHERE id = ANY($1){lock}", list(set(ids))
    )
    return {row["id"]: _agreement(row) for row in rows}


async def agreements_of_partner(
    conn: Connection, partner_id: str, *, after_id: str | None, limit: int
) -> list[Agreement]:
    rows = await conn.fetch(
        f"SELECT {_AGREEMENT_COLUMNS} FROM agreements"
        " WHERE (grantor_id = $1 OR grantee_id = $1) AND ($2::text IS NULL OR id < $2)"
        " ORDER BY id DESC LIMIT $3",
        partner_id,
        after_id,
        limit,
    )
    return [_agreement(row) for row in rows]


async def lock_offerings_naming(conn: Connection, agreement_ids: list[str]) -> None:
    """Lock every offering naming one of the agreements, drafts included.

    Whoever changes both takes the offerings first and the agreements second
    (publishing locks its offering, then shares its agreements), so a
    revocation and a publish wait for each other instead of deadlocking.
    """
    await conn.execute(
        "SELECT id FROM offerings WHERE agreement_ids && $1::text[] ORDER BY id FOR UPDATE",
        agreement_ids,
    )


# Offerings

_OFFERING_COLUMNS = (
    "id, owner_id, status, version, name, description, currency, components, orderable,"
    " unorderable_reason, created_at, changed_at, published_at"
)


def _offering(row: asyncpg.Record) -> Offering:
    components = tuple(_components_decoder.decode(row["components"]))
    return Offering(
        id=row["id"],
        owner_id=row["owner_id"],
        status=row["status"],
        version=row["version"],
        content=OfferingContent(
            name=row["name"],
            description=row["description"],
            currency=row["currency"],
            components=tuple(
                ComponentDraft(c.partner_id, c.role, c.name, c.pricing, c.agreement_id)
                for c in components
            ),
        ),
        components=components,
        orderable=row["orderable"],
        unorderable_reason=row["unorderable_reason"],
        created_at=row["created_at"],
        changed_at=row["changed_at"],
        published_at=row["published_at"],
    )


def _offering_values(offering: Offering) -> tuple[Any, ...]:
    return (
        offering.id,
        offering.owner_id,
        offering.status,
        offering.version,
        offering.content.name,
        offering.content.description,
        offering.content.currency,
        _encoder.encode(list(offering.components)).decode(),
        offering.orderable,
        offering.unorderable_reason,
        offering.created_at,
        offering.changed_at,
        offering.published_at,
        offering.partner_ids,
        offering.partner_kinds,
        offering.agreement_ids,
    )


async def save_offering(conn: Connection, offering: Offering) -> None:
    await conn.execute(
        f"INSERT INTO offerings ({_OFFERING_COLUMNS}, partner_ids, partner_kinds, agreement_ids)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9, $10, $11, $12, $13, $14, $15, $16)"
        " ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status, version = EXCLUDED.version,"
        " name = EXCLUDED.name, description = EXCLUDED.description,"
        " currency = EXCLUDED.currency, components = EXCLUDED.components,"
        " orderable = EXCLUDED.orderable, unorderable_reason = EXCLUDED.unorderable_reason,"
        " changed_at = EXCLUDED.changed_at, published_at = EXCLUDED.published_at,"
        " partner_ids = EXCLUDED.partner_ids, partner_kinds = EXCLUDED.partner_kinds,"
        " agreement_ids = EXCLUDED.agreement_ids",
        *_offering_values(offering),
    )
    if offering.status == "published":
        # A published version is immutable: the first write of it is the one kept.
        await conn.execute(
            "INSERT INTO offering_versions"
            " (offering_id, version, name, description, currency, components, published_at)"
            " VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7) ON CONFLICT DO NOTHING",
            offering.id,
            offering.version,
            offering.content.name,
            offering.content.description,
            offering.content.currency,
            _encoder.encode(list(offering.components)).decode(),
            offering.published_at,
        )


async def offering(
    conn: Connection, offering_id: str, *, for_update: bool = False
) -> Offering | None:
    lock = " FOR UPDATE" if for_update else ""
    row = await conn.fetchrow(
        f"SELECT {_OFFERING_COLUMNS} FROM offerings WHERE id = $1{lock}", offering_id
    )
    return _offering(row) if row else None


async def offering_version(conn: Connection, offering_id: str, version: int) -> Offering | None:
    row = await conn.fetchrow(
        "SELECT o.id, o.owner_id, o.status, v.version, v.name, v.description, v.currency,"
        " v.components, o.orderable, o.unorderable_reason, o.created_at,"
        " v.published_at AS changed_at, v.published_at"
        " FROM offering_versions v JOIN offerings o ON o.id = v.offering_id"
        " WHERE v.offering_id = $1 AND v.version = $2",
        offering_id,
        version,
    )
    return _offering(row) if row else None


async def published_offerings_depending_on(conn: Connection, agreement_id: str) -> list[Offering]:
    rows = await conn.fetch(
        f"SELECT {_OFFERING_COLUMNS} FROM offerings"
        " WHERE agreement_ids @> ARRAY[$1]::text[] AND status = 'published'"
        " ORDER BY id FOR UPDATE",
        agreement_id,
    )
    return [_offering(row) for row in rows]


async def browse(
    conn: Connection,
    *,
    text: str | None,
    partner_id: str | None,
    kind: str | None,
    after: Sequence[Any] | None,
    limit: int,
) -> list[tuple[Offering, float]]:
    """Published offerings, best match first for a text search, else newest first.

    Keyset pagination over (rank, id) or (id): the position is a value, not
    an offset, so offerings published while a client pages never make it see
    an item twice or skip one that existed when it started.
    """
    conditions = ["status = 'published'"]
    args: list[Any] = []

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    if partner_id is not None:
        conditions.append(f"partner_ids @> ARRAY[{arg(partner_id)}]::text[]")
    if kind is not None:
        conditions.append(f"partner_kinds @> ARRAY[{arg(kind)}]::text[]")
    if text is not None:
        query = f"websearch_to_tsquery('english', {arg(text)})"
        rank = f"ts_rank(search, {query})::float8"
        conditions.append(f"search @@ {query}")
        if after is not None:
            conditions.append(f"({rank}, id) < ({arg(after[0])}::float8, {arg(after[1])})")
        order = f"{rank} DESC, id DESC"
    else:
        rank = "0::float8"
        if after is not None:
            conditions.append(f"id < {arg(after[0])}")
        order = "id DESC"
    rows = await conn.fetch(
        f"SELECT {_OFFERING_COLUMNS}, {rank} AS rank FROM offerings"
        f" WHERE {' AND '.join(conditions)} ORDER BY {order} LIMIT {arg(limit)}",
        *args,
    )
    return [(_offering(row), row["rank"]) for row in rows]


async def published_offering_ids(conn: Connection) -> list[str]:
    rows = await conn.fetch("SELECT id FROM offerings WHERE status = 'published' ORDER BY id")
    return [row["id"] for row in rows]
