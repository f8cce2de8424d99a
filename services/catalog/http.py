"""Catalog routes: decode, call the use case in a unit of work, encode. Nothing else."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from services.catalog import handlers, store
from services.catalog.api import (
    AgreementPage,
    AgreementView,
    BrowseOfferings,
    ComponentInput,
    ComponentView,
    CreateAgreement,
    CreateCustomer,
    CreateOffering,
    CreatePartner,
    CustomerCreated,
    CustomerView,
    ListAgreements,
    OfferingPage,
    OfferingView,
    PartnerCreated,
    PartnerProfile,
    PatchOffering,
    TokenIssued,
)
from services.catalog.domain import (
    Agreement,
    ComponentDraft,
    ContentChange,
    Offering,
    OfferingContent,
    sees_co_sell_terms,
    unorderable_reason_for,
)
from shared.clock import Clock, utc_now
from shared.contracts.catalog_offerings import ComponentState
from shared.errors import NotFound
from shared.http.api import ANY_ROLE, PUBLIC, Api, Call
from shared.http.pagination import cursor_of_type, encode_cursor
from shared.tokens import Principal, Role, TokenIssuer


def _ignore(_: str) -> None:
    return None


@dataclass(frozen=True)
class CatalogHttp:
    issuer: TokenIssuer
    clock: Clock = utc_now
    token_rotated: Callable[[str], None] = _ignore


OPERATOR: frozenset[Role] = frozenset({"operator"})
PARTNER: frozenset[Role] = frozenset({"partner"})
CUSTOMER_OR_OPERATOR: frozenset[Role] = frozenset({"customer", "operator"})
PARTNER_OR_OPERATOR: frozenset[Role] = frozenset({"partner", "operator"})


def build_api(deps: CatalogHttp) -> Api:
    api = Api("Partner marketplace: catalog")
    route = api.route

    @route(
        "POST", "/v1/partners", summary="Onboard a partner", roles=OPERATOR,
        body=CreatePartner, response=PartnerCreated, status=201, tag="partners",
        shows_secret=True,
    )  # fmt: skip
    async def create_partner(call: Call[CreatePartner, None]) -> PartnerCreated:
        async with call.transaction() as conn:
            partner, token = await handlers.register_partner(
                conn, deps.issuer, name=call.body.name, kind=call.body.kind, now=deps.clock()
            )
        return PartnerCreated(id=partner.id, name=partner.name, kind=partner.kind, token=token)

    @route(
        "GET", "/v1/partners/{partner_id}", summary="Read a partner's public profile",
        roles=ANY_ROLE, response=PartnerProfile, tag="partners",
    )  # fmt: skip
    async def get_partner(call: Call[None, None]) -> PartnerProfile:
        partner_id = call.path_id("partner_id", "partner")
        async with call.connection() as conn:
            partner = await store.partner(conn, partner_id)
        if partner is None:
            raise NotFound(f"partner {partner_id}")
        return PartnerProfile(id=partner.id, name=partner.name, kind=partner.kind)

    @route(
        "POST", "/v1/partners/{partner_id}/rotate-token",
        summary="Issue a new partner token; older ones stop working",
        roles=PARTNER_OR_OPERATOR, response=TokenIssued, tag="partners", shows_secret=True,
    )  # fmt: skip
    async def rotate_partner_token(call: Call[None, None]) -> TokenIssued:
        partner_id = call.path_id("partner_id", "partner")
        async with call.transaction() as conn:
            token = await handlers.rotate_partner_token(
                conn, deps.issuer, call.caller, partner_id, deps.clock()
            )
        call.after_commit(lambda: deps.token_rotated(partner_id))
        return TokenIssued(token=token)

    @route(
        "POST", "/v1/customers", summary="Sign up as a customer", roles=PUBLIC,
        body=CreateCustomer, response=CustomerCreated, status=201, tag="customers",
        shows_secret=True,
    )  # fmt: skip
    async def create_customer(call: Call[CreateCustomer, None]) -> CustomerCreated:
        async with call.transaction() as conn:
            customer, token = await handlers.sign_up_customer(
                conn, deps.issuer, name=call.body.name, email=call.body.email, now=deps.clock()
            )
        return CustomerCreated(id=customer.id, name=customer.name, token=token)

    @route(
        "GET", "/v1/customers/{customer_id}", summary="Read a customer account",
        roles=CUSTOMER_OR_OPERATOR, response=CustomerView, tag="customers",
    )  # fmt: skip
    async def get_customer(call: Call[None, None]) -> CustomerView:
        customer_id = call.path_id("customer_id", "customer")
        if call.caller.role != "operator" and call.caller.subject != customer_id:
            raise NotFound(f"customer {customer_id}")
        async with call.connection() as conn:
            row = await store.customer(conn, customer_id)
        if row is None:
            raise NotFound(f"customer {customer_id}")
        return CustomerView(id=row["id"], name=row["name"], email=row["email"])

    @route(
        "POST", "/v1/customers/{customer_id}/rotate-token",
        summary="Issue a new customer token; older ones stop working",
        roles=CUSTOMER_OR_OPERATOR, response=TokenIssued, tag="customers", shows_secret=True,
    )  # fmt: skip
    async def rotate_customer_token(call: Call[None, None]) -> TokenIssued:
        customer_id = call.path_id("customer_id", "customer")
        async with call.transaction() as conn:
            token = await handlers.rotate_customer_token(
                conn, deps.issuer, call.caller, customer_id, deps.clock()
            )
        call.after_commit(lambda: deps.token_rotated(customer_id))
        return TokenIssued(token=token)

    @route(
        "POST", "/v1/agreements", summary="Grant a co-sell agreement", roles=PARTNER,
        body=CreateAgreement, response=AgreementView, status=201, tag="agreements",
    )  # fmt: skip
    async def create_agreement(call: Call[CreateAgreement, None]) -> AgreementView:
        body = call.body
        async with call.transaction() as conn:
            agreement = await handlers.grant_agreement(
                conn,
                grantor_id=call.caller.subject,
                grantee_id=body.grantee_id,
                role=body.role,
                share_bps=body.share_bps,
                expires_at=body.expires_at,
                now=deps.clock(),
            )
        return _agreement_view(agreement)

    @route(
        "GET", "/v1/agreements", summary="List the agreements the partner is party to",
        roles=PARTNER, query=ListAgreements, response=AgreementPage, tag="agreements",
    )  # fmt: skip
    async def list_agreements(call: Call[None, ListAgreements]) -> AgreementPage:
        after = cursor_of_type(call.query.cursor, str)[0] if call.query.cursor else None
        async with call.connection() as conn:
            found = await store.agreements_of_partner(
                conn, call.caller.subject, after_id=after, limit=call.query.limit + 1
            )
        page = found[: call.query.limit]
        more = len(found) > call.query.limit
        return AgreementPage(
            items=[_agreement_view(a) for a in page],
            next_cursor=encode_cursor([page[-1].id]) if more else None,
        )

    @route(
        "GET", "/v1/agreements/{agreement_id}", summary="Read an agreement",
        roles=ANY_ROLE, response=AgreementView, tag="agreements",
    )  # fmt: skip
    async def get_agreement(call: Call[None, None]) -> AgreementView:
        agreement_id = call.path_id("agreement_id", "agreement")
        async with call.connection() as conn:
            agreement = await handlers.visible_agreement(conn, call.caller, agreement_id)
        return _agreement_view(agreement)

    @route(
        "POST", "/v1/agreements/{agreement_id}/revoke", summary="Revoke an agreement",
        roles=PARTNER, response=AgreementView, tag="agreements",
    )  # fmt: skip
    async def revoke_agreement(call: Call[None, None]) -> AgreementView:
        agreement_id = call.path_id("agreement_id", "agreement")
        async with call.transaction() as conn:
            agreement = await handlers.revoke_agreement(
                conn, call.caller, agreement_id, deps.clock()
            )
        return _agreement_view(agreement)

    @route(
        "POST", "/v1/offerings", summary="Create a draft offering", roles=PARTNER,
        body=CreateOffering, response=OfferingView, status=201, tag="offerings",
    )  # fmt: skip
    async def create_offering(call: Call[CreateOffering, None]) -> OfferingView:
        body = call.body
        content = OfferingContent(
            name=body.name,
            description=body.description,
            currency=body.currency,
            components=_drafts(body.components),
        )
        async with call.transaction() as conn:
            offering = await handlers.create_offering(
                conn, call.caller.subject, content, deps.clock()
            )
        return _offering_view(offering, call.caller)

    @route(
        "PATCH", "/v1/offerings/{offering_id}",
        summary="Change a draft, or publish a new version of a published offering",
        roles=PARTNER, body=PatchOffering, response=OfferingView, tag="offerings",
    )  # fmt: skip
    async def patch_offering(call: Call[PatchOffering, None]) -> OfferingView:
        offering_id = call.path_id("offering_id", "offering")
        body = call.body
        change = ContentChange(
            name=_given(body.name),
            description=_given(body.description),
            currency=_given(body.currency),
            components=_drafts(body.components) if isinstance(body.components, list) else None,
        )
        async with call.transaction() as conn:
            offering = await handlers.change_offering(
                conn, call.caller, offering_id, change, deps.clock()
            )
        return _offering_view(offering, call.caller)

    @route(
        "POST", "/v1/offerings/{offering_id}/publish", summary="Make an offering orderable",
        roles=PARTNER, response=OfferingView, tag="offerings",
    )  # fmt: skip
    async def publish_offering(call: Call[None, None]) -> OfferingView:
        offering_id = call.path_id("offering_id", "offering")
        async with call.transaction() as conn:
            offering = await handlers.publish_offering(conn, call.caller, offering_id, deps.clock())
        return _offering_view(offering, call.caller)

    @route(
        "POST", "/v1/offerings/{offering_id}/retire", summary="Stop new orders of an offering",
        roles=PARTNER, response=OfferingView, tag="offerings",
    )  # fmt: skip
    async def retire_offering(call: Call[None, None]) -> OfferingView:
        offering_id = call.path_id("offering_id", "offering")
        async with call.transaction() as conn:
            offering = await handlers.retire_offering(conn, call.caller, offering_id, deps.clock())
        return _offering_view(offering, call.caller)

    @route(
        "GET", "/v1/offerings/{offering_id}", summary="Read an offering's current version",
        roles=ANY_ROLE, response=OfferingView, tag="offerings",
    )  # fmt: skip
    async def get_offering(call: Call[None, None]) -> OfferingView:
        offering_id = call.path_id("offering_id", "offering")
        async with call.connection() as conn:
            offering = await handlers.visible_offering(conn, call.caller, offering_id)
        return _offering_view(offering, call.caller)

    @route(
        "GET", "/v1/offerings/{offering_id}/versions/{version}",
        summary="Read one published version of an offering",
        roles=ANY_ROLE, response=OfferingView, tag="offerings",
    )  # fmt: skip
    async def get_offering_version(call: Call[None, None]) -> OfferingView:
        offering_id = call.path_id("offering_id", "offering")
        raw_version = call.path("version")
        # isdigit() alone admits non-ASCII digits such as "²", which int() refuses.
        if not (raw_version.isascii() and raw_version.isdigit()) or len(raw_version) > 9:
            raise NotFound(f"version {raw_version[:16]} of offering {offering_id}")
        async with call.connection() as conn:
            offering = await handlers.visible_offering(
                conn, call.caller, offering_id, int(raw_version)
            )
        return _offering_view(offering, call.caller)

    @route(
        "GET", "/v1/offerings", summary="Browse and search published offerings",
        roles=ANY_ROLE, query=BrowseOfferings, response=OfferingPage, tag="offerings",
    )  # fmt: skip
    async def browse_offerings(call: Call[None, BrowseOfferings]) -> OfferingPage:
        query = call.query
        after: list[Any] | None = None
        if query.cursor is not None:
            after = (
                cursor_of_type(query.cursor, float, str)
                if query.q is not None
                else cursor_of_type(query.cursor, str)
            )
        async with call.connection() as conn:
            found = await store.browse(
                conn,
                text=query.q,
                partner_id=query.partner_id,
                kind=query.kind,
                after=after,
                limit=query.limit + 1,
            )
        page = found[: query.limit]
        next_cursor = None
        if len(found) > query.limit:
            last, rank = page[-1]
            next_cursor = encode_cursor([rank, last.id] if query.q is not None else [last.id])
        return OfferingPage(
            items=[_offering_view(o, call.caller) for o, _ in page], next_cursor=next_cursor
        )

    return api


def _given(value: str | msgspec.UnsetType) -> str | None:
    return None if isinstance(value, msgspec.UnsetType) else value


def _drafts(components: list[ComponentInput]) -> tuple[ComponentDraft, ...]:
    return tuple(
        ComponentDraft(
            partner_id=c.partner_id,
            role=c.role,
            name=c.name,
            pricing=c.pricing,
            agreement_id=c.agreement_id,
        )
        for c in components
    )


def _agreement_view(agreement: Agreement) -> AgreementView:
    return AgreementView(
        id=agreement.id,
        grantor_id=agreement.grantor_id,
        grantee_id=agreement.grantee_id,
        role=agreement.role,
        share_bps=agreement.share_bps,
        status=agreement.status,
        created_at=agreement.created_at,
        expires_at=agreement.expires_at,
        ended_at=agreement.ended_at,
    )


def _offering_view(offering: Offering, viewer: Principal) -> OfferingView:
    return OfferingView(
        id=offering.id,
        owner_id=offering.owner_id,
        version=offering.version,
        status=offering.status,
        orderable=offering.orderable,
        unorderable_reason=unorderable_reason_for(
            viewer, offering.owner_id, offering.unorderable_reason
        ),
        name=offering.content.name,
        description=offering.content.description,
        currency=offering.content.currency,
        components=[_component_view(c, offering.owner_id, viewer) for c in offering.components],
        created_at=offering.created_at,
        changed_at=offering.changed_at,
        published_at=offering.published_at,
    )


def _component_view(component: ComponentState, owner_id: str, viewer: Principal) -> ComponentView:
    view = ComponentView(
        partner_id=component.partner_id,
        partner_kind=component.partner_kind,
        role=component.role,
        name=component.name,
        pricing=component.pricing,
    )
    if not sees_co_sell_terms(viewer, owner_id, component.partner_id):
        return view
    return msgspec.structs.replace(
        view, agreement_id=component.agreement_id, share_bps=component.share_bps
    )
