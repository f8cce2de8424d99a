"""Field types for request bodies and queries, with the limits every API shares."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec

# No control characters (tab and newlines aside, C1 included) and no lone
# surrogates: they cannot be stored in PostgreSQL text and never mean anything
# in a name.  No bidirectional overrides or isolates and no zero-width or
# invisible characters either: they make one name display as another.
_HIDDEN = (
    r"\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u00ad\u061c\u180e\u200b-\u200f"
    r"\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb\ud800-\udfff"
)
_PRINTABLE = rf"^[^{_HIDDEN}]*$"
# A name is also more than whitespace.
_NAME = rf"^(?=[^{_HIDDEN}]*\S)[^{_HIDDEN}]*$"

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=_NAME)]
Description = Annotated[str, msgspec.Meta(max_length=5000, pattern=_PRINTABLE)]
SearchText = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=_NAME)]
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
