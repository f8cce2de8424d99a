"""The catalog's rules, free of I/O: agreements, offering content and lifecycle.

Everything here is a pure function of its inputs (``now`` included), so each
rule is tested without PostgreSQL or Kafka.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Literal

from shared.contracts.catalog_accounts import PartnerKind
from shared.contracts.catalog_agreements import AgreementStatus
from shared.contracts.catalog_offerings import ComponentState
from shared.contracts.pricing import Pricing
from shared.errors import Conflict, RuleViolated, Violation
from shared.money import is_supported_currency
from shared.tokens import Principal

FULL_SHARE_BPS = 10_000
MAX_COMPONENTS = 20

OfferingStatus = Literal["draft", "published", "retired"]


@dataclass(frozen=True)
class Partner:
    id: str
    name: str
    kind: PartnerKind
    token_generation: int
    registered_at: datetime


@dataclass(frozen=True)
class Agreement:
    id: str
    grantor_id: str
    grantee_id: str
    role: PartnerKind
    share_bps: int
    status: AgreementStatus
    created_at: datetime
    expires_at: datetime | None = None
    ended_at: datetime | None = None

    def in_force(self, now: datetime) -> bool:
        return self.status == "active" and (self.expires_at is None or self.expires_at > now)

    def revoked(self, now: datetime) -> Agreement:
        if self.status != "active":
            raise Conflict(f"agreement {self.id} is already {self.status}")
        return replace(self, status="revoked", ended_at=now)

    def expired(self, now: datetime) -> Agreement:
        if self.status != "active" or self.expires_at is None or self.expires_at > now:
            raise Conflict(f"agreement {self.id} is not due to expire")
        return replace(self, status="expired", ended_at=self.expires_at)


def new_agreement(
    *,
    agreement_id: str,
    grantor: Partner,
    grantee: Partner | None,
    grantee_id: str,
    role: PartnerKind,
    share_bps: int,
    expires_at: datetime | None,
    now: datetime,
) -> Agreement:
    violations: list[Violation] = []
    if expires_at is not None:
        try:
            # Stored and shown in UTC; a date PostgreSQL cannot hold is the caller's error.
            expires_at = expires_at.astimezone(UTC)
            if expires_at.year > 9000:
                raise OverflowError
        except OverflowError:
            raise RuleViolated.single("expires_at", "must be before the year 9000") from None
    if grantee is None:
        violations.append(Violation("grantee_id", f"no partner {grantee_id}"))
    elif grantee.id == grantor.id:
        violations.append(Violation("grantee_id", "a partner cannot grant an agreement to itself"))
    if expires_at is not None and expires_at <= now:
        violations.append(Violation("expires_at", "must be in the future"))
    if violations:
        raise RuleViolated(violations)
    return Agreement(
        id=agreement_id,
        grantor_id=grantor.id,
        grantee_id=grantee_id,
        role=role,
        share_bps=share_bps,
        status="active",
        created_at=now,
        expires_at=expires_at,
    )


@dataclass(frozen=True)
class ComponentDraft:
    """A component as the owner wrote it, before it is checked against agreements."""

    partner_id: str
    role: PartnerKind
    name: str
    pricing: Pricing
    agreement_id: str | None = None


@dataclass(frozen=True)
class OfferingContent:
    name: str
    description: str
    currency: str
    components: tuple[ComponentDraft, ...]


@dataclass(frozen=True)
class ContentChange:
    """A partial edit: the fields left as None keep their current value."""

    name: str | None = None
    description: str | None = None
    currency: str | None = None
    components: tuple[ComponentDraft, ...] | None = None

    def applied_to(self, content: OfferingContent) -> OfferingContent:
        return OfferingContent(
            name=content.name if self.name is None else self.name,
            description=content.description if self.description is None else self.description,
            currency=content.currency if self.currency is None else self.currency,
            components=content.components if self.components is None else self.components,
        )


@dataclass(frozen=True)
class Offering:
    id: str
    owner_id: str
    status: OfferingStatus
    version: int
    content: OfferingContent
    components: tuple[ComponentState, ...]
    orderable: bool
    unorderable_reason: str | None
    created_at: datetime
    changed_at: datetime
    published_at: datetime | None = None

    @property
    def partner_ids(self) -> list[str]:
        return sorted({self.owner_id, *(c.partner_id for c in self.components)})

    @property
    def partner_kinds(self) -> list[str]:
        return sorted({c.partner_kind for c in self.components})

    @property
    def agreement_ids(self) -> list[str]:
        return sorted({c.agreement_id for c in self.components if c.agreement_id})


def check_content(
    owner: Partner,
    content: OfferingContent,
    partners: Mapping[str, Partner],
    agreements: Mapping[str, Agreement],
    now: datetime,
) -> tuple[ComponentState, ...]:
    """Every rule an offering's content must meet to be saved or published.

    Returns the components with what the agreements settle: each partner's
    kind and its share of the net revenue of its part.  Raises
    ``RuleViolated`` naming every failing field at once.
    """
    violations: list[Violation] = []
    if not is_supported_currency(content.currency):
        violations.append(Violation("currency", f"{content.currency} is not a supported currency"))
    if not content.components:
        violations.append(Violation("components", "an offering needs at least one component"))
    components: list[ComponentState] = []
    for index, draft in enumerate(content.components):
        where = f"components[{index}]"
        partner = partners.get(draft.partner_id)
        if partner is None:
            violations.append(Violation(f"{where}.partner_id", f"no partner {draft.partner_id}"))
            continue
        share = _component_share(owner, draft, agreements, now, where, violations)
        if share is None:
            continue
        components.append(
            ComponentState(
                partner_id=partner.id,
                partner_kind=partner.kind,
                role=draft.role,
                name=draft.name,
                pricing=draft.pricing,
                agreement_id=draft.agreement_id,
                share_bps=share,
            )
        )
    if violations:
        raise RuleViolated(violations)
    return tuple(components)


def _component_share(
    owner: Partner,
    draft: ComponentDraft,
    agreements: Mapping[str, Agreement],
    now: datetime,
    where: str,
    violations: list[Violation],
) -> int | None:
    if draft.partner_id == owner.id:
        if draft.agreement_id is not None:
            violations.append(
                Violation(f"{where}.agreement_id", "the owner's own component takes no agreement")
            )
            return None
        return FULL_SHARE_BPS
    field = f"{where}.agreement_id"
    if draft.agreement_id is None:
        violations.append(
            Violation(field, f"a component of partner {draft.partner_id} needs its agreement")
        )
        return None
    agreement = agreements.get(draft.agreement_id)
    if (
        agreement is None
        or agreement.grantor_id != draft.partner_id
        or agreement.grantee_id != owner.id
    ):
        # One answer whether it does not exist or is between others: the owner learns
        # nothing about agreements it is not a party to.
        violations.append(
            Violation(
                field,
                f"no agreement {draft.agreement_id} from partner {draft.partner_id}"
                " to this offering's owner",
            )
        )
        return None
    if not agreement.in_force(now):
        state = "expired" if agreement.status == "active" else agreement.status
        violations.append(Violation(field, f"the agreement is {state}"))
        return None
    if agreement.role != draft.role:
        violations.append(
            Violation(f"{where}.role", f"the agreement covers the role {agreement.role} only")
        )
        return None
    return agreement.share_bps


def sees_co_sell_terms(viewer: Principal, owner_id: str, component_partner_id: str) -> bool:
    """A component's agreement and share are private to the parties and the operator."""
    return viewer.role == "operator" or viewer.subject in (owner_id, component_partner_id)


