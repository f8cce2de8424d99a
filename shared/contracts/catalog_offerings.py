"""Topic ``catalog.offerings``: every published, changed or retired offering version.

Keyed by offering id and log-compacted.  Each event carries the offering's
full current state (event-carried state transfer), so any service can rebuild
its own copy of the orderable catalog from this topic alone.  ``version``
grows with every published change; a reader keeps the highest it has seen.
Components carry the co-sell share in force for that version, so settlement
never needs to ask the catalog how to split money.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

from shared.contracts.catalog_accounts import PartnerKind
from shared.contracts.envelope import Event, Topic
from shared.contracts.pricing import Pricing

OfferingStatus = Literal["published", "retired"]


class ComponentState(msgspec.Struct, frozen=True, kw_only=True):
    partner_id: str
    partner_kind: PartnerKind
    role: PartnerKind
    name: str
    pricing: Pricing
    agreement_id: str | None
    share_bps: int


class OfferingState(msgspec.Struct, frozen=True, kw_only=True):
    offering_id: str
    owner_id: str
    version: int
    status: OfferingStatus
    orderable: bool
    name: str
    description: str
    currency: str
    components: list[ComponentState]
    published_at: datetime
    changed_at: datetime
    unorderable_reason: str | None = None


class OfferingPublished(Event, frozen=True, kw_only=True):
    """A version became orderable: the first publish or a change to a published offering."""

    EVENT_TYPE = "catalog.offering.published"
    offering: OfferingState


class OfferingRetired(Event, frozen=True, kw_only=True):
    EVENT_TYPE = "catalog.offering.retired"
    offering: OfferingState


class OfferingOrderabilityChanged(Event, frozen=True, kw_only=True):
    """An agreement the offering depends on was revoked or expired (or it was fixed)."""

    EVENT_TYPE = "catalog.offering.orderability_changed"
    offering: OfferingState


TOPIC = Topic(
    name="catalog.offerings",
    partitions=6,
    key_description="offering_id",
    events=(OfferingPublished, OfferingRetired, OfferingOrderabilityChanged),
    compacted=True,
)
