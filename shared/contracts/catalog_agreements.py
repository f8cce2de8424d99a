"""Topic ``catalog.agreements``: co-sell agreements between partners.

Keyed by agreement id, log-compacted, full state in every event.  Agreements
are never deleted: revocation and expiry are states, so history stays.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

from shared.contracts.catalog_accounts import PartnerKind
from shared.contracts.envelope import Event, Topic

AgreementStatus = Literal["active", "revoked", "expired"]


class AgreementState(msgspec.Struct, frozen=True, kw_only=True):
    agreement_id: str
    grantor_id: str
    grantee_id: str
    role: PartnerKind
    share_bps: int
    status: AgreementStatus
    created_at: datetime
    expires_at: datetime | None = None
    ended_at: datetime | None = None


class AgreementCreated(Event, frozen=True, kw_only=True):
    EVENT_TYPE = "catalog.agreement.created"
    agreement: AgreementState


class AgreementRevoked(Event, frozen=True, kw_only=True):
    EVENT_TYPE = "catalog.agreement.revoked"
    agreement: AgreementState


class AgreementExpired(Event, frozen=True, kw_only=True):
    EVENT_TYPE = "catalog.agreement.expired"
    agreement: AgreementState


TOPIC = Topic(
    name="catalog.agreements",
    partitions=6,
    key_description="agreement_id",
    events=(AgreementCreated, AgreementRevoked, AgreementExpired),
    compacted=True,
)
