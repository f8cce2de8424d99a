"""Deployments on one Kafka under different topic prefixes share no consumer group.

A shared group couples unrelated deployments (a test run and a bench run on
one broker): every member joining or leaving anywhere starts a rebalance
that each member's consumer, stopping included, must wait out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from services.orders.__main__ import OrdersSettings, compose
from shared.consumer import BatchConsumer
from shared.service import Runtime
from shared.settings import Secret


async def consumer_groups(topic_prefix: str) -> set[str]:
    runtime = Runtime(
        name="orders",
        settings=OrdersSettings(
            topic_prefix=topic_prefix,
            operator_token=Secret("operator-token-for-a-unit-test"),
            token_public_key_file=Path("unused.pem"),
        ),
        pool=cast(Any, None),
        producer=cast(Any, None),
        verifier=cast(Any, None),
    )
    composition = await compose(runtime)
    return {loop.group_id for loop in composition.loops if isinstance(loop, BatchConsumer)}


async def test_two_topic_prefixes_never_share_a_consumer_group() -> None:
    first, second = await consumer_groups("run1."), await consumer_groups("run2.")
    assert len(first) == 2
    assert first.isdisjoint(second), first & second
