"""Settlement's request and response bodies, as the public contract names them."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

from shared.contracts.payouts import PayoutStatus
from shared.http.fields import AwareDatetime, Cursor, Limit, ResourceId
from shared.money import MAX_AMOUNT, CurrencyCode, Money

BankReference = Annotated[
    str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")
]
BankAmount = Annotated[int, msgspec.Meta(ge=-MAX_AMOUNT, le=MAX_AMOUNT)]


class _Request(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pass


class BalanceQuery(_Request, frozen=True, forbid_unknown_fields=True):
    currency: CurrencyCode | None = None


class Balance(msgspec.Struct, frozen=True):
    partner_id: str
    currency: str
    pending: Money
    available: Money
    in_transit: Money
    paid: Money


class StatementQuery(_Request, frozen=True, forbid_unknown_fields=True):
    # ``from``/``to`` are Python keywords: the wire names are kept by rename.
    since: AwareDatetime | None = msgspec.field(default=None, name="from")
    until: AwareDatetime | None = msgspec.field(default=None, name="to")
    limit: Limit = 50
    cursor: Cursor | None = None


class SplitView(msgspec.Struct, frozen=True):
    """How a charge (or the refund of one) was shared: enough to check it by hand."""

    gross: int
    fee_bps: int
    fee: int
    share_bps: int
    share: int
    margin: int
    rule: str


StatementKind = Literal["charge", "refund", "release", "payout", "paid"]


class StatementLine(msgspec.Struct, frozen=True, omit_defaults=True):
    id: str
    booked_at: datetime
    kind: StatementKind
    account: str  # pending, available or in_transit
    part: str  # share, margin, release, payout, paid
    # Positive: the marketplace owes the partner more on this account; negative: less.
    amount: Money
    order_id: str | None = None
    charge_id: str | None = None
    refund_id: str | None = None
    payout_id: str | None = None
    reference: str | None = None
    split: SplitView | None = None


class StatementPage(msgspec.Struct, frozen=True):
    partner_id: str
    items: list[StatementLine]
    next_cursor: str | None


class RunPayouts(_Request, frozen=True, forbid_unknown_fields=True):
    as_of: AwareDatetime


class PayoutMadeView(msgspec.Struct, frozen=True):
    id: str
    partner_id: str
    amount: Money
    reference: str


class PayoutRun(msgspec.Struct, frozen=True):
    payouts: list[PayoutMadeView]


class ListPayouts(_Request, frozen=True, forbid_unknown_fields=True):
    partner_id: ResourceId | None = None
    limit: Limit = 50
    cursor: Cursor | None = None


class PayoutView(msgspec.Struct, frozen=True):
    id: str
    partner_id: str
    amount: Money
    reference: str
    as_of: datetime
    status: PayoutStatus
    created_at: datetime
    paid_at: datetime | None


class PayoutPage(msgspec.Struct, frozen=True):
    items: list[PayoutView]
    next_cursor: str | None


class BankStatementLine(_Request, frozen=True, forbid_unknown_fields=True):
    reference: BankReference
    amount: BankAmount
    booked_at: AwareDatetime


class BankStatement(_Request, frozen=True, forbid_unknown_fields=True):
    lines: Annotated[list[BankStatementLine], msgspec.Meta(max_length=10_000)]


class ReconciledLine(msgspec.Struct, frozen=True, omit_defaults=True):
    reference: str
    expected: Money | None = None
    booked: Money | None = None
    payout_id: str | None = None


class ReconciliationReport(msgspec.Struct, frozen=True):
    id: str
    created_at: datetime
    matched: list[ReconciledLine]
    missing: list[ReconciledLine]
    unexpected: list[ReconciledLine]
    mismatched: list[ReconciledLine]


class ThreeWayQuery(_Request, frozen=True, forbid_unknown_fields=True):
    since: AwareDatetime | None = msgspec.field(default=None, name="from")
    until: AwareDatetime | None = msgspec.field(default=None, name="to")
    limit: Limit = 50
    cursor: Cursor | None = None


class Disagreement(msgspec.Struct, frozen=True):
    check: str
    detail: str


class OrderCheck(msgspec.Struct, frozen=True):
    order_id: str
    status: str
    order_total: Money  # the total the order announced when placed
    charged: Money  # what the orders events charged, net of refunds
    ledger: Money  # what the ledger holds the customer owes for it
    fees: Money
    owed_to_partners: Money
    paid_out: Money
    agrees: bool
    disagreements: list[Disagreement]


class ThreeWayPage(msgspec.Struct, frozen=True):
    items: list[OrderCheck]
    next_cursor: str | None


class AccountBalance(msgspec.Struct, frozen=True):
    account: str
    currency: str
    # Signed minor units: positive is a debit balance, negative a credit balance.
    balance: int


class TrialBalance(msgspec.Struct, frozen=True):
    accounts: list[AccountBalance]
    # Per currency, the sum of every balance: zero in a sound ledger.
    totals: dict[str, int]
