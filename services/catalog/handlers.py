"""Catalog use cases: one function per command, each inside the caller's unit of work.

HTTP routes and the agreement-expiry timer (``shared.timers``) both call these;
each takes the transaction's connection, changes state through ``store`` and records the
events about the change in the outbox within that same transaction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from services.catalog import domain, store
from services.catalog.domain import Agreement, ContentChange, Offering, OfferingContent, Partner
from shared import outbox, timers
from shared.contracts import catalog_accounts, catalog_agreements, catalog_offerings
from shared.contracts.catalog_accounts import (
    CustomerRegistered,
    CustomerState,
    CustomerTokenRotated,
    PartnerKind,
    PartnerRegistered,
    PartnerState,
    PartnerTokenRotated,
)
from shared.contracts.catalog_agreements import (
    AgreementCreated,
    AgreementExpired,
    AgreementRevoked,
    AgreementState,
)
from shared.contracts.catalog_offerings import (
    ComponentState,
    OfferingOrderabilityChanged,
    OfferingPublished,
    OfferingRetired,
    OfferingState,
)
from shared.db import Connection
from shared.errors import Conflict, NotAllowed, NotFound
from shared.ids import new_id
from shared.timers import TimerHandler
from shared.token_generations import announce_rotation
from shared.tokens import Principal, TokenIssuer

PRODUCER = "catalog"
# The timer that ends an agreement at its expires_at; keyed by the agreement id.
AGREEMENT_EXPIRY = "catalog.agreement.expiry"


@dataclass(frozen=True)
class Customer:
    id: str
    name: str
    email: str


# Accounts


async def register_partner(
    conn: Connection, issuer: TokenIssuer, *, name: str, kind: PartnerKind, now: datetime
) -> tuple[Partner, str]:
    partner = Partner(id=new_id("ptn"), name=name, kind=kind, token_generation=1, registered_at=now)
    await store.insert_partner(conn, partner)
    await outbox.append(
        conn,
        catalog_accounts.TOPIC,
        PartnerRegistered(partner=_partner_state(partner)),
        key=partner.id,
        producer=PRODUCER,
        sequence=await store.next_event_sequence(conn, "partners", partner.id),
    )
    return partner, issuer.issue(partner.id, "partner", partner.token_generation, now=now)


async def sign_up_customer(
    conn: Connection, issuer: TokenIssuer, *, name: str, email: str, now: datetime
) -> tuple[Customer, str]:
    customer = Customer(id=new_id("cus"), name=name, email=email.strip())
    created = await store.insert_customer(
        conn,
        customer_id=customer.id,
        name=name,
        email=customer.email,
        email_key=domain.email_key(email),
        registered_at=now,
    )
    if not created:
        raise Conflict("an account with this email exists already")
    state = CustomerState(customer_id=customer.id, name=name, token_generation=1, registered_at=now)
    await outbox.append(
        conn,
        catalog_accounts.TOPIC,
        CustomerRegistered(customer=state),
        key=customer.id,
        producer=PRODUCER,
        sequence=await store.next_event_sequence(conn, "customers", customer.id),
    )
    return customer, issuer.issue(customer.id, "customer", 1, now=now)


async def rotate_partner_token(
    conn: Connection, issuer: TokenIssuer, actor: Principal, partner_id: str, now: datetime
) -> str:
    if actor.role != "operator" and actor.subject != partner_id:
        raise NotFound(f"partner {partner_id}")
    partner = await store.raise_partner_token_generation(conn, partner_id)
    if partner is None:
        raise NotFound(f"partner {partner_id}")
    await announce_rotation(conn, partner_id)
    await outbox.append(
        conn,
        catalog_accounts.TOPIC,
        PartnerTokenRotated(partner=_partner_state(partner)),
        key=partner.id,
        producer=PRODUCER,
        sequence=await store.next_event_sequence(conn, "partners", partner.id),
    )
    return issuer.issue(partner.id, "partner", partner.token_generation, now=now)


async def rotate_customer_token(
    conn: Connection, issuer: TokenIssuer, actor: Principal, customer_id: str, now: datetime
) -> str:
    if actor.role != "operator" and actor.subject != customer_id:
        raise NotFound(f"customer {customer_id}")
    row = await store.raise_customer_token_generation(conn, customer_id)
    if row is None:
        raise NotFound(f"customer {customer_id}")
    await announce_rotation(conn, customer_id)
    state = CustomerState(
        customer_id=row["id"],
        name=row["name"],
        token_generation=row["token_generation"],
        registered_at=row["registered_at"],
    )
    await outbox.append(
        conn,
        catalog_accounts.TOPIC,
        CustomerTokenRotated(customer=state),
        key=customer_id,
        producer=PRODUCER,
        sequence=await store.next_event_sequence(conn, "customers", customer_id),
    )
    return issuer.issue(customer_id, "customer", state.token_generation, now=now)


def _partner_state(partner: Partner) -> PartnerState:
    return PartnerState(
        partner_id=partner.id,
        name=partner.name,
        kind=partner.kind,
        token_generation=partner.token_generation,
        registered_at=partner.registered_at,
    )


# Agreements


async def grant_agreement(
    conn: Connection,
    *,
    grantor_id: str,
    grantee_id: str,
    role: PartnerKind,
    share_bps: int,
    expires_at: datetime | None,
    now: datetime,
) -> Agreement:
    grantor = await store.partner(conn, grantor_id)
    if grantor is None:
        raise NotFound(f"partner {grantor_id}")
    agreement = domain.new_agreement(
        agreement_id=new_id("agr"),
        grantor=grantor,
        grantee=await store.partner(conn, grantee_id),
        grantee_id=grantee_id,
        role=role,
        share_bps=share_bps,
        expires_at=expires_at,
        now=now,
    )
    await store.insert_agreement(conn, agreement)
    if agreement.expires_at is not None:
        await timers.schedule(
            conn, kind=AGREEMENT_EXPIRY, key=agreement.id, due_at=agreement.expires_at
        )
    await _publish_agreement(conn, AgreementCreated(agreement=_agreement_state(agreement)))
    return agreement


def can_see_agreement(actor: Principal, agreement: Agreement) -> bool:
    return actor.role == "operator" or actor.subject in (agreement.grantor_id, agreement.grantee_id)


async def visible_agreement(conn: Connection, actor: Principal, agreement_id: str) -> Agreement:
    agreement = await store.agreement(conn, agreement_id)
    if agreement is None or not can_see_agreement(actor, agreement):
        raise NotFound(f"agreement {agreement_id}")
    return agreement


async def revoke_agreement(
    conn: Connection, actor: Principal, agreement_id: str, now: datetime
) -> Agreement:
    seen = await store.agreement(conn, agreement_id)
    if seen is None or not can_see_agreement(actor, seen):
        raise NotFound(f"agreement {agreement_id}")
    if actor.subject != seen.grantor_id:
        raise NotAllowed("only the grantor can revoke an agreement")
    # Timer, offerings, agreement: the order the expiry timer locks them in, so
    # a revocation and an expiry of one agreement wait for each other, never deadlock.
    await timers.cancel(conn, kind=AGREEMENT_EXPIRY, key=agreement_id)
    await store.lock_offerings_naming(conn, [agreement_id])
    agreement = await store.agreement(conn, agreement_id, for_update=True)
    if agreement is None:  # agreements are never deleted; kept for the type checker's sake
        raise NotFound(f"agreement {agreement_id}")
    revoked = agreement.revoked(now)
    await store.update_agreement_status(conn, revoked)
    await _publish_agreement(conn, AgreementRevoked(agreement=_agreement_state(revoked)))
    await _recheck_offerings_depending_on(conn, revoked, now)
    return revoked


async def expire_agreement(conn: Connection, agreement_id: str, now: datetime) -> None:
    """Called by the agreement's expiry timer: ends it, with the cascade, if still in force."""
    await store.lock_offerings_naming(conn, [agreement_id])
    agreement = await store.agreement(conn, agreement_id, for_update=True)
    if agreement is None or agreement.status != "active" or agreement.expires_at is None:
        return  # ended otherwise meanwhile: nothing left to expire
    if agreement.expires_at > now:
        # Found due by a replica whose clock runs ahead of ours: try again when due here.
        await timers.schedule(
            conn, kind=AGREEMENT_EXPIRY, key=agreement_id, due_at=agreement.expires_at
        )
        return
    expired = agreement.expired(now)
    await store.update_agreement_status(conn, expired)
    await _publish_agreement(conn, AgreementExpired(agreement=_agreement_state(expired)))
    await _recheck_offerings_depending_on(conn, expired, now)


