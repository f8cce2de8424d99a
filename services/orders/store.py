"""Every SQL query on the orders service's own tables."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

import msgspec

from services.orders.domain import (
    Agreement,
    Fulfillment,
    Line,
    OfferingVersion,
    Order,
    OrderedComponent,
    UsageCharge,
)
from shared import outbox, timers
from shared.contracts.catalog_agreements import AgreementState
from shared.contracts.catalog_offerings import ComponentState, OfferingState
from shared.contracts.fulfillments import FulfillmentStatus
from shared.contracts.orders import OrderStatus
from shared.db import Connection

_encoder = msgspec.json.Encoder()
_catalog_components = msgspec.json.Decoder(tuple[ComponentState, ...])
_ordered_components = msgspec.json.Decoder(tuple[OrderedComponent, ...])
_agreements = msgspec.json.Decoder(list[Agreement])


async def record_offering(conn: Connection, offering: OfferingState) -> None:
    """Keep every version; a version's row follows the latest state the catalog sent of it."""
    await conn.execute(
        "INSERT INTO offering_versions (offering_id, version, owner_id, status, orderable,"
        " currency, components, changed_at) VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8)"
        " ON CONFLICT (offering_id, version) DO UPDATE SET status = EXCLUDED.status,"
        " orderable = EXCLUDED.orderable, changed_at = EXCLUDED.changed_at"
        " WHERE offering_versions.changed_at <= EXCLUDED.changed_at",
        offering.offering_id,
        offering.version,
        offering.owner_id,
        offering.status,
        offering.orderable,
        offering.currency,
        _encoder.encode(offering.components).decode(),
        offering.changed_at,
    )


async def record_agreement(conn: Connection, agreement: AgreementState) -> None:
    # Revoked and expired are final, so a late "created" never revives an agreement.
    await conn.execute(
        "INSERT INTO agreements (agreement_id, grantor_id, grantee_id, status, expires_at)"
        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (agreement_id) DO UPDATE SET"
        " status = EXCLUDED.status, expires_at = EXCLUDED.expires_at"
        " WHERE agreements.status = 'active'",
        agreement.agreement_id,
        agreement.grantor_id,
        agreement.grantee_id,
        agreement.status,
        agreement.expires_at,
    )


async def orderable_terms(
    conn: Connection, offering_ids: Sequence[str]
) -> tuple[dict[str, OfferingVersion], dict[str, Agreement]]:
    """The current version of each offering, and the agreements its components name.

    One query: placing an order reads both on every request.
    """
    rows = await conn.fetch(
        "SELECT DISTINCT ON (v.offering_id) v.offering_id, v.version, v.owner_id, v.status,"
        " v.orderable, v.currency, v.components, (SELECT coalesce(jsonb_agg(jsonb_build_object("
        "'agreement_id', a.agreement_id, 'status', a.status, 'expires_at', a.expires_at)), '[]')"
        " FROM agreements a WHERE a.agreement_id IN (SELECT c ->> 'agreement_id'"
        " FROM jsonb_array_elements(v.components) c)) AS agreements"
        " FROM offering_versions v WHERE v.offering_id = ANY($1::text[])"
        " ORDER BY v.offering_id, v.version DESC",
        list(offering_ids),
    )
    offerings: dict[str, OfferingVersion] = {}
    agreements: dict[str, Agreement] = {}
    for row in rows:
        offerings[row["offering_id"]] = OfferingVersion(
            offering_id=row["offering_id"],
            version=row["version"],
            owner_id=row["owner_id"],
            status=row["status"],
            orderable=row["orderable"],
            currency=row["currency"],
            components=_catalog_components.decode(row["components"]),
        )
        for agreement in _agreements.decode(row["agreements"]):
            agreements[agreement.agreement_id] = agreement
    return offerings, agreements


