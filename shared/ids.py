"""Opaque, time-ordered identifiers.

IDs sort by creation time (48-bit milliseconds, then 80 random bits, as ULIDs
do), which keeps B-tree inserts local and gives lists a stable, meaningful
order for keyset pagination.  The prefix tells a human what the id names.
"""

from __future__ import annotations

import secrets
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case


def _encode(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        value, digit = divmod(value, 32)
        chars.append(_ALPHABET[digit])
    return "".join(reversed(chars))


def new_id(prefix: str) -> str:
    millis = time.time_ns() // 1_000_000
    entropy = secrets.randbits(80)
    return f"{prefix}_{_encode(millis, 10)}{_encode(entropy, 16)}"
