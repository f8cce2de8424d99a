"""The split engine: exact, deterministic, never negative, refunds reverse exactly."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.settlement.split import (
    NO_PARTS,
    RULE,
    Parts,
    SplitRefused,
    allocate,
    split_charge,
    split_refund,
    three_parts,
)

bps = st.integers(min_value=0, max_value=10_000)
unit_amounts = st.integers(min_value=0, max_value=10_000_000)
quantities = st.integers(min_value=1, max_value=10_000)


def test_a_hand_computed_split() -> None:
    # 3 % of 10,000 is 300; 70 % of the 9,700 left is 6,790; the owner keeps 2,910.
    split = split_charge(10_000, fee_bps=300, share_bps=7_000)
    assert (split.fee, split.share, split.margin, split.rule) == (300, 6_790, 2_910, RULE)


def test_leftover_units_go_to_the_largest_remainders() -> None:
    # exact parts of 999: fee 29.97, share 678.279, margin 290.751 -> floors 29, 678, 290
    # leave 2 units; the largest remainders are fee (.97) then margin (.751).
    split = split_charge(999, fee_bps=300, share_bps=7_000)
    assert (split.fee, split.share, split.margin) == (30, 678, 291)


def test_ties_go_to_the_earlier_part() -> None:
    assert allocate(1, [1, 1]) == [1, 0]
    assert allocate(2, [1, 1, 1]) == [1, 1, 0]


@given(
    total=st.integers(0, 10**12),
    weights=st.tuples(*[st.integers(0, 10**8)] * 3)
    | st.tuples(*[st.sampled_from([0, 1, 2, 3, 7])] * 3),
)
def test_the_unrolled_three_way_split_is_the_rule_itself(
    total: int, weights: tuple[int, int, int]
) -> None:
    if sum(weights) == 0 and total:
        with pytest.raises(SplitRefused):
            three_parts(total, *weights)
        return
    assert list(three_parts(total, *weights)) == allocate(total, weights)


def test_the_unrolled_split_breaks_every_tie_like_the_rule() -> None:
    tied = [(1, 1, 1), (2, 1, 1), (1, 2, 1), (1, 1, 2), (2, 2, 1), (1, 2, 2), (2, 1, 2)]
    for total in range(12):
        for weights in tied:
            assert list(three_parts(total, *weights)) == allocate(total, weights)


def rule_as_documented(total: int, weights: tuple[int, int, int]) -> tuple[int, int, int]:
    """The module doc's rule in exact rationals, written apart from ``allocate``: the oracle."""
    exact = [Fraction(total * weight, sum(weights)) for weight in weights]
    floors = [math.floor(part) for part in exact]
    by_remainder = sorted(range(3), key=lambda i: (floors[i] - exact[i], i))
    for index in by_remainder[: total - sum(floors)]:
        floors[index] += 1
    return floors[0], floors[1], floors[2]


@settings(max_examples=2_000)
@given(
    gross=st.integers(0, 10**12) | st.integers(0, 30),
    fee_bps=bps | st.sampled_from([0, 1, 5_000, 9_999, 10_000]),
    share_bps=bps | st.sampled_from([0, 1, 5_000, 9_999, 10_000]),
)
def test_a_charge_splits_exactly_as_the_documented_rule(
    gross: int, fee_bps: int, share_bps: int
) -> None:
    net = 10_000 - fee_bps
    weights = (fee_bps * 10_000, net * share_bps, net * (10_000 - share_bps))
    split = split_charge(gross, fee_bps=fee_bps, share_bps=share_bps)
    assert (split.fee, split.share, split.margin) == rule_as_documented(gross, weights)


@settings(max_examples=2_000)
@given(
    total=st.integers(0, 10**12) | st.integers(0, 12),
    weights=st.tuples(*[st.integers(0, 10**8) | st.sampled_from([0, 1, 2, 3])] * 3).filter(
        lambda w: sum(w) > 0
    ),
)
def test_the_unrolled_split_is_the_documented_rule_ties_included(
    total: int, weights: tuple[int, int, int]
) -> None:
    assert three_parts(total, *weights) == rule_as_documented(total, weights)