async def insert_order(
    conn: Connection, order: Order, events: outbox.Batch, *, deadline_kind: str
) -> None:
    """A new order: its row, lines, fulfilments, events and acceptance timer, in one statement.

    One round trip instead of four: each statement is a round trip to
    PostgreSQL, and placing orders spent about half its time waiting on them.
    """
    lines, fulfillments = order.lines, order.fulfillments
    await conn.execute(
        "WITH placed AS (INSERT INTO orders (id, customer_id, status, currency, total,"
        " placed_at, accept_by, changed_at, sequence, version)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 0) RETURNING id),"
        " lines AS (INSERT INTO order_lines (id, order_id, position, offering_id,"
        " offering_version, owner_id, quantity, amount, components)"
        " SELECT l.id, (SELECT id FROM placed), l.position - 1, l.offering_id,"
        " l.offering_version, l.owner_id, l.quantity, l.amount, l.components::jsonb"
        " FROM unnest($10::text[], $11::text[], $12::int[], $13::text[], $14::int[],"
        " $15::bigint[], $16::text[]) WITH ORDINALITY AS l(id, offering_id, offering_version,"
        " owner_id, quantity, amount, components, position)),"
        " requested AS (INSERT INTO fulfillments (id, order_id, partner_id, role, status,"
        " changed_at) SELECT f.id, (SELECT id FROM placed), f.partner_id, f.role, f.status, $8"
        " FROM unnest($17::text[], $18::text[], $19::text[], $20::text[])"
        " AS f(id, partner_id, role, status)),"
        f" events AS ({events.insert(21)}) {timers.schedule_statement(27)}",
        order.order_id,
        order.customer_id,
        order.status,
        order.currency,
        order.total,
        order.placed_at,
        order.accept_by,
        order.changed_at,
        order.sequence,
        [line.line_id for line in lines],
        [line.offering_id for line in lines],
        [line.offering_version for line in lines],
        [line.owner_id for line in lines],
        [line.quantity for line in lines],
        [line.amount for line in lines],
        [_encoder.encode(line.components).decode() for line in lines],
        [f.fulfillment_id for f in fulfillments],
        [f.partner_id for f in fulfillments],
        [f.role for f in fulfillments],
        [f.status for f in fulfillments],
        *events.columns,
        deadline_kind,
        order.order_id,
        order.accept_by,
    )


@dataclass(frozen=True)
class Snapshot:
    """An order as one statement read it, and its row's version then.

    ``save_changes`` writes a change decided from it only while the version
    is still this one: the version is how a writer learns, without having
    held a lock, that someone else changed the order in between.
    """

    order: Order
    version: int


_snapshots = msgspec.json.Decoder(Snapshot)

# The whole order in one round trip, as one JSON document shaped like a
# ``Snapshot`` (only the columns the domain reads, under its names), which
# msgspec decodes straight into the domain's types.  Every change of an order
# reads it, each partner's answer among them.  Read as arrays of the tables'
# row types instead, asyncpg decoded every child record field by field in
# Python and the domain objects were built from those again: about 6.5 µs of
# the service's CPU per usage charge against 0.9 µs as JSON, and about 45 µs
# more per read of an order without usage; PostgreSQL spends about the same
# either way.  Timestamps come in the session's time zone, which the pool pins
# to UTC (``shared.db.create_pool``), so they decode as asyncpg's would.  $1:
# whether to read the usage already charged, which only a cancellation needs
# (to refund it) and which grows with every report.
_WHOLE_ORDER = (
    "SELECT json_build_object('version', o.version, 'order', json_build_object("
    "'order_id', o.id, 'customer_id', o.customer_id, 'status', o.status,"
    " 'currency', o.currency, 'total', o.total, 'placed_at', o.placed_at,"
    " 'accept_by', o.accept_by, 'changed_at', o.changed_at, 'sequence', o.sequence,"
    " 'cancel_reason', o.cancel_reason,"
    " 'lines', ARRAY(SELECT json_build_object('line_id', l.id, 'offering_id', l.offering_id,"
    " 'offering_version', l.offering_version, 'owner_id', l.owner_id,"
    " 'quantity', l.quantity, 'amount', l.amount, 'components', l.components)"
    " FROM order_lines l WHERE l.order_id = o.id ORDER BY l.position),"
    " 'fulfillments', ARRAY(SELECT json_build_object('fulfillment_id', f.id,"
    " 'partner_id', f.partner_id, 'role', f.role, 'status', f.status,"
    " 'changed_at', f.changed_at, 'reason', f.reason)"
    " FROM fulfillments f WHERE f.order_id = o.id ORDER BY f.id),"
    " 'usage_charges', CASE WHEN $1 THEN ARRAY(SELECT json_build_object("
    "'charge_id', u.charge_id, 'amount', u.amount) FROM usage_records u"
    " WHERE u.order_id = o.id ORDER BY u.recorded_at, u.charge_id) ELSE '{}' END))"
    " FROM orders o WHERE "
)


