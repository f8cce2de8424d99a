"""Ids: prefixed, opaque and sortable by creation time."""

from __future__ import annotations

import re
from unittest import mock

from hypothesis import given
from hypothesis import strategies as st

from shared.ids import new_id

SHAPE = re.compile(r"^(?P<prefix>[a-z]+)_[0-9a-hjkmnp-tv-z]{26}$")


@given(st.from_regex(r"[a-z]{2,5}", fullmatch=True))
def test_an_id_is_prefixed_crockford_base32(prefix: str) -> None:
    match = SHAPE.match(new_id(prefix))
    assert match is not None
    assert match.group("prefix") == prefix


@given(st.integers(0, 2**48 - 2), st.integers(1, 2**20))
def test_ids_sort_by_creation_time(earlier_ms: int, later_by_ms: int) -> None:
    later_ms = min(earlier_ms + later_by_ms, 2**48 - 1)
    with mock.patch("shared.ids.time.time_ns", return_value=earlier_ms * 1_000_000):
        first = new_id("ord")
    with mock.patch("shared.ids.time.time_ns", return_value=later_ms * 1_000_000):
        second = new_id("ord")
    assert first < second


def test_ids_made_now_sort_in_order_across_milliseconds_and_are_unique() -> None:
    made = [new_id("evt") for _ in range(2000)]
    assert len(set(made)) == len(made)
    # Within one millisecond the order is random; across milliseconds it is time order.
    milliseconds = [identifier[4:14] for identifier in made]
    assert milliseconds == sorted(milliseconds)


def _digit_by_digit(value: int, length: int) -> str:
    alphabet = "0123456789abcdefghjkmnpqrstvwxyz"
    return "".join(alphabet[(value >> (5 * i)) & 31] for i in reversed(range(length)))


@given(st.integers(0, 2**48 - 1), st.integers(0, 2**80 - 1))
def test_an_id_is_the_time_then_the_randomness_in_base32(millis: int, entropy: int) -> None:
    with (
        mock.patch("shared.ids.time.time_ns", return_value=millis * 1_000_000),
        mock.patch("shared.ids.secrets.randbits", return_value=entropy),
    ):
        made = new_id("ord")
    assert made == f"ord_{_digit_by_digit(millis, 10)}{_digit_by_digit(entropy, 16)}"
