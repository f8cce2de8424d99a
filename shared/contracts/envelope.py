"""The envelope every event travels in, and the registry that decodes it."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

import msgspec

from shared.ids import new_id


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """Base of every event payload.  Subclasses set the two class variables."""

    EVENT_TYPE: ClassVar[str]
    SCHEMA_VERSION: ClassVar[int] = 1


class Envelope(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    # Outside the cyclic GC (``gc=False``): only strings, numbers and the raw
    # payload, so never in a cycle, and consumers hold thousands at once.
    event_id: str
    type: str
    schema_version: int
    occurred_at: datetime
    key: str
    producer: str
    correlation_id: str | None = None
    causation_id: str | None = None
    payload: msgspec.Raw = msgspec.Raw(b"null")
    # The aggregate's own sequence number (1, 2, 3 ... per key) when its topic
    # promises per-key order; None on topics and older messages without one.
    sequence: int | None = None


@dataclass(frozen=True)
class Topic:
    """A Kafka topic: its name, how it is keyed and the events it carries."""

    name: str
    partitions: int
    key_description: str
    events: tuple[type[Event], ...]
    compacted: bool = False
    # History a consumer rebuilds from (e.g. a ledger replayed from offset 0) is
    # never deleted by time; compacted topics keep the latest state per key anyway.
    retain_forever: bool = False

    @property
    def dead_letter(self) -> str:
        return f"{self.name}.dlq"


class UnknownEvent(Exception):
    """A message whose type/version this consumer does not know: dead-letter it."""


_encoder = msgspec.json.Encoder()
_envelope_decoder = msgspec.json.Decoder(Envelope)

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


def new_envelope(
    event: Event,
    *,
    key: str,
    producer: str,
    correlation_id: str | None = None,
    causation_id: str | None = None,
    sequence: int | None = None,
) -> Envelope:
    return Envelope(
        event_id=new_id("evt"),
        type=event.EVENT_TYPE,
        schema_version=event.SCHEMA_VERSION,
        occurred_at=datetime.now(UTC),
        key=key,
        producer=producer,
        correlation_id=correlation_id,
        causation_id=causation_id,
        payload=msgspec.Raw(_encoder.encode(event)),
        sequence=sequence,
    )


def encode_envelope(envelope: Envelope) -> bytes:
    return _encoder.encode(envelope)


def decode_envelope(data: bytes) -> Envelope:
    return _envelope_decoder.decode(data)


class EventRegistry:
    """Decodes the payloads one consumer handles; everything else is unknown.

    Each consumer builds its own registry from the event types it handles, so
    an event it does not know is refused loudly (dead letter) rather than
    silently ignored.  Older schema versions reach the current Struct through
    registered upcasters.
    """

    def __init__(self, events: Iterable[type[Event]]) -> None:
        self._decoders: dict[str, tuple[int, msgspec.json.Decoder[Any]]] = {}
        self._upcasters: dict[tuple[str, int], Upcaster] = {}
        for event_type in events:
            self._decoders[event_type.EVENT_TYPE] = (
                event_type.SCHEMA_VERSION,
                msgspec.json.Decoder(event_type),
            )

    def register_upcaster(self, event_type: str, from_version: int, upcast: Upcaster) -> None:
        self._upcasters[(event_type, from_version)] = upcast

    def decode(self, envelope: Envelope) -> Event:
        known = self._decoders.get(envelope.type)
        if known is None:
            raise UnknownEvent(f"unknown event type {envelope.type!r}")
        current_version, decoder = known
        if envelope.schema_version == current_version:
            event: Event = decoder.decode(envelope.payload)
            return event
        if envelope.schema_version > current_version:
            raise UnknownEvent(
                f"{envelope.type} v{envelope.schema_version} is newer than v{current_version}"
            )
        document: dict[str, Any] = msgspec.json.decode(envelope.payload)
        for version in range(envelope.schema_version, current_version):
            upcast = self._upcasters.get((envelope.type, version))
            if upcast is None:
                raise UnknownEvent(f"no upcaster for {envelope.type} v{version}")
            document = upcast(document)
        upcasted: Event = decoder.decode(_encoder.encode(document))
        return upcasted
