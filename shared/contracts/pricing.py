"""How a component is priced: the same shape in the catalog API and its events."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from shared.money import MinorUnits

# "(?!\n)$": Python's "$" alone also matches before a final newline.
UnitName = Annotated[
    str, msgspec.Meta(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9 ._/-]+(?!\n)$")
]


class OneTimePricing(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="one_time", tag_field="model"
):
    unit_amount: MinorUnits


class SubscriptionPricing(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="subscription", tag_field="model"
):
    unit_amount: MinorUnits
    interval: Literal["month", "year"]


class UsagePricing(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="usage", tag_field="model"
):
    unit_amount: MinorUnits
    unit: UnitName


Pricing = OneTimePricing | SubscriptionPricing | UsagePricing
