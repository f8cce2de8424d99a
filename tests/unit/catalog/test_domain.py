"""The catalog's pure rules: offering content, orderability, lifecycle and agreements."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.catalog.domain import (
    FULL_SHARE_BPS,
    Agreement,
    ComponentDraft,
    ContentChange,
    Offering,
    OfferingContent,
    Partner,
    check_content,
    draft_offering,
    email_key,
    new_agreement,
    orderability,
    publish,
    retire,
    revise,
    with_orderability,
)
from shared.contracts.catalog_accounts import PartnerKind
from shared.contracts.catalog_agreements import AgreementStatus
from shared.contracts.catalog_offerings import ComponentState
from shared.contracts.pricing import OneTimePricing, Pricing, SubscriptionPricing, UsagePricing
from shared.errors import Conflict, RuleViolated
from shared.money import CURRENCY_EXPONENTS

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(hours=1)

OWNER = Partner("ptn_owner", "Owner Soft", "isv", 1, NOW)
MSP = Partner("ptn_msp", "Managed Ops", "managed_service", 1, NOW)
INTEGRATOR = Partner("ptn_integrator", "Wire Up", "integrator", 1, NOW)
STRANGER = Partner("ptn_stranger", "Elsewhere", "reseller", 1, NOW)
PARTNERS = {p.id: p for p in (OWNER, MSP, INTEGRATOR, STRANGER)}

PRICING = OneTimePricing(unit_amount=1_000)


def agreement(
    agreement_id: str = "agr_msp",
    *,
    grantor: Partner = MSP,
    grantee: Partner = OWNER,
    role: PartnerKind = "managed_service",
    share_bps: int = 2_500,
    status: AgreementStatus = "active",
    expires_at: datetime | None = None,
) -> Agreement:
    return Agreement(
        id=agreement_id,
        grantor_id=grantor.id,
        grantee_id=grantee.id,
        role=role,
        share_bps=share_bps,
        status=status,
        created_at=NOW - timedelta(days=1),
        expires_at=expires_at,
    )


def own_component(
    *,
    partner_id: str = OWNER.id,
    name: str = "Licence",
    pricing: Pricing = PRICING,
    agreement_id: str | None = None,
) -> ComponentDraft:
    return ComponentDraft(partner_id, "isv", name, pricing, agreement_id)


def msp_component(
    agreement_id: str | None = "agr_msp",
    *,
    role: PartnerKind = "managed_service",
    pricing: Pricing = PRICING,
) -> ComponentDraft:
    return ComponentDraft(MSP.id, role, "Operations", pricing, agreement_id)


def content(*components: ComponentDraft, currency: str = "USD") -> OfferingContent:
    return OfferingContent("Joint offer", "Run it for me", currency, components)


def violated_fields(caught: pytest.ExceptionInfo[RuleViolated]) -> list[str]:
    return [v.field for v in caught.value.violations]


# check_content


def test_an_owners_own_component_takes_the_full_share() -> None:
    (component,) = check_content(OWNER, content(own_component()), PARTNERS, {}, NOW)
    assert component == ComponentState(
        partner_id=OWNER.id,
        partner_kind="isv",
        role="isv",
        name="Licence",
        pricing=PRICING,
        agreement_id=None,
        share_bps=FULL_SHARE_BPS,
    )


def test_a_co_sell_component_takes_the_agreements_share_and_the_partners_kind() -> None:
    agreements = {"agr_msp": agreement(share_bps=1_750)}
    own, co_sold = check_content(
        OWNER, content(own_component(), msp_component()), PARTNERS, agreements, NOW
    )
    assert own.share_bps == FULL_SHARE_BPS
    assert co_sold.share_bps == 1_750
    assert co_sold.partner_kind == "managed_service"
    assert co_sold.agreement_id == "agr_msp"


@given(share_bps=st.integers(0, FULL_SHARE_BPS))
def test_any_agreed_share_is_carried_unchanged(share_bps: int) -> None:
    agreements = {"agr_msp": agreement(share_bps=share_bps)}
    (co_sold,) = check_content(OWNER, content(msp_component()), PARTNERS, agreements, NOW)
    assert co_sold.share_bps == share_bps


def test_components_keep_their_order_and_pricing() -> None:
    subscription = SubscriptionPricing(unit_amount=9_900, interval="year")
    usage = UsagePricing(unit_amount=3, unit="GB-hour")
    drafts = (
        msp_component(pricing=usage),
        own_component(pricing=subscription),
    )
    checked = check_content(OWNER, content(*drafts), PARTNERS, {"agr_msp": agreement()}, NOW)
    assert [(c.partner_id, c.pricing) for c in checked] == [
        (MSP.id, usage),
        (OWNER.id, subscription),
    ]


def test_an_unknown_partner_is_named() -> None:
    with pytest.raises(RuleViolated) as caught:
        check_content(
            OWNER,
            content(own_component(), own_component(partner_id="ptn_nobody")),
            PARTNERS,
            {},
            NOW,
        )
    assert violated_fields(caught) == ["components[1].partner_id"]
    assert "ptn_nobody" in caught.value.violations[0].message


@pytest.mark.parametrize(
    ("agreements", "agreement_id", "says"),
    [
        pytest.param({}, None, "needs its agreement", id="no agreement named"),
        pytest.param({}, "agr_msp", "no agreement", id="agreement does not exist"),
        pytest.param(
            {"agr_msp": agreement(grantor=INTEGRATOR, role="managed_service")},
            "agr_msp",
            "no agreement",
            id="agreement of another grantor",
        ),
        pytest.param(
            {"agr_msp": agreement(grantee=STRANGER)},
            "agr_msp",
            "no agreement",
            id="granted to someone else",
        ),
        pytest.param({"agr_msp": agreement(status="revoked")}, "agr_msp", "revoked", id="revoked"),
        pytest.param(
            {"agr_msp": agreement(status="expired", expires_at=NOW - timedelta(days=1))},
            "agr_msp",
            "expired",
            id="expired",
        ),
        pytest.param(
            {"agr_msp": agreement(expires_at=NOW - timedelta(seconds=1))},
            "agr_msp",
            "expired",
            id="past its expiry, not yet swept",
        ),
        pytest.param(
            {"agr_msp": agreement(expires_at=NOW)},
            "agr_msp",
            "expired",
            id="expiring this very instant",
        ),
    ],
)
def test_another_partners_component_needs_an_agreement_in_force(
    agreements: dict[str, Agreement], agreement_id: str | None, says: str
) -> None:
    with pytest.raises(RuleViolated) as caught:
        check_content(
            OWNER,
            content(own_component(), msp_component(agreement_id)),
            PARTNERS,
            agreements,
            NOW,
        )
    assert violated_fields(caught) == ["components[1].agreement_id"]
    assert says in caught.value.violations[0].message


def test_an_agreement_with_a_future_expiry_is_in_force() -> None:
    agreements = {"agr_msp": agreement(expires_at=NOW + timedelta(seconds=1))}
    (co_sold,) = check_content(OWNER, content(msp_component()), PARTNERS, agreements, NOW)
    assert co_sold.agreement_id == "agr_msp"


def test_the_component_role_must_be_the_agreed_role() -> None:
    agreements = {"agr_msp": agreement(role="integrator")}
    with pytest.raises(RuleViolated) as caught:
        check_content(OWNER, content(msp_component()), PARTNERS, agreements, NOW)
    assert violated_fields(caught) == ["components[0].role"]
    assert "integrator" in caught.value.violations[0].message


def test_the_owners_own_component_takes_no_agreement() -> None:
    agreements = {"agr_msp": agreement()}
    with pytest.raises(RuleViolated) as caught:
        check_content(
            OWNER, content(own_component(agreement_id="agr_msp")), PARTNERS, agreements, NOW
        )
    assert violated_fields(caught) == ["components[0].agreement_id"]


@pytest.mark.parametrize("currency", ["XXX", "usd", "US", "BTC", ""])
def test_an_unsupported_currency_is_refused(currency: str) -> None:
    with pytest.raises(RuleViolated) as caught:
        check_content(OWNER, content(own_component(), currency=currency), PARTNERS, {}, NOW)
    assert violated_fields(caught) == ["currency"]


@given(currency=st.sampled_from(sorted(CURRENCY_EXPONENTS)))
def test_every_supported_currency_is_accepted(currency: str) -> None:
    checked = check_content(OWNER, content(own_component(), currency=currency), PARTNERS, {}, NOW)
    assert len(checked) == 1


def test_an_offering_needs_a_component() -> None:
    with pytest.raises(RuleViolated) as caught:
        check_content(OWNER, content(), PARTNERS, {}, NOW)
    assert violated_fields(caught) == ["components"]


def test_every_failing_field_is_reported_at_once() -> None:
    agreements = {"agr_msp": agreement(status="revoked")}
    with pytest.raises(RuleViolated) as caught:
        check_content(
            OWNER,
            content(
                own_component(),
                msp_component(),
                own_component(partner_id="ptn_nobody"),
                msp_component(None),
                currency="XXX",
            ),
            PARTNERS,
            agreements,
            NOW,
        )
    assert violated_fields(caught) == [
        "currency",
        "components[1].agreement_id",
        "components[2].partner_id",
        "components[3].agreement_id",
    ]


# One entry per kind of component: how to write it and the field it breaks, if any.
_COMPONENT_CASES: dict[str, tuple[ComponentDraft, str | None]] = {
    "own": (own_component(), None),
    "co-sold": (msp_component("agr_msp"), None),
    "co-sold by the integrator": (
        ComponentDraft(INTEGRATOR.id, "integrator", "Setup", PRICING, "agr_integrator"),
        None,
    ),
    "own with an agreement": (own_component(agreement_id="agr_msp"), "agreement_id"),
    "unknown partner": (own_component(partner_id="ptn_nobody"), "partner_id"),
    "missing agreement": (msp_component(None), "agreement_id"),
    "revoked agreement": (msp_component("agr_revoked"), "agreement_id"),
    "someone else's agreement": (msp_component("agr_integrator"), "agreement_id"),
    "wrong role": (msp_component(role="integrator"), "role"),
}
_AGREEMENTS = {
    "agr_msp": agreement("agr_msp"),
    "agr_revoked": agreement("agr_revoked", status="revoked"),
    "agr_integrator": agreement("agr_integrator", grantor=INTEGRATOR, role="integrator"),
}


@given(
    cases=st.lists(st.sampled_from(sorted(_COMPONENT_CASES)), min_size=1, max_size=8),
    currency=st.sampled_from(["USD", "EUR", "JPY", "XXX"]),
)
def test_violations_name_exactly_the_failing_components(cases: list[str], currency: str) -> None:
    drafts = [_COMPONENT_CASES[case][0] for case in cases]
    expected = [] if currency != "XXX" else ["currency"]
    expected += [
        f"components[{index}].{field}"
        for index, case in enumerate(cases)
        if (field := _COMPONENT_CASES[case][1]) is not None
    ]
    if not expected:
        checked = check_content(
            OWNER, content(*drafts, currency=currency), PARTNERS, _AGREEMENTS, NOW
        )
        assert [c.partner_id for c in checked] == [d.partner_id for d in drafts]
        return
    with pytest.raises(RuleViolated) as caught:
        check_content(OWNER, content(*drafts, currency=currency), PARTNERS, _AGREEMENTS, NOW)
    assert violated_fields(caught) == expected


# orderability


def co_sold_state(agreement_id: str | None) -> ComponentState:
    return ComponentState(
        partner_id=MSP.id if agreement_id else OWNER.id,
        partner_kind="managed_service" if agreement_id else "isv",
        role="managed_service" if agreement_id else "isv",
        name="Part",
        pricing=PRICING,
        agreement_id=agreement_id,
        share_bps=2_500 if agreement_id else FULL_SHARE_BPS,
    )


def test_an_offering_without_agreements_is_orderable() -> None:
    assert orderability([co_sold_state(None)], {}, NOW) == (True, None)


def test_an_offering_whose_agreements_are_in_force_is_orderable() -> None:
    agreements = {"agr_msp": agreement(expires_at=LATER)}
    assert orderability([co_sold_state(None), co_sold_state("agr_msp")], agreements, NOW) == (
        True,
        None,
    )


@pytest.mark.parametrize(
    ("agreements", "reason"),
    [
        ({"agr_msp": agreement(status="revoked")}, "agreement agr_msp is revoked"),
        ({"agr_msp": agreement(status="expired")}, "agreement agr_msp is expired"),
        ({"agr_msp": agreement(expires_at=NOW)}, "agreement agr_msp is expired"),
        ({}, "agreement agr_msp is missing"),
    ],
)
def test_an_agreement_out_of_force_makes_an_offering_unorderable(
    agreements: dict[str, Agreement], reason: str
) -> None:
    components = [co_sold_state(None), co_sold_state("agr_msp")]
    assert orderability(components, agreements, NOW) == (False, reason)


# Lifecycle


def offering_draft() -> Offering:
    checked = check_content(
        OWNER, content(own_component(), msp_component()), PARTNERS, {"agr_msp": agreement()}, NOW
    )
    return draft_offering(
        "off_1", OWNER.id, content(own_component(), msp_component()), checked, NOW
    )


def published_offering() -> Offering:
    return publish(offering_draft(), NOW + timedelta(minutes=1))


def test_a_new_offering_is_an_unorderable_draft_at_version_one() -> None:
    draft = offering_draft()
    assert (draft.status, draft.version, draft.orderable) == ("draft", 1, False)
    assert draft.unorderable_reason == "not published"
    assert draft.published_at is None
    assert draft.created_at == draft.changed_at == NOW
    assert draft.partner_ids == [MSP.id, OWNER.id]
    assert draft.partner_kinds == ["isv", "managed_service"]
    assert draft.agreement_ids == ["agr_msp"]


def test_a_draft_is_revised_in_place() -> None:
    draft = offering_draft()
    new_content = ContentChange(name="Renamed").applied_to(draft.content)
    revised = revise(draft, new_content, draft.components, LATER)
    assert revised.status == "draft"
    assert revised.version == 1
    assert revised.content.name == "Renamed"
    assert revised.changed_at == LATER
    assert revised.published_at is None
    assert not revised.orderable


def test_revising_a_published_offering_publishes_the_next_version() -> None:
    published = published_offering()
    new_content = ContentChange(description="Now with more").applied_to(published.content)
    revised = revise(published, new_content, published.components, LATER)
    assert revised.status == "published"
    assert revised.version == published.version + 1
    assert revised.content.description == "Now with more"
    assert revised.content.name == published.content.name
    assert revised.orderable
    assert revised.unorderable_reason is None
    assert revised.published_at == revised.changed_at == LATER
    assert revised.created_at == published.created_at


def test_a_revision_makes_an_unorderable_published_offering_orderable_again() -> None:
    unorderable = replace(
        published_offering(), orderable=False, unorderable_reason="agreement agr_msp is revoked"
    )
    own_only = content(own_component())
    components = check_content(OWNER, own_only, PARTNERS, {}, NOW)
    revised = revise(unorderable, own_only, components, LATER)
    assert revised.orderable
    assert revised.unorderable_reason is None
    assert revised.version == unorderable.version + 1


def test_a_retired_offering_cannot_be_revised() -> None:
    retired = retire(published_offering(), LATER)
    with pytest.raises(Conflict):
        revise(retired, retired.content, retired.components, LATER)


def test_publishing_a_draft_makes_it_orderable() -> None:
    published = publish(offering_draft(), LATER)
    assert published.status == "published"
    assert published.version == 1
    assert published.orderable
    assert published.unorderable_reason is None
    assert published.published_at == published.changed_at == LATER


def test_publishing_twice_changes_nothing() -> None:
    published = published_offering()
    assert publish(published, LATER) is published


def test_a_retired_offering_cannot_be_published_again() -> None:
    with pytest.raises(Conflict):
        publish(retire(published_offering(), LATER), LATER)


def test_retiring_stops_new_orders_and_keeps_the_version() -> None:
    published = published_offering()
    retired = retire(published, LATER)
    assert retired.status == "retired"
    assert retired.version == published.version
    assert not retired.orderable
    assert retired.unorderable_reason == "retired"
    assert retired.changed_at == LATER
    assert retired.published_at == published.published_at


def test_retiring_twice_changes_nothing() -> None:
    retired = retire(published_offering(), LATER)
    assert retire(retired, LATER + timedelta(hours=1)) is retired


def test_a_draft_cannot_be_retired() -> None:
    with pytest.raises(Conflict):
        retire(offering_draft(), LATER)


def test_content_change_keeps_what_it_does_not_name() -> None:
    original = content(own_component())
    assert ContentChange().applied_to(original) == original
    components = (own_component(name="Other"),)
    changed = ContentChange(currency="EUR", components=components).applied_to(original)
    assert changed == replace(original, currency="EUR", components=components)


def test_with_orderability_follows_the_agreements() -> None:
    published = published_offering()
    revoked = {"agr_msp": agreement(status="revoked")}
    unorderable = with_orderability(published, revoked, LATER)
    assert not unorderable.orderable
    assert unorderable.unorderable_reason == "agreement agr_msp is revoked"
    assert unorderable.changed_at == LATER
    assert unorderable.version == published.version
    assert with_orderability(unorderable, revoked, LATER + timedelta(hours=1)) is unorderable
    assert with_orderability(published, {"agr_msp": agreement()}, LATER) is published


def test_with_orderability_leaves_drafts_and_retired_offerings_alone() -> None:
    revoked = {"agr_msp": agreement(status="revoked")}
    draft = offering_draft()
    retired = retire(published_offering(), LATER)
    assert with_orderability(draft, revoked, LATER) is draft
    assert with_orderability(retired, revoked, LATER) is retired


# Agreements


def test_revoking_ends_an_agreement_now() -> None:
    revoked = agreement(expires_at=LATER).revoked(NOW)
    assert revoked.status == "revoked"
    assert revoked.ended_at == NOW
    assert not revoked.in_force(NOW)


@pytest.mark.parametrize("status", ["revoked", "expired"])
def test_only_an_active_agreement_can_be_revoked(status: AgreementStatus) -> None:
    with pytest.raises(Conflict):
        agreement(status=status).revoked(NOW)


def test_an_agreement_expires_at_its_expiry_time() -> None:
    due = agreement(expires_at=NOW - timedelta(minutes=5))
    expired = due.expired(NOW)
    assert expired.status == "expired"
    assert expired.ended_at == due.expires_at


@pytest.mark.parametrize(
    "not_due",
    [
        agreement(expires_at=None),
        agreement(expires_at=NOW + timedelta(seconds=1)),
        agreement(status="revoked", expires_at=NOW - timedelta(days=1)),
        agreement(status="expired", expires_at=NOW - timedelta(days=1)),
    ],
)
def test_an_agreement_not_due_cannot_expire(not_due: Agreement) -> None:
    with pytest.raises(Conflict):
        not_due.expired(NOW)


@given(offset=st.integers(-(10**6), 10**6))
def test_an_active_agreement_is_in_force_until_its_expiry(offset: int) -> None:
    expires_at = NOW + timedelta(milliseconds=offset)
    assert agreement(expires_at=expires_at).in_force(NOW) is (offset > 0)
    assert agreement(expires_at=None).in_force(NOW)


@given(status=st.sampled_from(["revoked", "expired"]), offset=st.integers(-(10**6), 10**6))
def test_an_ended_agreement_is_never_in_force(status: AgreementStatus, offset: int) -> None:
    assert not agreement(status=status, expires_at=NOW + timedelta(seconds=offset)).in_force(NOW)


def test_a_new_agreement_is_active() -> None:
    made = new_agreement(
        agreement_id="agr_new",
        grantor=MSP,
        grantee=OWNER,
        grantee_id=OWNER.id,
        role="managed_service",
        share_bps=3_000,
        expires_at=LATER,
        now=NOW,
    )
    assert made == Agreement(
        id="agr_new",
        grantor_id=MSP.id,
        grantee_id=OWNER.id,
        role="managed_service",
        share_bps=3_000,
        status="active",
        created_at=NOW,
        expires_at=LATER,
    )
    assert made.in_force(NOW)


@pytest.mark.parametrize(
    ("grantee", "grantee_id", "expires_at", "fields"),
    [
        pytest.param(None, "ptn_nobody", None, ["grantee_id"], id="unknown grantee"),
        pytest.param(MSP, MSP.id, None, ["grantee_id"], id="granted to itself"),
        pytest.param(OWNER, OWNER.id, NOW, ["expires_at"], id="expiring now"),
        pytest.param(
            OWNER, OWNER.id, NOW - timedelta(days=1), ["expires_at"], id="expired already"
        ),
        pytest.param(None, "ptn_nobody", NOW, ["grantee_id", "expires_at"], id="both"),
    ],
)
def test_a_new_agreement_is_checked(
    grantee: Partner | None, grantee_id: str, expires_at: datetime | None, fields: list[str]
) -> None:
    with pytest.raises(RuleViolated) as caught:
        new_agreement(
            agreement_id="agr_new",
            grantor=MSP,
            grantee=grantee,
            grantee_id=grantee_id,
            role="managed_service",
            share_bps=3_000,
            expires_at=expires_at,
            now=NOW,
        )
    assert violated_fields(caught) == fields


# Accounts


@pytest.mark.parametrize(
    ("email", "key"),
    [
        ("Ada@Example.COM", "ada@example.com"),
        ("  ada@example.com\n", "ada@example.com"),
        ("ada@example.com", "ada@example.com"),
    ],
)
def test_email_key_ignores_case_and_surrounding_space(email: str, key: str) -> None:
    assert email_key(email) == key


_ascii_email = st.from_regex(r"\A[A-Za-z0-9._+-]{1,20}@[A-Za-z0-9-]{1,20}\.[A-Za-z]{2,6}\Z")


@given(email=_ascii_email, padding=st.text(" \t\n", max_size=3))
def test_email_key_is_one_key_per_address(email: str, padding: str) -> None:
    key = email_key(email)
    assert email_key(email.swapcase()) == key
    assert email_key(padding + email.upper() + padding) == key
    assert email_key(key) == key


def test_an_agreement_expiry_is_kept_in_utc_and_bounded() -> None:
    from datetime import timezone

    from services.catalog import domain as catalog_domain
    from shared.errors import RuleViolated as Refused

    joined = datetime(2026, 1, 1, tzinfo=UTC)
    grantor = catalog_domain.Partner("ptn_a", "A", "isv", 1, joined)
    grantee = catalog_domain.Partner("ptn_b", "B", "integrator", 1, joined)
    local = datetime(2030, 1, 1, tzinfo=timezone(timedelta(hours=-5)))
    made = catalog_domain.new_agreement(
        agreement_id="agr_1", grantor=grantor, grantee=grantee, grantee_id="ptn_b",
        role="isv", share_bps=5000, expires_at=local, now=joined,
    )  # fmt: skip
    assert made.expires_at == local
    assert made.expires_at is not None
    assert made.expires_at.utcoffset() == timedelta(0)
    far = datetime(9999, 12, 31, 23, 59, tzinfo=timezone(timedelta(hours=-14)))
    with pytest.raises(Refused) as refused:
        catalog_domain.new_agreement(
            agreement_id="agr_2", grantor=grantor, grantee=grantee, grantee_id="ptn_b",
            role="isv", share_bps=5000, expires_at=far, now=joined,
        )  # fmt: skip
    assert [v.field for v in refused.value.violations] == ["expires_at"]
