"""Order events as the orders service publishes them, built by hand for settlement's tests.

``OrderScript`` plays one order's life: each call returns the next event in
the order's own sequence (1, 2, 3 ...), in the envelope it travels in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from shared.contracts.catalog_accounts import PartnerKind
from shared.contracts.envelope import Envelope, Event, new_envelope
from shared.contracts.orders import (
    Charge,
    OrderCancelled,
    OrderConfirmed,
    OrderFulfilled,
    OrderLine,
    OrderPlaced,
    OrderRefunded,
    OrderState,
    OrderStatus,
    Refund,
    UsageRecorded,
)
from shared.ids import new_id

OrderEvent = tuple[Envelope, Event]


@dataclass(frozen=True)
class Part:
    """One priced component of the offering bought, as it will be charged."""

    partner_id: str
    role: PartnerKind
    share_bps: int
    agreement_id: str | None = None


@dataclass
class OrderScript:
    customer_id: str
    owner_id: str
    currency: str = "USD"
    order_id: str = field(default_factory=lambda: new_id("ord"))
    line_id: str = field(default_factory=lambda: new_id("lin"))
    offering_id: str = field(default_factory=lambda: new_id("off"))
    placed_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    total: int = 0
    sequence: int = 0
    status: OrderStatus = "pending"

    def _next(self, event: Event) -> OrderEvent:
        self.sequence += 1
        envelope = new_envelope(event, key=self.order_id, producer="orders", sequence=self.sequence)
        return envelope, event

    def state(self) -> OrderState:
        return OrderState(
            order_id=self.order_id,
            customer_id=self.customer_id,
            status=self.status,
            currency=self.currency,
            total=self.total,
            lines=[
                OrderLine(
                    line_id=self.line_id,
                    offering_id=self.offering_id,
                    offering_version=1,
                    owner_id=self.owner_id,
                    quantity=1,
                    amount=self.total,
                    components=[],
                )
            ],
            placed_at=self.placed_at,
            accept_by=self.placed_at + timedelta(hours=48),
            changed_at=self.placed_at,
        )

    def charge(self, part: Part, amount: int, index: int, kind: str = "order") -> Charge:
        return Charge(
            charge_id=new_id("chg"),
            kind="usage" if kind == "usage" else "order",
            order_id=self.order_id,
            line_id=self.line_id,
            offering_id=self.offering_id,
            component_index=index,
            owner_id=self.owner_id,
            partner_id=part.partner_id,
            role=part.role,
            agreement_id=part.agreement_id,
            share_bps=part.share_bps,
            amount=amount,
            currency=self.currency,
        )

    def placed(self, total: int) -> OrderEvent:
        self.total = total
        return self._next(OrderPlaced(order=self.state()))

    def confirmed(self, charges: list[Charge]) -> OrderEvent:
        self.status = "confirmed"
        return self._next(OrderConfirmed(order=self.state(), charges=charges))

    def fulfilled(self) -> OrderEvent:
        self.status = "fulfilled"
        return self._next(OrderFulfilled(order=self.state()))

    def cancelled(self) -> OrderEvent:
        self.status = "cancelled"
        return self._next(OrderCancelled(order=self.state()))

    def refunded(self, refunds: list[tuple[Charge, int]]) -> OrderEvent:
        return self._next(
            OrderRefunded(
                order_id=self.order_id,
                customer_id=self.customer_id,
                currency=self.currency,
                refunds=[
                    Refund(
                        refund_id=new_id("rfd"),
                        charge_id=charge.charge_id,
                        amount=amount,
                        currency=self.currency,
                    )
                    for charge, amount in refunds
                ],
            )
        )

    def usage(self, part: Part, index: int, unit_amount: int, quantity: int) -> OrderEvent:
        charge = self.charge(part, unit_amount * quantity, index, kind="usage")
        return self._next(
            UsageRecorded(
                usage_id=new_id("use"),
                order_id=self.order_id,
                customer_id=self.customer_id,
                unit="GB-hour",
                unit_amount=unit_amount,
                quantity=quantity,
                occurred_at=datetime.now(UTC),
                charge=charge,
            )
        )