def timer_handlers(clock: Callable[[], datetime]) -> dict[str, TimerHandler]:
    """What the catalog's timer loop fires, each reaching the use case above."""

    async def expire(conn: Connection, agreement_id: str) -> None:
        await expire_agreement(conn, agreement_id, clock())

    return {AGREEMENT_EXPIRY: expire}


async def _recheck_offerings_depending_on(
    conn: Connection, changed: Agreement, now: datetime
) -> None:
    """Offerings that depend on an agreement no longer in force stop being orderable."""
    for offering in await store.published_offerings_depending_on(conn, changed.id):
        agreements = await store.agreements(conn, offering.agreement_ids)
        agreements[changed.id] = changed
        updated = domain.with_orderability(offering, agreements, now)
        if updated is offering:
            continue
        await store.save_offering(conn, updated)
        await _publish_offering(
            conn, OfferingOrderabilityChanged(offering=_offering_state(updated))
        )


async def _publish_agreement(
    conn: Connection, event: AgreementCreated | AgreementRevoked | AgreementExpired
) -> None:
    await outbox.append(
        conn,
        catalog_agreements.TOPIC,
        event,
        key=event.agreement.agreement_id,
        producer=PRODUCER,
        sequence=await store.next_event_sequence(conn, "agreements", event.agreement.agreement_id),
    )


