"""Settlement's request and response bodies, as the public contract names them."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

from services.settlement.reconciliation import LineKind
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


StatementKind = Literal["charge", "refund", "release", "payout", "paid", "failed"]


class StatementLine(msgspec.Struct, frozen=True, omit_defaults=True):
    id: str
    booked_at: datetime
    kind: StatementKind
    account: str  # pending, available or in_transit
    part: str  # share, margin, release, payout, paid, failed
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
    # When the bank returned it (status ``failed``): its money is available again.
    failed_at: datetime | None = None


class PayoutPage(msgspec.Struct, frozen=True):
    items: list[PayoutView]
    next_cursor: str | None


class BankStatementLine(_Request, frozen=True, forbid_unknown_fields=True):
    """A booking on the marketplace's bank account: `amount` in minor units of the payout's
    currency, as the bank shows it. `kind` says what the bank did: `booked` (the default)
    paid the payout out, and with the payout's amount pays it; `returned` sent it back,
    and with the payout's amount (positive: the sum returned) fails it, its money available
    again. The sign never means a return: a `booked` line with the negative of the amount
    (banks often show outgoing transfers so) is `mismatched` and moves nothing, as is a
    `returned` line with any amount but the payout's."""

    reference: BankReference
    amount: BankAmount
    booked_at: AwareDatetime
    kind: LineKind = "booked"


class BankStatement(_Request, frozen=True, forbid_unknown_fields=True):
    lines: Annotated[list[BankStatementLine], msgspec.Meta(max_length=10_000)]


class ReconciledLine(msgspec.Struct, frozen=True, omit_defaults=True):
    """One statement line, or one payout the statement should have booked (``missing``)."""

    reference: str
    expected: Annotated[
        Money | None,
        msgspec.Meta(description="The amount of the payout named by `reference`."),
    ] = None
    booked: Annotated[
        Money | None,
        msgspec.Meta(
            description="What the bank booked, in the payout's currency; absent on a line "
            "naming no payout, whose currency is unknown (see `booked_amount`)."
        ),
    ] = None
    booked_amount: Annotated[
        int | None,
        msgspec.Meta(
            description="What the bank booked, in integer minor units as the statement gave "
            "it, on every line from the statement. On a line naming no payout it is the only "
            "amount: the statement does not say its currency, and none is invented."
        ),
    ] = None
    payout_id: str | None = None
    status: Annotated[
        PayoutStatus | None,
        msgspec.Meta(description="The payout's status once this statement was applied."),
    ] = None
    kind: Annotated[
        LineKind,
        msgspec.Meta(description="The statement line's `kind` (absent: `booked`)."),
    ] = "booked"


class ReconciliationReport(msgspec.Struct, frozen=True):
    """What a bank statement said about payouts, and what it changed.

    ``matched``: a pending payout booked with its amount, now ``paid``.
    ``returned``: the bank sent a payout back (a line of kind ``returned``
    with its amount), now ``failed``; its money is available to the partner
    again and a later payout run pays it under a new payout.
    ``already_reconciled``: a booking or return an earlier statement already
    recorded (a statement posted twice, or overlapping the last); moves nothing.
    ``mismatched``: the payout's reference with another amount (the negative
    of its amount included: a sign is never a return); the payout stays as it
    is.  ``unexpected``: a line naming no payout, or a second
    booking of one payout in the statement.  ``missing``: payouts still in
    transit that no line names, made on or before ``statement_end``.
    """

    id: str
    created_at: datetime
    matched: list[ReconciledLine]
    missing: list[ReconciledLine]
    unexpected: list[ReconciledLine]
    mismatched: list[ReconciledLine]
    returned: list[ReconciledLine] = []
    already_reconciled: list[ReconciledLine] = []
    statement_end: Annotated[
        datetime | None,
        msgspec.Meta(
            description="The statement's latest booked_at (null for an empty statement): "
            "payouts made after it could not be on this statement and are not missing."
        ),
    ] = None


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
