"""Kafka subscriptions of the orders service: decode, then the use case."""

from __future__ import annotations

from collections.abc import Sequence

from aiokafka import AIOKafkaProducer

from services.orders import handlers
from services.orders.terms import OrderableTerms
from shared.consumer import BatchConsumer
from shared.contracts import catalog_agreements, catalog_offerings
from shared.contracts.envelope import EventRegistry
from shared.db import Connection, Pool
from shared.kafka import PLAINTEXT, KafkaSecurity
from shared.sequencing import Delivery

CATALOG_TOPICS = (catalog_offerings.TOPIC, catalog_agreements.TOPIC)


def catalog_copy(
    *,
    bootstrap: str,
    topic_prefix: str,
    pool: Pool,
    producer: AIOKafkaProducer,
    terms: OrderableTerms,
    security: KafkaSecurity = PLAINTEXT,
) -> BatchConsumer:
    """Keeps the local copy of the orderable catalog that placing an order reads.

    The catalog's topics are compacted and carry full state, so only an event
    newer than the last one applied for its key matters (``latest``).  Every
    transaction that applies events tells ``terms`` (every replica's memory of
    them) before it writes.
    """

    async def _apply(conn: Connection, deliveries: Sequence[Delivery]) -> None:
        await terms.changing(conn)
        for delivery in deliveries:
            await handlers.apply_catalog_event(conn, delivery.event)

    return BatchConsumer(
        name="orders.catalog-copy",
        bootstrap=bootstrap,
        topics=[topic.name for topic in CATALOG_TOPICS],
        topic_prefix=topic_prefix,
        security=security,
        registry=EventRegistry(event for topic in CATALOG_TOPICS for event in topic.events),
        handler=_apply,
        pool=pool,
        producer=producer,
        sequencing="latest",
    )
