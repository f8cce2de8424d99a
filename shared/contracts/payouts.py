"""Topic ``settlement.payouts``: money paid out to partners, and the bank's word on it.

Keyed by partner id, so one partner's payouts arrive in the order they were
made.  Kept forever (not compacted): a payout is a fact a partner's books and
an auditor rebuild from.  Amounts are integer minor units of ``currency``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

from shared.contracts.envelope import Event, Topic

# pending: in transit; paid: the bank booked it; failed: the bank returned it.
PayoutStatus = Literal["pending", "paid", "failed"]


class PayoutState(msgspec.Struct, frozen=True, kw_only=True):
    payout_id: str
    partner_id: str
    amount: int
    currency: str
    # Unique: the bank statement names it, and reconciliation matches on it.
    reference: str
    as_of: datetime
    status: PayoutStatus


class PayoutInitiated(Event, frozen=True, kw_only=True):
    """A payout run paid the partner's available balance; the money is in transit."""

    EVENT_TYPE = "settlement.payout.initiated"
    payout: PayoutState


class PayoutPaid(Event, frozen=True, kw_only=True):
    """Reconciliation found the payout on the bank statement with the same amount."""

    EVENT_TYPE = "settlement.payout.paid"
    payout: PayoutState
    booked_at: datetime


class PayoutFailed(Event, frozen=True, kw_only=True):
    """The bank returned the payout: its money is back in the partner's available balance.

    Final: a later payout run pays that money again under a new payout.
    """

    EVENT_TYPE = "settlement.payout.failed"
    payout: PayoutState
    returned_at: datetime


TOPIC = Topic(
    name="settlement.payouts",
    partitions=6,
    key_description="partner_id",
    events=(PayoutInitiated, PayoutPaid, PayoutFailed),
    retain_forever=True,
)