def _agreement_state(agreement: Agreement) -> AgreementState:
    return AgreementState(
        agreement_id=agreement.id,
        grantor_id=agreement.grantor_id,
        grantee_id=agreement.grantee_id,
        role=agreement.role,
        share_bps=agreement.share_bps,
        status=agreement.status,
        created_at=agreement.created_at,
        expires_at=agreement.expires_at,
        ended_at=agreement.ended_at,
    )


# Offerings


async def _checked_components(
    conn: Connection, owner_id: str, content: OfferingContent, now: datetime
) -> tuple[ComponentState, ...]:
    partner_ids = {owner_id, *(c.partner_id for c in content.components)}
    partners = await store.partners(conn, partner_ids)
    owner = partners.get(owner_id)
    if owner is None:
        raise NotFound(f"partner {owner_id}")
    agreement_ids = [c.agreement_id for c in content.components if c.agreement_id]
    agreements = await store.agreements(conn, agreement_ids, for_share=True)
    return domain.check_content(owner, content, partners, agreements, now)


async def create_offering(
    conn: Connection, owner_id: str, content: OfferingContent, now: datetime
) -> Offering:
    components = await _checked_components(conn, owner_id, content, now)
    offering = domain.draft_offering(new_id("off"), owner_id, content, components, now)
    await store.save_offering(conn, offering)
    return offering


def can_see_offering(actor: Principal, offering: Offering) -> bool:
    return (
        offering.status != "draft" or actor.role == "operator" or actor.subject == offering.owner_id
    )


async def visible_offering(
    conn: Connection, actor: Principal, offering_id: str, version: int | None = None
) -> Offering:
    found = await store.offering(conn, offering_id)
    if found is None or not can_see_offering(actor, found):
        raise NotFound(f"offering {offering_id}")
    if version is None or version == found.version:
        return found
    historic = await store.offering_version(conn, offering_id, version)
    if historic is None:
        raise NotFound(f"version {version} of offering {offering_id}")
    return historic


async def _owned_offering(conn: Connection, actor: Principal, offering_id: str) -> Offering:
    offering = await store.offering(conn, offering_id, for_update=True)
    if offering is None or not can_see_offering(actor, offering):
        raise NotFound(f"offering {offering_id}")
    if actor.subject != offering.owner_id:
        raise NotAllowed("only the offering's owner can change it")
    return offering


async def change_offering(
    conn: Connection,
    actor: Principal,
    offering_id: str,
    change: ContentChange,
    now: datetime,
) -> Offering:
    offering = await _owned_offering(conn, actor, offering_id)
    content = change.applied_to(offering.content)
    if offering.status == "retired":
        raise Conflict(f"offering {offering_id} is retired and can no longer change")
    components = await _checked_components(conn, offering.owner_id, content, now)
    revised = domain.revise(offering, content, components, now)
    await store.save_offering(conn, revised)
    if revised.status == "published":
        await _publish_offering(conn, OfferingPublished(offering=_offering_state(revised)))
    return revised


async def publish_offering(
    conn: Connection, actor: Principal, offering_id: str, now: datetime
) -> Offering:
    offering = await _owned_offering(conn, actor, offering_id)
    if offering.status == "published":
        return offering
    # Agreements may have ended since the draft was saved: check again.
    await _checked_components(conn, offering.owner_id, offering.content, now)
    published = domain.publish(offering, now)
    await store.save_offering(conn, published)
    await _publish_offering(conn, OfferingPublished(offering=_offering_state(published)))
    return published


async def retire_offering(
    conn: Connection, actor: Principal, offering_id: str, now: datetime
) -> Offering:
    offering = await _owned_offering(conn, actor, offering_id)
    retired = domain.retire(offering, now)
    if retired is offering:
        return offering
    await store.save_offering(conn, retired)
    await _publish_offering(conn, OfferingRetired(offering=_offering_state(retired)))
    return retired


async def _publish_offering(
    conn: Connection,
    event: OfferingPublished | OfferingRetired | OfferingOrderabilityChanged,
) -> None:
    await outbox.append(
        conn,
        catalog_offerings.TOPIC,
        event,
        key=event.offering.offering_id,
        producer=PRODUCER,
    )


def _offering_state(offering: Offering) -> OfferingState:
    if offering.status == "draft" or offering.published_at is None:
        raise ValueError("drafts are never published as events")
    return OfferingState(
        offering_id=offering.id,
        owner_id=offering.owner_id,
        version=offering.version,
        status=offering.status,
        orderable=offering.orderable,
        unorderable_reason=offering.unorderable_reason,
        name=offering.content.name,
        description=offering.content.description,
        currency=offering.content.currency,
        components=list(offering.components),
        published_at=offering.published_at,
        changed_at=offering.changed_at,
    )
