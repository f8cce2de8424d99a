"""The orders topic, booked into the ledger by the batch consumer, in each order's sequence."""

from __future__ import annotations

import gc
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer

from services.settlement import order_events
from services.settlement.domain import LedgerRefused
from services.settlement.handlers import settle_order_events
from services.settlement.split import SplitRefused
from shared.consumer import BatchConsumer, Delivery, PermanentError
from shared.contracts import orders
from shared.contracts.envelope import EventRegistry
from shared.db import Connection, Pool
from shared.kafka import PLAINTEXT, KafkaSecurity

CONSUMER = "settlement-ledger"
# How long a partition's worker waits for more order events before booking a
# chunk smaller than a full one: at a steady 400 events/s, 100 ms cut the CPU
# per event by 17-52 % in our runs (chunks of ~12 events instead of 4-9) for
# up to ~100 ms more delay
# (bench/settlement_steady.py); a backlog fills chunks at once and never waits.
LINGER_SECONDS = 0.1


def collect_garbage_for_batches() -> None:
    """Tune the process's cyclic garbage collector for catching up on a backlog.

    Booking a chunk allocates ~100 container objects per event (decoded
    events, records, rows), almost none in cycles.  With the default
    threshold (700 allocations) the collector ran every few events, and
    each older-generation pass walked every live object (the consumer's
    buffered records): ~15 % of the booking's CPU.  Objects alive after
    start-up are frozen out of collections, and young collections wait
    for 20,000 allocations.  For the service process (``__main__``) and
    the bench that stands in for it, not for test processes.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


class OrderEventBooker:
    """Books order events; the one entry point for the consumer, the tests and the bench."""

    def __init__(self, fee_bps: int) -> None:
        self.fee_bps = fee_bps
        # The orders topic's events, decoded to what the ledger reads (``order_events``).
        self.registry = EventRegistry(order_events.EVENTS)

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
    linger_seconds: float = LINGER_SECONDS,
    security: KafkaSecurity = PLAINTEXT,
) -> BatchConsumer:
    """Chunks of one partition's new events, one transaction each; an order's events in
    its sequence (``strict``: a gap is parked by the consumer until it fills)."""
    return BatchConsumer(
        name=CONSUMER,
        bootstrap=bootstrap,
        topics=[orders.TOPIC.name],
        topic_prefix=topic_prefix,
        security=security,
        registry=booker.registry,
        handler=booker.apply,
        pool=pool,
        producer=producer,
        group_id=group_id,
        max_batch=max_batch,
        linger_seconds=linger_seconds,
        sequencing="strict",
    )
