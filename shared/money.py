"""Money on the wire and the currencies the marketplace accepts."""

from __future__ import annotations

from typing import Annotated

import msgspec

# ISO 4217 codes with their minor-unit exponent.  Amounts are always integers
# in minor units, so the exponent only matters for display and for refusing
# currencies we cannot settle.
CURRENCY_EXPONENTS: dict[str, int] = {
    "USD": 2,
    "EUR": 2,
    "GBP": 2,
    "CHF": 2,
    "CAD": 2,
    "AUD": 2,
    "NZD": 2,
    "SEK": 2,
    "NOK": 2,
    "DKK": 2,
    "PLN": 2,
    "CZK": 2,
    "SGD": 2,
    "HKD": 2,
    "INR": 2,
    "BRL": 2,
    "MXN": 2,
    "ZAR": 2,
    "CNY": 2,
    "JPY": 0,
    "KRW": 0,
}

CurrencyCode = Annotated[
    # "(?!\n)$": Python's "$" alone also matches before a final newline.
    str, msgspec.Meta(pattern=r"^[A-Z]{3}(?!\n)$", description="ISO 4217 currency code")
]

# The largest amount any single price or line may carry: ten billion major
# units.  Far above any real deal, far below where 64-bit sums could overflow.
MAX_AMOUNT = 1_000_000_000_000

MinorUnits = Annotated[int, msgspec.Meta(ge=0, le=MAX_AMOUNT)]


class Money(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    amount: int
    currency: CurrencyCode


def is_supported_currency(code: str) -> bool:
    return code in CURRENCY_EXPONENTS
