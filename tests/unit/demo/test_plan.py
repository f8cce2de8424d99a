"""The demo's day is decided by its seed, and its catalog is one the contract accepts."""

from __future__ import annotations

from collections import Counter

import pytest

from deploy.demo import plan


def make(seed: int = 7, orders: int = 400) -> plan.Plan:
    return plan.make_plan(seed=seed, customers=25, orders=orders, run_id="r1")


def test_the_same_seed_plays_the_same_day() -> None:
    assert make(seed=3) == make(seed=3)
    assert make(seed=3).orders != make(seed=4).orders


def test_every_fate_happens_and_most_orders_go_well() -> None:
    fates = Counter(order.fate for order in make().orders)
    assert set(fates) == set(plan.FATES)
    assert fates["fulfilled"] > sum(fates.values()) / 2


def test_a_rejected_or_late_order_is_decided_by_one_of_its_own_partners() -> None:
    for order in make().orders:
        if order.fate in ("rejected", "late"):
            assert order.decider in plan.partners_of(order)
        else:
            assert order.decider is None


def test_usage_is_planned_for_each_metered_component_bought() -> None:
    orders = make().orders
    assert any(order.usage for order in orders)
    for order in orders:
        assert len(order.usage) == len(plan.metered_components(order))
        assert all(quantity > 0 for quantity in order.usage)


def test_orders_name_known_customers_and_distinct_offerings() -> None:
    day = make()
    assert len({customer.email for customer in day.customers}) == len(day.customers)
    for order in day.orders:
        assert 0 <= order.customer < len(day.customers)
        offerings = [line.offering for line in order.lines]
        assert len(offerings) == len(set(offerings))
        assert all(line.quantity >= 1 for line in order.lines)


def test_run_ids_keep_customer_emails_apart_between_runs() -> None:
    first = plan.make_plan(seed=1, customers=3, orders=0, run_id="a")
    second = plan.make_plan(seed=1, customers=3, orders=0, run_id="b")
    assert {c.email for c in first.customers}.isdisjoint(c.email for c in second.customers)


def test_a_day_needs_a_customer() -> None:
    with pytest.raises(ValueError, match="customer"):
        plan.make_plan(seed=1, customers=0, orders=1, run_id="r")


def test_every_co_sold_component_names_an_agreement_its_partner_granted_the_owner() -> None:
    agreements = {agreement.key: agreement for agreement in plan.AGREEMENTS}
    for offering in plan.OFFERINGS:
        for component in offering.components:
            if component.partner == offering.owner:
                assert component.agreement is None
                continue
            assert component.agreement is not None
            agreement = agreements[component.agreement]
            assert (agreement.grantor, agreement.grantee) == (component.partner, offering.owner)


def test_the_joint_offering_is_the_managed_service_providers_with_every_pricing_model() -> None:
    joint = plan.offering("managed-acme")
    assert plan.partner(joint.owner).kind == "managed_service"
    assert {c.pricing["model"] for c in joint.components} == {"one_time", "subscription", "usage"}
    kinds = {plan.partner(c.partner).kind for c in joint.components}
    assert kinds == {"isv", "managed_service", "integrator"}
    shares = {a.role: a.share_bps for a in plan.AGREEMENTS if a.grantee == joint.owner}
    assert shares == {"isv": 7000, "integrator": 9000}


@pytest.mark.parametrize(
    ("fate", "deadline_fires", "status"),
    [
        ("fulfilled", False, "fulfilled"),
        ("confirmed", False, "confirmed"),
        ("rejected", False, "cancelled"),
        ("withdrawn", False, "cancelled"),
        ("late", True, "cancelled"),
        ("late", False, "pending"),
    ],
)
def test_each_fate_ends_in_its_status(fate: plan.Fate, deadline_fires: bool, status: str) -> None:
    assert plan.expected_status(fate, deadline_fires=deadline_fires) == status


def joint(fate: plan.Fate, decider: str | None = None) -> plan.PlannedOrder:
    lines = (plan.PlannedLine("managed-acme", 2), plan.PlannedLine("acme-cloud", 1))
    return plan.PlannedOrder(0, 0, lines, fate, decider, usage=(120,))


def test_the_decider_rejects_or_answers_late_and_everyone_else_accepts() -> None:
    assert plan.answer(joint("rejected", "crestline"), "crestline") == "reject"
    assert plan.answer(joint("rejected", "crestline"), "harbor") == "accept"
    assert plan.answer(joint("late", "acme"), "acme") == "answer late"
    assert plan.answer(joint("late", "acme"), "crestline") == "accept"
    assert plan.answer(joint("fulfilled"), "harbor") == "accept and complete"
    assert plan.answer(joint("confirmed"), "harbor") == "accept"
    assert plan.answer(joint("withdrawn"), "harbor") == "accept"


def test_only_the_metering_partner_reports_and_only_on_orders_that_stay_confirmed() -> None:
    assert plan.partners_of(joint("fulfilled")) == ("acme", "harbor", "crestline")
    assert plan.usage_reported_by(joint("fulfilled"), "acme") == (120,)
    assert plan.usage_reported_by(joint("confirmed"), "acme") == (120,)
    assert plan.usage_reported_by(joint("fulfilled"), "harbor") == ()
    for fate in ("rejected", "late", "withdrawn"):
        assert plan.usage_reported_by(joint(fate), "acme") == ()
