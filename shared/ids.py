"""Opaque, time-ordered identifiers.

IDs sort by creation time (48-bit milliseconds, then 80 random bits, as ULIDs
do), which keeps B-tree inserts local and gives lists a stable, meaningful
order for keyset pagination.  The prefix tells a human what the id names.
"""

from __future__ import annotations

import secrets
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case
# Two digits at a time: a placement makes nine ids, and digit by digit they cost
# about a tenth of its CPU.
_PAIRS = [high + low for high in _ALPHABET for low in _ALPHABET]
_PAIR_SHIFTS = range(120, -1, -10)  # 26 digits = 130 bits = 13 pairs, most significant first
_TIME_MASK = (1 << 50) - 1  # the 10 time digits hold 50 bits


def new_id(prefix: str) -> str:
    millis = time.time_ns() // 1_000_000
    value = (millis & _TIME_MASK) << 80 | secrets.randbits(80)
    return f"{prefix}_{''.join([_PAIRS[(value >> shift) & 1023] for shift in _PAIR_SHIFTS])}"
