"""What settlement decodes of the orders topic stays true to the orders contract."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import get_args

import msgspec
import pytest

from services.settlement import domain, order_events
from services.settlement.consumers import OrderEventBooker
from shared.contracts import orders
from shared.contracts.catalog_accounts import PartnerKind
from shared.contracts.envelope import EventRegistry, new_envelope
from shared.contracts.pricing import Pricing

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def test_every_contract_event_has_its_reading_of_the_same_type_and_version() -> None:
    def named(events: tuple[type[msgspec.Struct], ...]) -> set[tuple[str, int]]:
        return {(e.EVENT_TYPE, e.SCHEMA_VERSION) for e in events}  # type: ignore[attr-defined]

    assert named(order_events.EVENTS) == named(orders.TOPIC.events)
    assert get_args(domain.ChargeKind) == get_args(orders.ChargeKind)
    assert get_args(domain.PartnerRole) == get_args(PartnerKind)


def charge(kind: orders.ChargeKind = "order") -> orders.Charge:
    return orders.Charge(
        charge_id="chg_1", kind=kind, order_id="ord_1", line_id="lin_1", offering_id="off_1",
        component_index=2, owner_id="ptr_owner", partner_id="ptr_isv", role="isv",
        agreement_id="agr_1", share_bps=7_000, amount=12_345, currency="EUR",
    )  # fmt: skip


def state() -> orders.OrderState:
    component = orders.OrderComponent(
        component_index=2, partner_id="ptr_isv", role="isv", name="Scanner",
        pricing=msgspec.convert({"model": "one_time", "unit_amount": 12_345}, Pricing),
        agreement_id="agr_1", share_bps=7_000, amount=12_345,
    )  # fmt: skip
    line = orders.OrderLine(
        line_id="lin_1", offering_id="off_1", offering_version=3, owner_id="ptr_owner",
        quantity=1, amount=12_345, components=[component],
    )  # fmt: skip
    return orders.OrderState(
        order_id="ord_1", customer_id="cus_1", status="confirmed", currency="EUR", total=12_345,
        lines=[line], placed_at=NOW, accept_by=NOW + timedelta(hours=48), changed_at=NOW,
    )  # fmt: skip


def test_each_event_reads_the_values_the_contract_carries() -> None:
    registry = OrderEventBooker(300).registry
    full = state()
    confirmed = registry.decode(
        new_envelope(orders.OrderConfirmed(order=full, charges=[charge()]), key="ord_1",
                     producer="orders", sequence=2)
    )  # fmt: skip
    assert isinstance(confirmed, order_events.OrderConfirmed)
    facts = confirmed.order
    assert (facts.order_id, facts.customer_id, facts.status, facts.currency, facts.total,
            facts.placed_at) == ("ord_1", "cus_1", "confirmed", "EUR", 12_345, NOW)  # fmt: skip
    (read,) = confirmed.charges
    assert msgspec.structs.asdict(read) == msgspec.structs.asdict(charge())

    usage = orders.UsageRecorded(
        usage_id="use_1", order_id="ord_1", customer_id="cus_1", unit="GB-hour", unit_amount=5,
        quantity=3, occurred_at=NOW, charge=charge("usage"),
    )  # fmt: skip
    recorded = registry.decode(new_envelope(usage, key="ord_1", producer="orders"))
    assert isinstance(recorded, order_events.UsageRecorded)
    assert (recorded.order_id, recorded.customer_id) == ("ord_1", "cus_1")
    assert msgspec.structs.asdict(recorded.charge) == msgspec.structs.asdict(charge("usage"))

    refund = orders.Refund(refund_id="rfd_1", charge_id="chg_1", amount=45, currency="EUR")
    refunded = registry.decode(
        new_envelope(orders.OrderRefunded(order_id="ord_1", customer_id="cus_1", currency="EUR",
                                          refunds=[refund]), key="ord_1", producer="orders")
    )  # fmt: skip
    assert isinstance(refunded, order_events.OrderRefunded)
    assert [msgspec.structs.asdict(r) for r in refunded.refunds] == [msgspec.structs.asdict(refund)]
    for event in (orders.OrderPlaced, orders.OrderFulfilled, orders.OrderCancelled):
        read_state = registry.decode(new_envelope(event(order=full), key="ord_1", producer="o"))
        assert type(read_state).EVENT_TYPE == event.EVENT_TYPE
        assert read_state.order.order_id == "ord_1"  # type: ignore[attr-defined]


def test_a_charge_the_contract_refuses_is_refused_by_the_narrow_reading_too() -> None:
    """A kind or role outside the contract is dead-lettered, not booked as if it were valid."""
    narrow = OrderEventBooker(300).registry
    contract = EventRegistry(orders.TOPIC.events)
    envelope = new_envelope(
        orders.OrderConfirmed(order=state(), charges=[charge()]), key="ord_1", producer="orders",
        sequence=2,
    )  # fmt: skip
    for field, value in (("kind", "subscription"), ("role", "distributor")):
        payload = msgspec.json.decode(envelope.payload)
        payload["charges"][0][field] = value
        bad = msgspec.structs.replace(envelope, payload=msgspec.Raw(msgspec.json.encode(payload)))
        with pytest.raises(msgspec.ValidationError):
            contract.decode(bad)
        with pytest.raises(msgspec.ValidationError):
            narrow.decode(bad)
