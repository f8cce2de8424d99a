"""The orders topic, booked into the ledger by the batch consumer, in each order's sequence."""

from __future__ import annotations

from collections.abc import Sequence

from aiokafka import AIOKafkaProducer

from services.settlement.domain import LedgerRefused
from services.settlement.handlers import settle_order_events
from services.settlement.split import SplitRefused
from shared.consumer import BatchConsumer, Delivery, PermanentError
from shared.contracts import orders
from shared.contracts.envelope import EventRegistry
from shared.db import Connection, Pool

CONSUMER = "settlement-ledger"


class OrderEventBooker:
    """Books order events; the one entry point for the consumer, the tests and the bench."""

    def __init__(self, fee_bps: int) -> None:
        self.fee_bps = fee_bps
        self.registry = EventRegistry(orders.TOPIC.events)

    async def apply(self, conn: Connection, deliveries: Sequence[Delivery]) -> None:
        try:
            await settle_order_events(
                conn,
                [(delivery.envelope, delivery.event) for delivery in deliveries],
                fee_bps=self.fee_bps,
            )
        except (LedgerRefused, SplitRefused) as exc:
            # Retrying cannot make an over-refund, an unknown charge or a share
            # outside 0..10000 bookable: dead-letter at once, without retries.
            raise PermanentError(str(exc)) from exc


def order_consumer(
    *,
    booker: OrderEventBooker,
    bootstrap: str,
    topic_prefix: str,
    pool: Pool,
    producer: AIOKafkaProducer,
    group_id: str | None = None,
    max_batch: int = 2_000,
) -> BatchConsumer:
    """Chunks of one partition's new events, one transaction each; an order's events in
    its sequence (``strict``: a gap is parked by the consumer until it fills)."""
    return BatchConsumer(
        name=CONSUMER,
        bootstrap=bootstrap,
        topics=[orders.TOPIC.name],
        topic_prefix=topic_prefix,
        registry=booker.registry,
        handler=booker.apply,
        pool=pool,
        producer=producer,
        group_id=group_id,
        max_batch=max_batch,
        sequencing="strict",
    )
