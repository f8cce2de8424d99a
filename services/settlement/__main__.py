"""``python -m services.settlement``: the ledger, payouts and bank reconciliation."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import msgspec

from services.settlement.consumers import (
    LINGER_SECONDS,
    OrderEventBooker,
    collect_garbage_for_batches,
    order_consumer,
)
from services.settlement.http import SettlementHttp, build_api
from services.settlement.split import DEFAULT_FEE_BPS, FULL_BPS
from shared import account_generations
from shared.contracts import orders, payouts
from shared.service import Compose, Composition, Runtime, ServiceSettings, main

# What it reads (orders, accounts) and writes (payouts); creating a topic that exists is a no-op.
TOPICS = (orders.TOPIC, payouts.TOPIC, *account_generations.TOPICS)
MIGRATIONS = Path(__file__).parent / "migrations"
# Settlement refuses tokens a rotation superseded, from its own view of catalog.accounts.
EXTRA_MIGRATIONS = (account_generations.MIGRATIONS,)


class SettlementSettings(ServiceSettings, kw_only=True):
    database_url: str = "postgresql://postgres@127.0.0.1:5432/settlement"
    http_port: int = 8083
    # The marketplace fee in basis points of each charged amount (SETTLEMENT_FEE_BPS).
    fee_bps: Annotated[int, msgspec.Meta(ge=0, le=FULL_BPS)] = DEFAULT_FEE_BPS
    # The Kafka consumer group; tests and replays use a group of their own.
    consumer_group: str = "settlement-ledger"
    # How long the ledger's consumer waits for more of a partition's events
    # before booking a chunk smaller than a full one (SETTLEMENT_CONSUMER_LINGER_SECONDS):
    # a transaction's fixed cost shared by more events, for at most this delay.
    consumer_linger_seconds: Annotated[float, msgspec.Meta(ge=0, le=5)] = LINGER_SECONDS


def composer(settings: SettlementSettings) -> Compose:
    async def compose(runtime: Runtime) -> Composition:
        ledger = order_consumer(
            booker=OrderEventBooker(settings.fee_bps),
            bootstrap=settings.kafka_bootstrap,
            topic_prefix=settings.topic_prefix,
            pool=runtime.pool,
            producer=runtime.producer,
            group_id=settings.consumer_group,
            linger_seconds=settings.consumer_linger_seconds,
            security=settings.kafka_security(),
        )
        return account_generations.wire(runtime).composition(
            build_api(SettlementHttp()), loops=[ledger]
        )

    return compose


if __name__ == "__main__":
    collect_garbage_for_batches()
    main(
        "settlement",
        SettlementSettings,
        migrations=MIGRATIONS,
        topics=TOPICS,
        composer=composer,
        extra_migrations=EXTRA_MIGRATIONS,
    )
