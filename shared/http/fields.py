"""Field types for request bodies and queries, with the limits every API shares."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec

# No control characters (tab and newlines aside) and no lone surrogates: they
# cannot be stored in PostgreSQL text and never mean anything in a name.
_PRINTABLE = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]*$"

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=_PRINTABLE)]
Description = Annotated[str, msgspec.Meta(max_length=5000, pattern=_PRINTABLE)]
SearchText = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=_PRINTABLE)]
ResourceId = Annotated[
    str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[a-z]{2,5}_[0-9a-z]{26}$")
]
Email = Annotated[
    str,
    msgspec.Meta(
        max_length=254, pattern=r"^[^@\s\x00-\x1f\x7f]{1,64}@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$"
    ),
]
Limit = Annotated[int, msgspec.Meta(ge=1, le=500)]
Cursor = Annotated[str, msgspec.Meta(min_length=1, max_length=512, pattern=r"^[A-Za-z0-9_-]+$")]
AwareDatetime = Annotated[datetime, msgspec.Meta(tz=True)]
