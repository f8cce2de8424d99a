"""Opaque pagination cursors: they round-trip, and garbage is a 422 naming ``cursor``."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.http.pagination import cursor_of_type, decode_cursor, encode_cursor
from shared.http.problems import HTTPProblem

# What the server puts in a cursor: database values, so never NUL (PostgreSQL
# text cannot hold it) and never a lone surrogate (not encodable as UTF-8).
cursor_chars = st.characters(blacklist_characters="\x00", codec="utf-8")

positions = st.lists(
    st.one_of(
        st.integers(-(2**63), 2**64 - 1),
        st.text(cursor_chars, max_size=30),
        st.booleans(),
        st.none(),
    ),
    max_size=5,
)


@given(positions)
def test_a_cursor_round_trips(position: list[Any]) -> None:
    cursor = encode_cursor(position)
    assert decode_cursor(cursor) == position
    assert not set(cursor) & set("=+/")  # URL-safe, unpadded


def assert_bad_cursor(problem: HTTPProblem) -> None:
    assert problem.problem.status == 422
    assert [e.field for e in problem.problem.errors] == ["cursor"]


@pytest.mark.parametrize(
    "cursor",
    ["", "!!!", "not a cursor", "e30", "eyJhIjoxfQ", "bnVsbA", "é", "MTIz", "W", "Wy"],
)
def test_garbage_is_a_422(cursor: str) -> None:
    with pytest.raises(HTTPProblem) as caught:
        decode_cursor(cursor)
    assert_bad_cursor(caught.value)


@given(st.text(max_size=60))
def test_any_text_is_a_cursor_or_a_422(text: str) -> None:
    try:
        position = decode_cursor(text)
    except HTTPProblem as problem:
        assert_bad_cursor(problem)
    else:
        assert isinstance(position, list)


@given(st.text(cursor_chars, max_size=20), st.integers(0, 2**40))
def test_cursor_of_type_checks_the_shape(created: str, number: int) -> None:
    cursor = encode_cursor([created, number])
    assert cursor_of_type(cursor, str, int) == [created, number]
    for types in ((int, str), (str,), (str, int, int)):
        with pytest.raises(HTTPProblem) as caught:
            cursor_of_type(cursor, *types)
        assert_bad_cursor(caught.value)


def test_a_cursor_holding_a_nul_character_is_a_422() -> None:
    # PostgreSQL text cannot hold NUL: let through, a forged cursor becomes a 500.
    with pytest.raises(HTTPProblem) as caught:
        decode_cursor(encode_cursor(["a\x00b", 1]))
    assert_bad_cursor(caught.value)
