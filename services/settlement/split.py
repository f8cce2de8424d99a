"""The split engine: how one charged amount is shared, exact to the minor unit.

Pure integer arithmetic, no I/O.  A charged component amount ``gross`` is
shared by three parties:

* the marketplace **fee**: ``fee_bps`` of ``gross``;
* the component partner's **share**: ``share_bps`` of what is left after the fee
  (``share_bps`` comes from the co-sell agreement; 10000 for the owner's own parts);
* the owner's co-sell **margin**: the remainder.

Rounding rule ``largest-remainder-v1`` (Hamilton's method).  The exact parts are
the rationals ``gross x w_i / 10^8`` with weights
``w = (fee_bps x 10^4, (10^4 - fee_bps) x share_bps, (10^4 - fee_bps) x (10^4 - share_bps))``,
which sum to ``10^8``.  Each part first gets the floor of its exact value; the
few minor units left over (fewer than the number of parts) go one each to the
parts with the largest fractional remainders, ties to the earlier part in the
order fee, share, margin.  So the parts always sum to ``gross``, none is
negative, none differs from its exact value by a unit or more, and the same
input always gives the same split.

Refunds use the same rule over what is still unrefunded of the charge: a
refund of ``amount`` is shared in proportion to the parts not yet refunded.
Each refunded part is therefore at most what is left of it (no party is ever
over-refunded), and refunding the whole remainder, in one refund or in
several, gives back each part exactly.

Every split records the rule's name; a future rule gets a new name and past
splits keep theirs, so a change of rule never rewrites history.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

RULE = "largest-remainder-v1"
FULL_BPS = 10_000
DEFAULT_FEE_BPS = 300


class SplitRefused(ValueError):
    """Inputs no split can honour: negative money, a rate outside 0..10000, an over-refund."""


class Parts(msgspec.Struct, frozen=True, gc=False):
    fee: int
    share: int
    margin: int

    @property
    def total(self) -> int:
        return self.fee + self.share + self.margin

    def __sub__(self, other: Parts) -> Parts:
        return Parts(self.fee - other.fee, self.share - other.share, self.margin - other.margin)

    def __add__(self, other: Parts) -> Parts:
        return Parts(self.fee + other.fee, self.share + other.share, self.margin + other.margin)


NO_PARTS = Parts(0, 0, 0)


class Split(msgspec.Struct, frozen=True, gc=False):
    """How ``gross`` was shared, with everything needed to check it by hand."""

    gross: int
    fee_bps: int
    share_bps: int
    parts: Parts
    rule: str = RULE

    @property
    def fee(self) -> int:
        return self.parts.fee

    @property
    def share(self) -> int:
        return self.parts.share

    @property
    def margin(self) -> int:
        return self.parts.margin


def allocate(total: int, weights: Sequence[int]) -> list[int]:
    """``total`` shared in proportion to ``weights`` by largest remainder (see module doc)."""
    if total < 0 or any(weight < 0 for weight in weights):
        raise SplitRefused("amounts and weights must not be negative")
    denominator = sum(weights)
    if denominator == 0:
        if total:
            raise SplitRefused(f"cannot share {total} among nothing")
        return [0] * len(weights)
    parts: list[int] = []
    remainders: list[int] = []
    for weight in weights:
        whole, remainder = divmod(total * weight, denominator)
        parts.append(whole)
        remainders.append(remainder)
    leftover = total - sum(parts)
    if leftover:
        by_remainder = sorted(range(len(weights)), key=lambda i: (-remainders[i], i))
        for index in by_remainder[:leftover]:
            parts[index] += 1
    return parts


def three_parts(total: int, w0: int, w1: int, w2: int) -> tuple[int, int, int]:
    """``allocate(total, (w0, w1, w2))``, unrolled: every split has three parts.

    The same rule in straight-line integer arithmetic (no list, no sort): at
    ledger rates the split runs once per charged component, and the general
    loop cost more than booking the rest of the charge.  Property-tested
    against ``allocate``.
    """
    if total < 0 or w0 < 0 or w1 < 0 or w2 < 0:
        raise SplitRefused("amounts and weights must not be negative")
    denominator = w0 + w1 + w2
    if denominator == 0:
        if total:
            raise SplitRefused(f"cannot share {total} among nothing")
        return 0, 0, 0
    p0, r0 = divmod(total * w0, denominator)
    p1, r1 = divmod(total * w1, denominator)
    p2, r2 = divmod(total * w2, denominator)
    leftover = total - p0 - p1 - p2
    if leftover == 1:
        # The largest remainder, ties to the earlier part.
        if r0 >= r1 and r0 >= r2:
            p0 += 1
        elif r1 >= r2:
            p1 += 1
        else:
            p2 += 1
    elif leftover == 2:
        # All but the smallest remainder, ties: the later part goes without.
        if r2 <= r1 and r2 <= r0:
            p0, p1 = p0 + 1, p1 + 1
        elif r1 <= r0:
            p0, p2 = p0 + 1, p2 + 1
        else:
            p1, p2 = p1 + 1, p2 + 1
    return p0, p1, p2


def _check_bps(name: str, value: int) -> None:
    if not 0 <= value <= FULL_BPS:
        raise SplitRefused(f"{name} must be within 0..{FULL_BPS}, not {value}")


def split_charge(gross: int, *, fee_bps: int, share_bps: int) -> Split:
    if not (0 <= fee_bps <= FULL_BPS and 0 <= share_bps <= FULL_BPS):
        _check_bps("fee_bps", fee_bps)
        _check_bps("share_bps", share_bps)
    net_bps = FULL_BPS - fee_bps
    fee, share, margin = three_parts(
        gross, fee_bps * FULL_BPS, net_bps * share_bps, net_bps * (FULL_BPS - share_bps)
    )
    return Split(gross, fee_bps, share_bps, Parts(fee, share, margin))


def split_refund(amount: int, charge: Split, refunded: Parts = NO_PARTS) -> Split:
    """The parts of ``charge`` that a refund of ``amount`` gives back, after ``refunded``."""
    remaining = charge.parts - refunded
    if amount > remaining.total:
        raise SplitRefused(
            f"a refund of {amount} exceeds the {remaining.total} left of a charge of {charge.gross}"
        )
    fee, share, margin = three_parts(amount, remaining.fee, remaining.share, remaining.margin)
    return Split(amount, charge.fee_bps, charge.share_bps, Parts(fee, share, margin))