async def order_snapshot(
    conn: Connection, order_id: str, *, with_usage: bool = True
) -> Snapshot | None:
    """The order and its children as of one moment, without a lock.

    One statement sees one snapshot, so the children agree with the order
    row and its version; nothing waits on anyone, and nothing is held.
    """
    row = await conn.fetchrow(_WHOLE_ORDER + "o.id = $2", with_usage, order_id)
    return None if row is None else _snapshots.decode(row[0])


async def fulfillment_order_snapshot(
    conn: Connection, fulfillment_id: str, partner_id: str
) -> Snapshot | None:
    """``order_snapshot`` of a fulfilment's order; None unless the fulfilment is the partner's.

    With the usage charged, though an answer never refunds it: the state an
    answer stores may be where a cancel starts from (``services.orders.turns``).
    """
    row = await conn.fetchrow(
        _WHOLE_ORDER + "o.id = (SELECT f.order_id FROM fulfillments f"
        " WHERE f.id = $2 AND f.partner_id = $3)",
        True,
        fulfillment_id,
        partner_id,
    )
    return None if row is None else _snapshots.decode(row[0])


async def lock_order(conn: Connection, order_id: str, *, with_usage: bool) -> Snapshot | None:
    """``order_snapshot`` with the order's row locked until the transaction ends.

    For a change that must insert rows of its own before it knows its
    outcome (a usage report claims its usage id first): nothing else changes
    the order meanwhile, so its ``save_changes`` cannot lose.  The read is a
    statement of its own: a ``FOR UPDATE`` that waited for another change
    sees that change in the locked row only, while subqueries beside it
    would still read the children as they were before.
    """
    locked = await conn.fetchval("SELECT id FROM orders WHERE id = $1 FOR UPDATE", order_id)
    if locked is None:
        return None
    return await order_snapshot(conn, order_id, with_usage=with_usage)


async def lock_order_row(conn: Connection, order_id: str) -> None:
    """Hold the order's row until the transaction ends; read it afterwards, in a statement
    of its own (see ``lock_order``)."""
    await conn.execute("SELECT 1 FROM orders WHERE id = $1 FOR UPDATE", order_id)


async def order(conn: Connection, order_id: str) -> Order | None:
    found = await orders_by_id(conn, [order_id])
    return found[0] if found else None


async def orders_by_id(
    conn: Connection, order_ids: Sequence[str], *, with_usage: bool = False
) -> list[Order]:
    """Whole orders (lines and fulfilments), in the order of ``order_ids``."""
    ids = list(order_ids)
    order_rows = await conn.fetch("SELECT * FROM orders WHERE id = ANY($1::text[])", ids)
    line_rows = await conn.fetch(
        "SELECT * FROM order_lines WHERE order_id = ANY($1::text[]) ORDER BY order_id, position",
        ids,
    )
    fulfillment_rows = await conn.fetch(
        "SELECT * FROM fulfillments WHERE order_id = ANY($1::text[]) ORDER BY order_id, id", ids
    )
    usage_rows = (
        await conn.fetch(
            "SELECT order_id, charge_id, amount FROM usage_records"
            " WHERE order_id = ANY($1::text[]) ORDER BY recorded_at, charge_id",
            ids,
        )
        if with_usage
        else []
    )
    lines: dict[str, list[Line]] = {}
    for row in line_rows:
        lines.setdefault(row["order_id"], []).append(_line(row))
    fulfillments: dict[str, list[Fulfillment]] = {}
    for row in fulfillment_rows:
        fulfillments.setdefault(row["order_id"], []).append(_fulfillment(row))
    usage: dict[str, list[UsageCharge]] = {}
    for row in usage_rows:
        usage.setdefault(row["order_id"], []).append(UsageCharge(row["charge_id"], row["amount"]))
    by_id = {
        row["id"]: _order(
            row,
            lines.get(row["id"], ()),
            fulfillments.get(row["id"], ()),
            usage.get(row["id"], ()),
        )
        for row in order_rows
    }
    return [by_id[order_id] for order_id in ids if order_id in by_id]


def _order(
    row: Any,
    lines: Sequence[Line],
    fulfillments: Sequence[Fulfillment],
    usage: Sequence[UsageCharge],
) -> Order:
    return Order(
        order_id=row["id"],
        customer_id=row["customer_id"],
        status=row["status"],
        currency=row["currency"],
        total=row["total"],
        lines=tuple(lines),
        fulfillments=tuple(fulfillments),
        placed_at=row["placed_at"],
        accept_by=row["accept_by"],
        changed_at=row["changed_at"],
        sequence=row["sequence"],
        cancel_reason=row["cancel_reason"],
        usage_charges=tuple(usage),
    )


