"""Two deployments on one Kafka (told apart by their topic prefix) never share a consumer group.

A shared group makes every start, stop or crash of one deployment rebalance the
other's consumers: the token-rotation projection of orders stalled every few
seconds while other environments came and went on the same cluster.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator

import pytest

from tests.security.conftest import LogRecorder
from tests.support.infra import Infra, temporary_database
from tests.support.keys import TokenKeys
from tests.support.running import running_orders
from tests.support.waiting import wait_for

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture
def consumer_log() -> Iterator[LogRecorder]:
    """The consumers' records, caught on their own logger: a service start resets the root's."""
    recorder = LogRecorder()
    logger = logging.getLogger("shared.consumer")
    logger.addHandler(recorder)
    try:
        yield recorder
    finally:
        logger.removeHandler(recorder)


def assignments_of(log: LogRecorder, prefix: str) -> int:
    """How often the consumer of ``prefix``'s catalog.accounts topic was handed partitions."""
    topic = f"topic='{prefix}catalog.accounts'"
    return sum(
        1
        for record in log.records
        if record.levelno == logging.INFO
        and record.getMessage() == "partitions assigned"
        and any(topic in partition for partition in getattr(record, "partitions", ()))
    )


async def test_a_second_deployment_never_rebalances_the_first(
    infra: Infra, token_keys: TokenKeys, consumer_log: LogRecorder
) -> None:
    first, second = (f"t{uuid.uuid4().hex[:10]}." for _ in range(2))
    async with (
        temporary_database(infra, "orders_first") as first_dsn,
        temporary_database(infra, "orders_second") as second_dsn,
        running_orders(infra, token_keys, first_dsn, topic_prefix=first),
    ):
        await wait_for(
            lambda: assignments_of(consumer_log, first) >= 1,
            timeout=30,
            message="the first deployment's consumer never got its partitions",
        )
        # The second comes and goes while the first runs on: joining and
        # leaving a shared group would each rebalance the first's consumer.
        async with running_orders(infra, token_keys, second_dsn, topic_prefix=second):
            await wait_for(
                lambda: assignments_of(consumer_log, second) >= 1,
                timeout=30,
                message="the second deployment's consumer never got its partitions",
            )
    assert assignments_of(consumer_log, first) == 1