UNORDERABLE_BY_AGREEMENT = "a co-sell agreement it depends on is no longer in force"


def unorderable_reason_for(viewer: Principal, owner_id: str, reason: str | None) -> str | None:
    """Why an offering cannot be ordered, naming its agreements only to those who see them."""
    if reason is None or not reason.startswith(_AGREEMENT_REASON):
        return reason
    return reason if sees_co_sell_terms(viewer, owner_id, owner_id) else UNORDERABLE_BY_AGREEMENT


_AGREEMENT_REASON = "agreement "


def orderability(
    components: Sequence[ComponentState], agreements: Mapping[str, Agreement], now: datetime
) -> tuple[bool, str | None]:
    """An offering can be ordered while every agreement it depends on is in force."""
    for component in components:
        if component.agreement_id is None:
            continue
        agreement = agreements.get(component.agreement_id)
        if agreement is None or not agreement.in_force(now):
            status = agreement.status if agreement is not None else "missing"
            if agreement is not None and status == "active":
                status = "expired"
            return False, f"{_AGREEMENT_REASON}{component.agreement_id} is {status}"
    return True, None


def draft_offering(
    offering_id: str,
    owner_id: str,
    content: OfferingContent,
    components: tuple[ComponentState, ...],
    now: datetime,
) -> Offering:
    return Offering(
        id=offering_id,
        owner_id=owner_id,
        status="draft",
        version=1,
        content=content,
        components=components,
        orderable=False,
        unorderable_reason="not published",
        created_at=now,
        changed_at=now,
    )


def revise(
    offering: Offering,
    content: OfferingContent,
    components: tuple[ComponentState, ...],
    now: datetime,
) -> Offering:
    """A draft is edited in place; a published offering gets a new, published version."""
    if offering.status == "retired":
        raise Conflict(f"offering {offering.id} is retired and can no longer change")
    if offering.status == "draft":
        return replace(offering, content=content, components=components, changed_at=now)
    return replace(
        offering,
        version=offering.version + 1,
        content=content,
        components=components,
        orderable=True,
        unorderable_reason=None,
        changed_at=now,
        published_at=now,
    )


def publish(offering: Offering, now: datetime) -> Offering:
    if offering.status == "retired":
        raise Conflict(f"offering {offering.id} is retired")
    if offering.status == "published":
        return offering
    return replace(
        offering,
        status="published",
        orderable=True,
        unorderable_reason=None,
        changed_at=now,
        published_at=now,
    )


def retire(offering: Offering, now: datetime) -> Offering:
    if offering.status == "draft":
        raise Conflict(f"offering {offering.id} is a draft: only published offerings retire")
    if offering.status == "retired":
        return offering
    return replace(
        offering,
        status="retired",
        orderable=False,
        unorderable_reason="retired",
        changed_at=now,
    )


def with_orderability(
    offering: Offering, agreements: Mapping[str, Agreement], now: datetime
) -> Offering:
    """The offering after its agreements changed; unchanged if that changes nothing."""
    if offering.status != "published":
        return offering
    orderable, reason = orderability(offering.components, agreements, now)
    if orderable == offering.orderable and reason == offering.unorderable_reason:
        return offering
    return replace(offering, orderable=orderable, unorderable_reason=reason, changed_at=now)


def email_key(email: str) -> str:
    """Emails compare case-insensitively: one account per address."""
    return email.strip().lower()
