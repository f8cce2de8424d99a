"""A client's retry carries the same request, not always the same bytes.

The contract: "the same key with the same body returns the original
response; the same key with a different body answers 409".  An HTTP client
that re-serialises its request on retry (another JSON library, another key
order, pretty-printed) sends the same body in other bytes; orders fingerprints
the raw bytes and answers 409, so the customer is told its order conflicts
with itself and does not learn the order it placed.  Stripe compares the
request's parameters, not its bytes.
"""

from __future__ import annotations

import json
import uuid

from tests.integration.catalog.conftest import Catalog
from tests.integration.orders.conftest import Orders, publish_joint_offering


async def test_a_retry_of_the_same_order_in_other_bytes_gets_the_original_reply(
    catalog: Catalog, orders: Orders
) -> None:
    offering = await publish_joint_offering(catalog, orders)
    customer = await catalog.sign_up_customer()
    line = {"offering_id": offering.id, "quantity": 2}
    key = {"Idempotency-Key": str(uuid.uuid4())}

    first = await orders.call(
        "POST", "/v1/orders", token=customer.token, raw=json.dumps({"lines": [line]}).encode(),
        headers=key,
    )  # fmt: skip
    placed = first.expect(201)
    reordered = {"lines": [{"quantity": 2, "offering_id": offering.id}]}
    retry = await orders.call(
        "POST", "/v1/orders", token=customer.token, raw=json.dumps(reordered, indent=2).encode(),
        headers=key,
    )  # fmt: skip
    assert retry.status == 201, retry.body
    assert retry.body["id"] == placed["id"]