def _line(row: Any) -> Line:
    return Line(
        line_id=row["id"],
        offering_id=row["offering_id"],
        offering_version=row["offering_version"],
        owner_id=row["owner_id"],
        quantity=row["quantity"],
        amount=row["amount"],
        components=_ordered_components.decode(row["components"]),
    )


def _fulfillment(row: Any) -> Fulfillment:
    return Fulfillment(
        fulfillment_id=row["id"],
        partner_id=row["partner_id"],
        role=row["role"],
        status=row["status"],
        changed_at=row["changed_at"],
        reason=row["reason"],
    )


async def save_changes(
    conn: Connection, before: Snapshot, after: Order, events: outbox.Batch
) -> bool:
    """The order's new state, its changed fulfilments and its events, in one statement,
    if the order is still at the version ``before`` was read at; False if it moved on.

    The order's row is updated first, on its id and version, moving the
    version on; the fulfilments and the events follow only if that update
    found the row (``EXISTS (SELECT 1 FROM changed)``).  Every part of a
    ``WITH`` runs once, against the snapshot the statement started with, and
    none sees another's changes except through its ``RETURNING``: reading
    ``changed`` is what ties the rest to the outcome of the check.  The
    condition does not depend on the rows it guards, so PostgreSQL runs it
    once before them (a one-time filter): on a lost race no fulfilment is
    touched and no event recorded, and the order's row is always the first
    row this statement locks.  An update that meets another writer's
    uncommitted change of the row waits for it to end, then checks the
    version again on the row as committed: two changes decided from one
    version never both land.

    Alone on a connection the statement commits by itself; inside a
    transaction (an Idempotency-Key's, the timer loop's) the row stays locked
    until that commits, and a lost race leaves the transaction usable.
    """
    changed = [
        new
        for old, new in zip(before.order.fulfillments, after.fulfillments, strict=True)
        if old != new
    ]
    saved: bool = await conn.fetchval(
        "WITH changed AS (UPDATE orders SET status = $2, changed_at = $3, cancel_reason = $4,"
        " sequence = $5, version = version + 1 WHERE id = $1 AND version = $6 RETURNING id),"
        " answered AS (UPDATE fulfillments f SET status = c.status, reason = c.reason,"
        " changed_at = c.changed_at FROM unnest($7::text[], $8::text[], $9::text[],"
        " $10::timestamptz[]) AS c(id, status, reason, changed_at)"
        " WHERE f.id = c.id AND f.order_id = $1 AND EXISTS (SELECT 1 FROM changed)),"
        f" events AS ({events.insert(11, when='EXISTS (SELECT 1 FROM changed)')})"
        " SELECT EXISTS (SELECT 1 FROM changed)",
        after.order_id,
        after.status,
        after.changed_at,
        after.cancel_reason,
        after.sequence,
        before.version,
        [f.fulfillment_id for f in changed],
        [f.status for f in changed],
        [f.reason for f in changed],
        [f.changed_at for f in changed],
        *events.columns,
    )
    return saved


async def record_usage(
    conn: Connection,
    *,
    reporter_id: str,
    usage_id: str,
    order_id: str,
    charge_id: str,
    amount: int,
    quantity: int,
    occurred_at: datetime,
) -> bool:
    """False when this usage id of this partner was already counted (for any order)."""
    inserted = await conn.fetchval(
        "INSERT INTO usage_records (reporter_id, usage_id, order_id, charge_id, amount,"
        " quantity, occurred_at) VALUES ($1, $2, $3, $4, $5, $6, $7)"
        # No conflict target: a concurrent insert of the same usage may trip the
        # charge_id index first (it derives from the key), which must not be a 500.
        " ON CONFLICT DO NOTHING RETURNING true",
        reporter_id,
        usage_id,
        order_id,
        charge_id,
        amount,
        quantity,
        occurred_at,
    )
    return bool(inserted)


async def usage_order(conn: Connection, reporter_id: str, usage_id: str) -> str | None:
    """The order this partner's usage id was counted for, if it was."""
    found: str | None = await conn.fetchval(
        "SELECT order_id FROM usage_records WHERE reporter_id = $1 AND usage_id = $2",
        reporter_id,
        usage_id,
    )
    return found


