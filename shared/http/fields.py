"""Field types for request bodies and queries, with the limits every API shares."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec

# No control characters (tab and newlines aside, C1 included) and no lone
# surrogates: they cannot be stored in PostgreSQL text and never mean anything
# in a name.  No bidirectional overrides or isolates and no zero-width or
# invisible characters either (the Hangul fillers and the grapheme joiner
# included): they make one name display as another.
_HIDDEN = (
    r"\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5"
    r"\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\u3164\ufeff\uffa0"
    r"\ufff9-\ufffb\ud800-\udfff"
)
# Python's "$" also matches before a final newline; this end does not (and is valid
# ECMA-262 too, so the OpenAPI document keeps the same pattern).
END = r"(?!\n)$"
_PRINTABLE = rf"^[^{_HIDDEN}]*{END}"
# A name is also more than whitespace, or the braille blank that looks like it.
_NAME = rf"^(?=[^{_HIDDEN}]*[^\s\u2800{_HIDDEN}])[^{_HIDDEN}]*{END}"

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=_NAME)]
Description = Annotated[str, msgspec.Meta(max_length=5000, pattern=_PRINTABLE)]
SearchText = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=_NAME)]
ResourceId = Annotated[
    str, msgspec.Meta(min_length=1, max_length=64, pattern=rf"^[a-z]{{2,5}}_[0-9a-z]{{26}}{END}")
]
Email = Annotated[
    str,
    msgspec.Meta(
        max_length=254,
        pattern=rf"^[^@\s{_HIDDEN}]{{1,64}}@[A-Za-z0-9.-]+\.[A-Za-z]{{2,}}{END}",
    ),
]
Limit = Annotated[int, msgspec.Meta(ge=1, le=500)]
Cursor = Annotated[
    str, msgspec.Meta(min_length=1, max_length=512, pattern=rf"^[A-Za-z0-9_-]+{END}")
]
AwareDatetime = Annotated[datetime, msgspec.Meta(tz=True)]
