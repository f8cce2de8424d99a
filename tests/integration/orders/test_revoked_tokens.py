"""A rotated token, the way its thief keeps using it: the very next request.

The contract (and the brief of the attack that found this) asks that a token
rotated away be refused at once.  Orders learns of a rotation only from its
projection of ``catalog.accounts``, so for as long as the catalog's relay, the
broker and orders' consumer take (about 0.1-0.2 s on an idle machine; the
whole outage while Kafka or that consumer is down) the superseded token still
places orders.  The existing test of rotation waits 20 s for the refusal;
this one asks for it on the first request after the rotation was answered.
"""

from __future__ import annotations

from tests.integration.catalog.conftest import Catalog
from tests.integration.orders.conftest import Orders, publish_joint_offering


async def test_a_rotated_token_is_refused_by_orders_on_the_next_request(
    catalog: Catalog, orders: Orders
) -> None:
    offering = await publish_joint_offering(catalog, orders)
    customer = await catalog.sign_up_customer()
    line = [{"offering_id": offering.id, "quantity": 1}]
    (await orders.place(customer, line)).expect(201)

    rotated = await catalog.call(
        "POST", f"/v1/customers/{customer.id}/rotate-token", token=customer.token
    )
    rotated.expect(200)
    in_catalog = await catalog.call("GET", f"/v1/customers/{customer.id}", token=customer.token)
    assert in_catalog.status == 401

    leaked = await orders.place(customer, line)
    assert leaked.status == 401, f"orders took the rotated-away token: {leaked.status}"