# The operator's lists hold every tenant's rows: said so, never by a missing value.
EveryTenant = Literal["every tenant"]
EVERY_TENANT: Final[EveryTenant] = "every tenant"


def _page_query(
    select: str,
    *,
    tenant: tuple[str, str] | EveryTenant,
    filters: Sequence[tuple[str, object | None]],
    order_by: str,
    limit: int,
) -> tuple[str, list[object]]:
    """``select`` for one tenant (``tenant``: its condition and id) narrowed by the filters
    given a value, newest first, ``limit`` rows.

    The tenant is not one of the optional filters: those are left out when
    their value is None, and a tenant left out would list everyone's rows.  It
    is required and always written (``$1``), unless the caller says
    ``EVERY_TENANT``; an id that is not a non-empty string is refused.

    A filter without a value is left out of the text rather than written as
    ``$n IS NULL OR col = $n``: asyncpg prepares every statement, and after
    five executions PostgreSQL may switch to one generic plan that cannot know
    which filters are set, so it cannot use their index.  Each combination is
    its own statement here, and each one's generic plan uses its index.
    """
    conditions: list[str] = []
    args: list[object] = []
    if tenant != EVERY_TENANT:
        condition, tenant_id = tenant
        if not isinstance(tenant_id, str) or not tenant_id:
            raise ValueError(f"a page for one tenant needs its id, not {tenant_id!r}")
        conditions.append(condition.format("$1"))
        args.append(tenant_id)
    for condition, value in filters:
        if value is not None:
            args.append(value)
            conditions.append(condition.format(f"${len(args)}"))
    args.append(limit)
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    return f"{select}{where} ORDER BY {order_by} LIMIT ${len(args)}", args


async def customer_order_ids(
    conn: Connection,
    customer_id: str,
    *,
    status: OrderStatus | None,
    after_id: str | None,
    limit: int,
) -> list[str]:
    """A customer's orders, newest first (``orders_by_customer``)."""
    sql, args = _page_query(
        "SELECT id FROM orders",
        tenant=("customer_id = {}", customer_id),
        filters=[("status = {}", status), ("id < {}", after_id)],
        order_by="id DESC",
        limit=limit,
    )
    return [row["id"] for row in await conn.fetch(sql, *args)]


async def owner_order_ids(
    conn: Connection,
    owner_id: str,
    *,
    status: OrderStatus | None,
    after_id: str | None,
    limit: int,
) -> list[str]:
    """The orders with a line of an offering the partner owns, newest first."""
    # Walked from the owner's index entries: filtering every order newest
    # first for a line of this owner reads the whole table for a small owner.
    # The status is looked up per line, not joined: a generic plan that thinks
    # the owner has many lines would merge-join them with every order there is.
    sql, args = _page_query(
        "SELECT DISTINCT l.order_id AS id FROM order_lines l",
        tenant=("l.owner_id = {}", owner_id),
        filters=[
            ("(SELECT o.status FROM orders o WHERE o.id = l.order_id) = {}", status),
            ("l.order_id < {}", after_id),
        ],
        order_by="l.order_id DESC",
        limit=limit,
    )
    return [row["id"] for row in await conn.fetch(sql, *args)]


async def all_order_ids(
    conn: Connection, *, status: OrderStatus | None, after_id: str | None, limit: int
) -> list[str]:
    """Every order, newest first: the operator's view."""
    sql, args = _page_query(
        "SELECT id FROM orders",
        tenant=EVERY_TENANT,
        filters=[("status = {}", status), ("id < {}", after_id)],
        order_by="id DESC",
        limit=limit,
    )
    return [row["id"] for row in await conn.fetch(sql, *args)]


async def partner_fulfillment_ids(
    conn: Connection,
    partner_id: str,
    *,
    status: FulfillmentStatus | None,
    after_id: str | None,
    limit: int,
) -> list[tuple[str, str]]:
    """(fulfilment id, order id) of one partner's fulfilments, newest first."""
    sql, args = _page_query(
        "SELECT id, order_id FROM fulfillments",
        tenant=("partner_id = {}", partner_id),
        filters=[("status = {}", status), ("id < {}", after_id)],
        order_by="id DESC",
        limit=limit,
    )
    return [(row["id"], row["order_id"]) for row in await conn.fetch(sql, *args)]
