"""The orders topic, booked into the ledger."""

from __future__ import annotations

from collections.abc import Sequence

from aiokafka import AIOKafkaProducer

from services.settlement.domain import LedgerRefused
from services.settlement.handlers import OrderEvent, settle_order_events
from shared.consumer import IdempotentConsumer, PermanentError
from shared.contracts import orders
from shared.contracts.envelope import Envelope, Event, EventRegistry
from shared.db import Connection, Pool

CONSUMER = "settlement-ledger"


class OrderEventBooker:
    """Books order events; the one entry point for the consumer, replays and the bench."""

    def __init__(self, fee_bps: int) -> None:
        self.fee_bps = fee_bps
        self.registry = EventRegistry(orders.TOPIC.events)

    async def apply(self, conn: Connection, events: Sequence[OrderEvent]) -> None:
        try:
            await settle_order_events(
                conn, events, fee_bps=self.fee_bps, decode=self.registry.decode
            )
        except LedgerRefused as exc:
            # Retrying cannot make an over-refund or an unknown charge bookable.
            raise PermanentError(str(exc)) from exc

    async def apply_one(self, conn: Connection, envelope: Envelope, event: Event) -> None:
        await self.apply(conn, [(envelope, event)])


def order_consumer(
    *,
    booker: OrderEventBooker,
    bootstrap: str,
    topic_prefix: str,
    pool: Pool,
    producer: AIOKafkaProducer,
    group_id: str | None = None,
) -> IdempotentConsumer:
    return IdempotentConsumer(
        name=CONSUMER,
        bootstrap=bootstrap,
        topics=[topic_prefix + orders.TOPIC.name],
        registry=booker.registry,
        handler=booker.apply_one,
        pool=pool,
        producer=producer,
        group_id=group_id,
    )
