"""Topic ``catalog.accounts``: partners and customers as they register and rotate tokens.

Keyed by account id and log-compacted: each event carries the account's full
public state, so the latest event per key is all a reader needs.  Tokens are
never on the wire; ``token_generation`` lets every service refuse tokens
issued before the latest rotation.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

from shared.contracts.envelope import Event, Topic

PartnerKind = Literal["isv", "managed_service", "integrator", "reseller"]


class PartnerState(msgspec.Struct, frozen=True, kw_only=True):
    partner_id: str
    name: str
    kind: PartnerKind
    token_generation: int
    registered_at: datetime


class CustomerState(msgspec.Struct, frozen=True, kw_only=True):
    customer_id: str
    name: str
    token_generation: int
    registered_at: datetime


class PartnerRegistered(Event, frozen=True, kw_only=True):
    EVENT_TYPE = "catalog.partner.registered"
    partner: PartnerState


class PartnerTokenRotated(Event, frozen=True, kw_only=True):
    EVENT_TYPE = "catalog.partner.token_rotated"
    partner: PartnerState


class CustomerRegistered(Event, frozen=True, kw_only=True):
    EVENT_TYPE = "catalog.customer.registered"
    customer: CustomerState


class CustomerTokenRotated(Event, frozen=True, kw_only=True):
    EVENT_TYPE = "catalog.customer.token_rotated"
    customer: CustomerState


TOPIC = Topic(
    name="catalog.accounts",
    partitions=6,
    key_description="partner_id or customer_id",
    events=(PartnerRegistered, PartnerTokenRotated, CustomerRegistered, CustomerTokenRotated),
    compacted=True,
)
