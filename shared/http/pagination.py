"""Opaque cursors for keyset pagination."""

from __future__ import annotations

import base64
import binascii
from typing import Any

import msgspec

from shared.http.problems import HTTPProblem, invalid

DEFAULT_LIMIT = 50
MAX_LIMIT = 500


def encode_cursor(position: list[Any]) -> str:
    return base64.urlsafe_b64encode(msgspec.json.encode(position)).decode().rstrip("=")


def decode_cursor(cursor: str) -> list[Any]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        position = msgspec.json.decode(base64.urlsafe_b64decode(padded), type=list[Any])
    except (binascii.Error, msgspec.DecodeError, ValueError):
        raise _bad_cursor() from None
    if any(isinstance(value, str) and "\x00" in value for value in position):
        raise _bad_cursor()  # PostgreSQL text cannot hold NUL
    return position


def _bad_cursor() -> HTTPProblem:
    return invalid("cursor", "not a cursor this list returned")


def cursor_of_type(cursor: str, *types: type) -> list[Any]:
    position = decode_cursor(cursor)
    if len(position) != len(types) or not all(
        isinstance(value, kind) for value, kind in zip(position, types, strict=True)
    ):
        raise _bad_cursor()
    return position
