"""Kafka subscriptions of the orders service: decode, then the use case."""

from __future__ import annotations

from aiokafka import AIOKafkaProducer

from services.orders import handlers
from shared.consumer import IdempotentConsumer
from shared.contracts import catalog_agreements, catalog_offerings
from shared.contracts.envelope import Envelope, Event, EventRegistry
from shared.db import Connection, Pool

CATALOG_TOPICS = (catalog_offerings.TOPIC, catalog_agreements.TOPIC)


async def _apply(conn: Connection, _: Envelope, event: Event) -> None:
    await handlers.apply_catalog_event(conn, event)


def catalog_copy(
    *, bootstrap: str, topic_prefix: str, pool: Pool, producer: AIOKafkaProducer
) -> IdempotentConsumer:
    """Keeps the local copy of the orderable catalog that placing an order reads."""
    name = f"{topic_prefix}orders.catalog-copy"
    return IdempotentConsumer(
        name=name,
        bootstrap=bootstrap,
        topics=[topic_prefix + topic.name for topic in CATALOG_TOPICS],
        registry=EventRegistry(event for topic in CATALOG_TOPICS for event in topic.events),
        handler=_apply,
        pool=pool,
        producer=producer,
    )
