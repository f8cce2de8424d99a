"""Envelope and EventRegistry: decode what is known, refuse the rest, upcast old versions."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar, cast

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.contracts.envelope import (
    Envelope,
    Event,
    EventRegistry,
    Topic,
    UnknownEvent,
    decode_envelope,
    encode_envelope,
    new_envelope,
)
from shared.outbox import append, kafka_headers


class Shipped(Event, frozen=True, kw_only=True):
    EVENT_TYPE: ClassVar[str] = "test.shipped"
    SCHEMA_VERSION: ClassVar[int] = 3

    order_id: str
    carrier: str
    parcels: int = 1


class Other(Event, frozen=True, kw_only=True):
    EVENT_TYPE: ClassVar[str] = "test.other"

    value: int


def envelope_of(event_type: str, version: int, payload: dict[str, Any]) -> Envelope:
    return Envelope(
        event_id="evt_1",
        type=event_type,
        schema_version=version,
        occurred_at=datetime.now(UTC),
        key="k",
        producer="tests",
        payload=msgspec.Raw(msgspec.json.encode(payload)),
    )


def test_new_envelope_carries_type_version_key_and_payload() -> None:
    event = Shipped(order_id="ord_1", carrier="ups")
    envelope = new_envelope(event, key="ord_1", producer="orders", causation_id="evt_0")
    assert envelope.type == "test.shipped"
    assert envelope.schema_version == 3
    assert envelope.key == "ord_1"
    assert envelope.event_id.startswith("evt_")
    assert envelope.causation_id == "evt_0"
    assert envelope.occurred_at.tzinfo is not None
    assert EventRegistry([Shipped]).decode(envelope) == event


@given(
    order_id=st.text(max_size=40),
    carrier=st.text(max_size=40),
    parcels=st.integers(-(2**63), 2**63 - 1),
    key=st.text(min_size=1, max_size=40),
)
def test_the_wire_format_round_trips(order_id: str, carrier: str, parcels: int, key: str) -> None:
    event = Shipped(order_id=order_id, carrier=carrier, parcels=parcels)
    envelope = new_envelope(event, key=key, producer="tests")
    wire = encode_envelope(envelope)
    again = decode_envelope(wire)
    assert again == envelope
    assert EventRegistry([Shipped]).decode(again) == event
    # JSON on the wire, readable by any Kafka client.
    assert msgspec.json.decode(wire)["payload"]["order_id"] == order_id


def test_an_unknown_type_is_refused() -> None:
    registry = EventRegistry([Shipped])
    with pytest.raises(UnknownEvent, match="unknown event type"):
        registry.decode(envelope_of("test.other", 1, {"value": 1}))


def test_a_newer_version_is_refused() -> None:
    registry = EventRegistry([Shipped])
    with pytest.raises(UnknownEvent, match="newer"):
        registry.decode(envelope_of("test.shipped", 4, {"order_id": "o", "carrier": "c"}))


def test_older_versions_reach_the_current_struct_through_the_upcaster_chain() -> None:
    registry = EventRegistry([Shipped])
    # v1 called the carrier "shipper"; v2 added the required-by-then parcels as "boxes".
    registry.register_upcaster(
        "test.shipped", 1, lambda doc: {"order_id": doc["order_id"], "carrier": doc["shipper"]}
    )
    registry.register_upcaster(
        "test.shipped", 2, lambda doc: {**doc, "parcels": doc.get("boxes", 1)}
    )
    from_v1 = registry.decode(envelope_of("test.shipped", 1, {"order_id": "o", "shipper": "dhl"}))
    assert from_v1 == Shipped(order_id="o", carrier="dhl", parcels=1)
    from_v2 = registry.decode(
        envelope_of("test.shipped", 2, {"order_id": "o", "carrier": "dhl", "boxes": 4})
    )
    assert from_v2 == Shipped(order_id="o", carrier="dhl", parcels=4)


def test_a_missing_upcaster_is_refused() -> None:
    registry = EventRegistry([Shipped])
    registry.register_upcaster("test.shipped", 2, lambda doc: doc)
    with pytest.raises(UnknownEvent, match="no upcaster"):
        registry.decode(envelope_of("test.shipped", 1, {"order_id": "o", "carrier": "c"}))


def test_a_payload_that_breaks_the_contract_is_a_decode_error() -> None:
    # The consumer dead-letters msgspec.DecodeError (ValidationError is one).
    registry = EventRegistry([Shipped])
    with pytest.raises(msgspec.DecodeError):
        registry.decode(envelope_of("test.shipped", 3, {"order_id": "o"}))
    with pytest.raises(msgspec.DecodeError):
        decode_envelope(b"\x00\xffnot json")
    with pytest.raises(msgspec.DecodeError):
        decode_envelope(b'{"event_id": "e"}')


def test_the_dead_letter_topic_name() -> None:
    assert Topic("catalog.offerings", 6, "offering id", (Other,)).dead_letter == (
        "catalog.offerings.dlq"
    )


async def test_append_refuses_an_event_that_does_not_belong_on_the_topic() -> None:
    topic = Topic("test.topic", 3, "k", (Shipped,))
    with pytest.raises(TypeError, match="does not belong"):
        await append(cast(Any, None), topic, Other(value=1), key="k", producer="tests")


def test_kafka_headers_carry_type_and_id() -> None:
    headers = dict(kafka_headers("test.shipped", "evt_1"))
    assert headers["event-type"] == b"test.shipped"
    assert headers["event-id"] == b"evt_1"
    assert headers["content-type"] == b"application/json"
