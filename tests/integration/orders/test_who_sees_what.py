"""Who sees which orders: decided by the use cases, whichever door a caller comes in by."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import asyncpg
import pytest
import pytest_asyncio

from services.orders import handlers, store
from shared.db import Connection
from shared.errors import NotAllowed
from shared.tokens import Principal, Role

pytestmark = pytest.mark.asyncio(loop_scope="session")

# order id -> (customer, owner of its one line, partners asked to fulfil it)
ORDERS = {
    "ord_1": ("cus_ann", "prt_owner", ("prt_owner", "prt_isv")),
    "ord_2": ("cus_bob", "prt_owner", ("prt_owner",)),
    "ord_3": ("cus_ann", "prt_other", ("prt_other", "prt_isv")),
}


@pytest_asyncio.fixture(loop_scope="session")
async def conn(migrated_orders_db: str) -> AsyncIterator[Connection]:
    db: asyncpg.Connection[asyncpg.Record] = await asyncpg.connect(migrated_orders_db)
    try:
        for order_id, (customer, owner, partners) in ORDERS.items():
            await db.execute(
                "INSERT INTO orders (id, customer_id, status, currency, total, placed_at,"
                " accept_by, changed_at, sequence)"
                " VALUES ($1, $2, 'pending', 'USD', 1, now(), now(), now(), 1)",
                order_id,
                customer,
            )
            await db.execute(
                "INSERT INTO order_lines (id, order_id, position, offering_id, offering_version,"
                " owner_id, quantity, amount, components) VALUES ($1, $2, 0, 'off_x', 1, $3,"
                " 1, 1, '[]')",
                "lin" + order_id,
                order_id,
                owner,
            )
            for partner in partners:
                await db.execute(
                    "INSERT INTO fulfillments (id, order_id, partner_id, role, status, changed_at)"
                    " VALUES ($1, $2, $3, 'reseller', 'requested', now())",
                    f"ful_{order_id}_{partner}",
                    order_id,
                    partner,
                )
        yield db
    finally:
        await db.close()


async def listed(conn: Connection, caller: Principal, limit: int = 50) -> list[str]:
    page = await handlers.list_orders(conn, caller, status=None, after_id=None, limit=limit)
    return [order.order_id for order in page.orders]


async def test_each_role_lists_exactly_the_orders_it_may_see(conn: Connection) -> None:
    assert await listed(conn, Principal("cus_ann", "customer")) == ["ord_3", "ord_1"]
    assert await listed(conn, Principal("cus_bob", "customer")) == ["ord_2"]
    assert await listed(conn, Principal("prt_owner", "partner")) == ["ord_2", "ord_1"]
    # Asked to fulfil a part, but owning no ordered offering: not the partner's deal to list.
    assert await listed(conn, Principal("prt_isv", "partner")) == []
    assert await listed(conn, Principal("operator", "operator")) == ["ord_3", "ord_2", "ord_1"]
    # The list agrees with the rule for a single order.
    for caller in (Principal("cus_ann", "customer"), Principal("prt_owner", "partner")):
        mine = await listed(conn, caller)
        for order_id in ORDERS:
            order = await handlers.visible_order(conn, Principal("operator", "operator"), order_id)
            assert handlers.may_see(caller, order) is (order_id in mine)


async def test_a_page_says_whether_more_follow(conn: Connection) -> None:
    operator = Principal("operator", "operator")
    first = await handlers.list_orders(conn, operator, status=None, after_id=None, limit=2)
    assert ([o.order_id for o in first.orders], first.more) == (["ord_3", "ord_2"], True)
    rest = await handlers.list_orders(conn, operator, status=None, after_id="ord_2", limit=2)
    assert ([o.order_id for o in rest.orders], rest.more) == (["ord_1"], False)


async def test_a_partner_lists_only_its_own_fulfillments(conn: Connection) -> None:
    page = await handlers.list_fulfillments(
        conn, Principal("prt_isv", "partner"), status=None, after_id=None, limit=50
    )
    assert [(f, o.order_id) for f, o in page.fulfillments] == [
        ("ful_ord_3_prt_isv", "ord_3"),
        ("ful_ord_1_prt_isv", "ord_1"),
    ]
    with pytest.raises(NotAllowed):
        await handlers.list_fulfillments(
            conn, Principal("cus_ann", "customer"), status=None, after_id=None, limit=50
        )


async def test_a_role_no_case_knows_is_refused_not_answered(conn: Connection) -> None:
    # Role is closed (mypy proves the match exhaustive); a token that carried
    # another would be refused rather than fail on an unbound page.
    with pytest.raises(NotAllowed):
        await listed(conn, Principal("aud_1", cast(Role, "auditor")))


@pytest.mark.parametrize(
    "tenant_list",
    [store.customer_order_ids, store.owner_order_ids, store.partner_fulfillment_ids],
)
async def test_a_tenants_list_without_its_tenant_lists_nothing(
    conn: Connection, tenant_list: Callable[..., Awaitable[list[Any]]]
) -> None:
    # A missing tenant id is not "no filter": it would be every tenant's rows.
    for missing in (None, ""):
        with pytest.raises(ValueError, match="tenant"):
            await tenant_list(conn, cast(str, missing), status=None, after_id=None, limit=50)
