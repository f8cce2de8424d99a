"""Every topic the marketplace uses, so infrastructure can create them all."""

from __future__ import annotations

from shared.contracts import (
    catalog_accounts,
    catalog_agreements,
    catalog_offerings,
    fulfillments,
    orders,
    payouts,
)
from shared.contracts.envelope import Topic

ALL_TOPICS: tuple[Topic, ...] = (
    catalog_accounts.TOPIC,
    catalog_agreements.TOPIC,
    catalog_offerings.TOPIC,
    orders.TOPIC,
    fulfillments.TOPIC,
    payouts.TOPIC,
)