def test_the_owners_own_part_has_no_margin() -> None:
    split = split_charge(12_345, fee_bps=300, share_bps=10_000)
    assert split.margin == 0
    assert split.fee + split.share == 12_345


@given(unit=unit_amounts, quantity=quantities, fee_bps=bps, share_bps=bps)
def test_parts_sum_exactly_and_none_is_negative(
    unit: int, quantity: int, fee_bps: int, share_bps: int
) -> None:
    gross = unit * quantity
    split = split_charge(gross, fee_bps=fee_bps, share_bps=share_bps)
    assert split.fee + split.share + split.margin == gross
    assert min(split.fee, split.share, split.margin) >= 0


@given(gross=st.integers(0, 10**12), fee_bps=bps, share_bps=bps)
def test_each_part_is_within_one_unit_of_its_exact_value(
    gross: int, fee_bps: int, share_bps: int
) -> None:
    split = split_charge(gross, fee_bps=fee_bps, share_bps=share_bps)
    exact_fee = gross * fee_bps * 10_000
    exact_share = gross * (10_000 - fee_bps) * share_bps
    assert abs(split.fee * 10**8 - exact_fee) < 10**8
    assert abs(split.share * 10**8 - exact_share) < 10**8


@given(gross=st.integers(0, 10**12), fee_bps=bps, share_bps=bps)
def test_the_same_input_gives_the_same_split(gross: int, fee_bps: int, share_bps: int) -> None:
    assert split_charge(gross, fee_bps=fee_bps, share_bps=share_bps) == split_charge(
        gross, fee_bps=fee_bps, share_bps=share_bps
    )


@given(gross=st.integers(0, 10**9), fee_bps=bps, share_bps=bps)
def test_a_full_refund_reverses_its_charge_exactly(
    gross: int, fee_bps: int, share_bps: int
) -> None:
    charge = split_charge(gross, fee_bps=fee_bps, share_bps=share_bps)
    assert split_refund(gross, charge).parts == charge.parts


@given(
    gross=st.integers(1, 10**9),
    fee_bps=bps,
    share_bps=bps,
    cuts=st.lists(st.floats(0, 1, allow_nan=False), min_size=1, max_size=8),
)
def test_partial_refunds_never_over_refund_any_party_and_add_up_to_the_charge(
    gross: int, fee_bps: int, share_bps: int, cuts: list[float]
) -> None:
    charge = split_charge(gross, fee_bps=fee_bps, share_bps=share_bps)
    refunded = NO_PARTS
    for cut in cuts:
        left = gross - refunded.total
        amount = min(left, int(left * cut))
        refund = split_refund(amount, charge, refunded)
        assert refund.parts.total == amount
        assert min(refund.fee, refund.share, refund.margin) >= 0
        refunded = refunded + refund.parts
        assert refunded.fee <= charge.fee
        assert refunded.share <= charge.share
        assert refunded.margin <= charge.margin
    last = split_refund(gross - refunded.total, charge, refunded)
    assert refunded + last.parts == charge.parts


def test_a_refund_larger_than_what_is_left_is_refused() -> None:
    charge = split_charge(1_000, fee_bps=300, share_bps=5_000)
    with pytest.raises(SplitRefused):
        split_refund(601, charge, Parts(12, 194, 194))


@pytest.mark.parametrize(("fee_bps", "share_bps"), [(-1, 0), (10_001, 0), (0, 10_001)])
def test_rates_outside_the_basis_point_range_are_refused(fee_bps: int, share_bps: int) -> None:
    with pytest.raises(SplitRefused):
        split_charge(100, fee_bps=fee_bps, share_bps=share_bps)


def test_negative_money_is_refused() -> None:
    with pytest.raises(SplitRefused):
        split_charge(-1, fee_bps=300, share_bps=0)
