"""The catalog's request and response bodies, as the public contract names them."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec

from shared.contracts.catalog_accounts import PartnerKind
from shared.contracts.catalog_agreements import AgreementStatus
from shared.contracts.pricing import Pricing
from shared.http.fields import (
    AwareDatetime,
    Cursor,
    Description,
    Email,
    Limit,
    Name,
    ResourceId,
    SearchText,
)
from shared.money import CurrencyCode

ShareBps = Annotated[int, msgspec.Meta(ge=0, le=10_000)]


class _Request(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pass


class CreatePartner(_Request, frozen=True, forbid_unknown_fields=True):
    name: Name
    kind: PartnerKind


class PartnerCreated(msgspec.Struct, frozen=True):
    id: str
    name: str
    kind: PartnerKind
    token: str


class PartnerProfile(msgspec.Struct, frozen=True):
    id: str
    name: str
    kind: PartnerKind


class CreateCustomer(_Request, frozen=True, forbid_unknown_fields=True):
    name: Name
    email: Email


class CustomerCreated(msgspec.Struct, frozen=True):
    id: str
    name: str
    token: str


class CustomerView(msgspec.Struct, frozen=True):
    id: str
    name: str
    email: str


class TokenIssued(msgspec.Struct, frozen=True):
    token: str


class CreateAgreement(_Request, frozen=True, forbid_unknown_fields=True):
    grantee_id: ResourceId
    role: PartnerKind
    share_bps: ShareBps
    expires_at: AwareDatetime | None = None


class AgreementView(msgspec.Struct, frozen=True):
    id: str
    grantor_id: str
    grantee_id: str
    role: PartnerKind
    share_bps: int
    status: AgreementStatus
    created_at: datetime
    expires_at: datetime | None
    ended_at: datetime | None


class AgreementPage(msgspec.Struct, frozen=True):
    items: list[AgreementView]
    next_cursor: str | None


class ComponentInput(_Request, frozen=True, forbid_unknown_fields=True):
    partner_id: ResourceId
    role: PartnerKind
    name: Name
    pricing: Pricing
    agreement_id: ResourceId | None = None


Components = Annotated[list[ComponentInput], msgspec.Meta(min_length=1, max_length=20)]


class CreateOffering(_Request, frozen=True, forbid_unknown_fields=True):
    name: Name
    currency: CurrencyCode
    components: Components
    description: Description = ""


class PatchOffering(_Request, frozen=True, forbid_unknown_fields=True):
    """Only the fields given change; the rest is kept."""

    name: Name | msgspec.UnsetType = msgspec.UNSET
    description: Description | msgspec.UnsetType = msgspec.UNSET
    currency: CurrencyCode | msgspec.UnsetType = msgspec.UNSET
    components: Components | msgspec.UnsetType = msgspec.UNSET


class ComponentView(msgspec.Struct, frozen=True):
    """A priced component; its co-sell terms only for the parties to them."""

    partner_id: str
    partner_kind: PartnerKind
    role: PartnerKind
    name: str
    pricing: Pricing
    # Left out (not null) for a caller who is not a party to this component's terms.
    agreement_id: str | msgspec.UnsetType | None = msgspec.UNSET
    share_bps: int | msgspec.UnsetType = msgspec.UNSET


class OfferingView(msgspec.Struct, frozen=True):
    id: str
    owner_id: str
    version: int
    status: str
    orderable: bool
    unorderable_reason: str | None
    name: str
    description: str
    currency: str
    components: list[ComponentView]
    created_at: datetime
    changed_at: datetime
    published_at: datetime | None


class OfferingPage(msgspec.Struct, frozen=True):
    items: list[OfferingView]
    next_cursor: str | None


class BrowseOfferings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    q: SearchText | None = None
    partner_id: ResourceId | None = None
    kind: PartnerKind | None = None
    limit: Limit = 50
    cursor: Cursor | None = None


class ListAgreements(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    limit: Limit = 50
    cursor: Cursor | None = None
